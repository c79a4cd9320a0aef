"""Generate the bundled demo corpus: synthetic post-game interviews, de-identified, sharded and tokenized.

    python scripts/make_demo_data.py --output demo_data [--num-clips 200] [--seed 0] [--workers 2] [--force]
        [--keep-raw]

(or ``python -m deemo_jax.data.demo ...``). Needs espeak-ng and ffmpeg on PATH (scripts/setup_env.sh installs
both). A rerun with a complete corpus returns at once; an interrupted run resumes; --force rebuilds. See
docs/demo_data.md.

Exit status (deemo_jax.exit_codes): 0 the corpus is complete (check the failure counts it prints); 1 no clip
could be made; 2 invalid arguments, an unusable output directory, or a missing espeak-ng or ffmpeg.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deemo_jax import exit_codes
from deemo_jax.cli import positive_int
from deemo_jax.data.builder import BuildError

from .corpus import DemoDataError, NoDemoClipError, make_demo_corpus
from .plan import DemoConfig
from .speech import SpeechError

PROG = "make_demo_data"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG}.py", description=__doc__.split("\n\n")[0])
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return exit_codes.SOME_FAILED if isinstance(e, NoDemoClipError) else exit_codes.USAGE
    print(report.summary())
    return exit_codes.OK
