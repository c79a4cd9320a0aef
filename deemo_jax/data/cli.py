"""Build ArrayRecord training shards from a JSONL manifest of de-identified clips (``scripts/build_shards.py``).

    python scripts/build_shards.py --manifest clips.jsonl --output shards/ [--labels positive,negative]
        [--records-per-shard 64] [--workers N] [--already-deidentified]

Writes DIR/{split}-{k:05d}-of-{n:05d}.array_record, DIR/metadata.json and DIR/failures.jsonl (see
docs/shards.md). Bad rows are listed in failures.jsonl and do not stop the build; rerunning the same command
resumes (finished shards are skipped).

Exit status (deemo_jax.exit_codes): 0 every manifest row was written; 1 some rows failed (failures.jsonl lists
them and why; the other rows were written); 2 invalid arguments, a missing manifest, an unusable output folder,
a missing ffmpeg or face detector: nothing was done; 3 the manifest has no rows; 130 interrupted (rerun the
same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deemo_jax import exit_codes
from deemo_jax.cli import one_line, positive_int
from deemo_jax.data.builder import BuildError, build_shards
from deemo_jax.data.manifest import DEFAULT_LABELS
from deemo_jax.files import OutputDirError

MAX_PRINTED_FAILURES = 20
PROG = "build_shards"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="build_shards.py", description=__doc__.split("\n\n")[0])
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
        help="the data was de-identified elsewhere: a video without a sidecar is accepted if the privacy audit, "
        "run here at the strict threshold, finds no face; a sidecar that records a failure still refuses its "
        "video. Recorded in metadata.json",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = [x.strip() for x in args.labels.split(",")]

    def error(message: str) -> None:
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)

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
    except (BuildError, FileNotFoundError, ValueError, OutputDirError) as e:
        error(one_line(e))
        return exit_codes.USAGE
    except KeyboardInterrupt:
        error(f"interrupted; finished shards in {args.output} are kept: rerun the same command to resume")
        return exit_codes.INTERRUPTED
    except OSError as e:  # disk full, permissions changed mid-build, ...
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        error(f"cannot write the shards in {args.output}{where}: {e.strerror or e}; fix the disk or permissions "
              "and rerun the same command (finished shards are kept)")
        return exit_codes.USAGE

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
    if report.manifest_rows == 0:
        error(f"the manifest {args.manifest} has no rows; add one JSON object per line (see docs/shards.md)")
        return exit_codes.BAD_DATA
    if report.failed:
        failures = report.output_dir / "failures.jsonl"
        what = "no record was written" if report.written == 0 else f"{report.failed} row(s) were not written"
        error(f"{what}; see {failures} for each row's reason and fix, then rerun")
        return exit_codes.SOME_FAILED
    return exit_codes.OK
