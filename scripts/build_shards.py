"""Build ArrayRecord training shards from a JSONL manifest of de-identified clips.

    python scripts/build_shards.py --manifest clips.jsonl --output shards/ [--labels positive,negative]
        [--records-per-shard 64] [--workers N] [--already-deidentified]

Writes DIR/{split}-{k:05d}-of-{n:05d}.array_record, DIR/metadata.json and DIR/failures.jsonl (see
docs/shards.md). Bad rows are listed in failures.jsonl and do not stop the build; rerunning the same command
resumes (finished shards are skipped).

Exit status: 0 when at least one record was written (check failures.jsonl for the rows that were not),
1 when nothing was written, 2 for invalid arguments or an unusable output directory/manifest.
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
from deemo_jax.data.builder import BuildError, build_shards  # noqa: E402
from deemo_jax.data.manifest import DEFAULT_LABELS  # noqa: E402

MAX_PRINTED_FAILURES = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path, help="JSONL manifest, one clip per line")
    parser.add_argument("--output", required=True, type=Path, help="output directory (created if missing)")
    parser.add_argument(
        "--labels", default=",".join(DEFAULT_LABELS),
        help="comma-separated label set; its order defines label_index (default: %(default)s)",
    )
    parser.add_argument("--records-per-shard", type=positive_int, default=64)
    parser.add_argument("--workers", type=positive_int, default=1, help="clip-processing processes")
    parser.add_argument(
        "--already-deidentified", action="store_true",
        help="accept videos without a de-identification sidecar (the data was de-identified elsewhere); "
        "recorded in metadata.json",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    labels = [x.strip() for x in args.labels.split(",")]

    try:
        report = build_shards(
            args.manifest,
            args.output,
            labels=labels,
            records_per_shard=args.records_per_shard,
            workers=args.workers,
            already_deidentified=args.already_deidentified,
            progress=not args.no_progress,
        )
    except (BuildError, FileNotFoundError, ValueError) as e:
        print(f"build_shards: error: {e}", file=sys.stderr)
        return 2

    skipped = [s for s in report.shards if s.skipped]
    if skipped:
        print(f"{len(skipped)} shard(s) finished by an earlier run were kept (delete one to rebuild it)")
    for note in report.warnings:
        print(f"warning: {note}")
    for failure in report.failures[:MAX_PRINTED_FAILURES]:
        print(f"failed: line {failure.line} ({failure.id}): {failure.reason}")
    if len(report.failures) > MAX_PRINTED_FAILURES:
        print(f"... and {len(report.failures) - MAX_PRINTED_FAILURES} more failures (all in failures.jsonl)")
    print(report.summary())
    print(f"shards, metadata.json and failures.jsonl are in {report.output_dir}")
    if report.written == 0:
        print("build_shards: no record was written; see failures.jsonl", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
