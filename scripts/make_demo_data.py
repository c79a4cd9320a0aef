"""Generate the bundled demo corpus: synthetic post-game interviews, de-identified, sharded and tokenized.

    python scripts/make_demo_data.py --output demo_data [--num-clips 200] [--seed 0] [--workers 2] [--force]
        [--keep-raw]

Needs espeak-ng and ffmpeg on PATH (scripts/setup_env.sh installs both). A rerun with a complete corpus
returns at once; an interrupted run resumes; --force rebuilds. See docs/demo_data.md.

Exit status: 0 when the corpus is complete (check the failure counts it prints), 1 when no clip could be made,
2 for invalid arguments or an unusable output directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.cli import positive_int  # noqa: E402
from deemo_jax.data.builder import BuildError  # noqa: E402
from deemo_jax.data.demo import DemoConfig, DemoDataError, SpeechError, make_demo_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, type=Path, help="corpus directory (created)")
    parser.add_argument("--num-clips", type=positive_int, default=DemoConfig.num_clips)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--workers", type=positive_int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--force", action="store_true", help="delete a previous corpus in --output and rebuild"
    )
    parser.add_argument(
        "--keep-raw",
        action="store_true",
        help="keep the raw (not de-identified) videos in --output/raw for debugging",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = DemoConfig(num_clips=args.num_clips, seed=args.seed)
    try:
        report = make_demo_corpus(
            args.output,
            config,
            workers=args.workers,
            force=args.force,
            keep_raw=args.keep_raw,
            progress=not args.quiet,
        )
    except (DemoDataError, SpeechError, BuildError, ValueError) as e:
        print(f"make_demo_data: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, DemoDataError) and "no demo clip" in str(e) else 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
