"""De-identification throughput on this machine: detector-only fps per backend, end-to-end fps, McAdams speed.

    python benchmarks/deid_fps.py [--frames 100] [--size 640x360] [--threads 0] [--backends onnxruntime,opencv]

End to end = ffmpeg decode + CenterFace + carry-over + blur + x264 encode (``deidentify_video`` on a silent
synthetic clip), reported with and without the privacy audit (a second decode + detection pass over the
output). Audio is reported separately as McAdams real-time factor. Needs ffmpeg and scikit-image (test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from deemo_jax.deid import CenterFace, DeidSettings, anonymize, audit_video, deidentify_video  # noqa: E402
from deemo_jax.media import iter_frames, probe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/ helpers
from tests.deid.synthetic import vowel_audio, write_face_video  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the ffmpeg decoders/encoders)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _detector_fps(detector: CenterFace, frames: list[np.ndarray], threshold: float) -> float:
    for frame in frames[:3]:  # warm-up (first run allocates for the input size)
        detector.detect(frame, threshold)
    start = time.perf_counter()
    for frame in frames:
        detector.detect(frame, threshold)
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0, help="detector threads (0: onnxruntime default)")
    parser.add_argument("--backends", default="onnxruntime,opencv")
    parser.add_argument("--audio-seconds", type=float, default=30.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    if args.frames < 10 or width <= 0 or height <= 0:
        parser.error("need --frames >= 10 and a positive --size WxH")
    results: dict[str, object] = {"frames": args.frames, "size": args.size, "cpus": os.cpu_count()}

    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_face_video(clip, args.frames, width, height, args.fps, audio=False)
        frames = list(iter_frames(clip, probe(clip)))

        detectors = {}
        for backend in args.backends.split(","):
            detectors[backend] = CenterFace(backend, threads=args.threads)
            results[f"detector_fps_{backend}"] = round(_detector_fps(detectors[backend], frames, 0.2), 2)

        for backend, detector in detectors.items():
            out = Path(tmp) / f"out_{backend}.mp4"
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            deidentify_video(clip, out, DeidSettings(), detector=detector)
            total, cpu_total = time.perf_counter() - start, _cpu_seconds() - cpu_start
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            audit_video(out, detector=detector)
            audit, cpu_audit = time.perf_counter() - start, _cpu_seconds() - cpu_start
            # CPU time per frame is less sensitive to other load on a shared machine than wall time.
            results[f"end_to_end_cpu_ms_per_frame_{backend}"] = round(1000 * (cpu_total - cpu_audit) / args.frames, 1)
            results[f"end_to_end_fps_{backend}"] = round(args.frames / (total - audit), 2)
            results[f"end_to_end_with_audit_fps_{backend}"] = round(args.frames / total, 2)
            results[f"audit_fps_{backend}"] = round(args.frames / audit, 2)

    wave = vowel_audio(args.audio_seconds)
    start = time.perf_counter()
    anonymize(wave, 16000, 0.8)
    results["mcadams_seconds_per_audio_second"] = round((time.perf_counter() - start) / args.audio_seconds, 4)

    print(f"De-identification, {args.frames} frames at {args.size}, {os.cpu_count()} CPUs")
    print("| measure | " + " | ".join(detectors) + " |")
    print("|---|" + "---|" * len(detectors))
    for key, label in (
        ("detector_fps", "detector only (frames/s)"),
        ("end_to_end_fps", "end to end, no audit (frames/s)"),
        ("end_to_end_cpu_ms_per_frame", "end to end, no audit (CPU ms/frame, all processes)"),
        ("audit_fps", "audit pass (frames/s)"),
        ("end_to_end_with_audit_fps", "end to end with audit (frames/s)"),
    ):
        print(f"| {label} | " + " | ".join(str(results[f"{key}_{b}"]) for b in detectors) + " |")
    print(f"McAdams: {results['mcadams_seconds_per_audio_second']} s per second of 16 kHz audio")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
