"""One demo interview end to end: speech and frames (:func:`render_interview`), muxed by ffmpeg into
``raw/<id>.mov``, then de-identified by the real :func:`deemo_jax.deid.deidentify_video` into
``deid/<id>.mp4`` (:func:`generate_interview`).

``deemo_jax.deid`` is imported inside the three functions that use it: it pulls in ``scipy.signal`` (1-2 s),
and importing this package stays quick for what needs no video (planning, a rerun on a complete corpus).
"""

from __future__ import annotations

import functools
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from .plan import DemoConfig, InterviewPlan
from .render import backdrop, pose_at, render_frame
from .speech import SpeechError, synthesize_speech

if TYPE_CHECKING:
    from deemo_jax.deid import CenterFace, DeidSettings

_LEAD_S, _GAP_S, _TAIL_S = 0.5, 0.7, 0.4


@dataclass
class InterviewResult:
    """What one interview produced: manifest rows (one per clip made) and failures (one per clip not made)."""

    interview_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mux(frames_bgr: np.ndarray, audio: np.ndarray, sample_rate: int, fps: int, path: Path) -> None:
    """Write the raw interview: H.264 (ultrafast; it is re-encoded by the de-identification) and 16-bit PCM
    audio (no lossy step before the voice anonymisation) in a QuickTime container, frames through a pipe."""
    wav = path.with_suffix(".wav")
    sf.write(wav, audio, sample_rate, subtype="PCM_16")
    height, width = frames_bgr.shape[1:3]
    cmd = [
        "ffmpeg", "-y", "-hide_banner", "-nostats", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
        "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "pcm_s16le", "-ac", "1", "-ar", str(sample_rate), str(path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, input=frames_bgr.tobytes(), capture_output=True, timeout=600, check=False)
    finally:
        wav.unlink(missing_ok=True)
    if proc.returncode != 0:
        error = proc.stderr.decode("utf-8", "replace")[-300:]
        raise RuntimeError(f"ffmpeg could not write {path.name}: {error}")


def render_interview(
    plan: InterviewPlan, config: DemoConfig
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], list[dict[str, str]]]:
    """Synthesize and render one interview.

    Returns ``(frames_bgr [N, H, W, 3] uint8, audio float32 [N * sr / fps], rows, failures)`` where rows are
    manifest rows without ``video`` (times on the interview's timeline) and failures ``{id, reason}`` for the
    clips whose speech could not be made (the rest of the interview goes on).
    """
    sr, fps = config.sample_rate, config.fps
    rng = np.random.default_rng([config.seed, plan.index, 7])
    pieces: list[np.ndarray] = [np.zeros(int(_LEAD_S * sr), np.float32)]
    cursor = _LEAD_S
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    spans: list[dict[str, Any]] = []
    for clip in plan.clips:
        try:
            speech = synthesize_speech(clip.transcription, plan.speaker.voice, clip.prosody, sr)
        except SpeechError as e:
            failures.append({"id": clip.clip_id, "reason": f"speech synthesis: {e}"})
            continue
        start = cursor
        duration = speech.size / sr
        end = start + duration
        nfbl = [
            {
                "label": g.name,
                "start": round(start + g.start_frac * duration, 2),
                "end": round(start + g.end_frac * duration, 2),
            }
            for g in clip.gestures
        ]
        spans += nfbl
        rows.append(
            {
                "id": clip.clip_id,
                "start": round(start, 3),
                "end": round(end, 3),
                "transcription": clip.transcription,
                "label": clip.label,
                "reasoning": clip.reasoning,
                "nfbl": nfbl,
                "split": plan.split,
            }
        )
        pieces += [speech, np.zeros(int(_GAP_S * sr), np.float32)]
        cursor = end + _GAP_S
    pieces[-1] = np.zeros(int(_TAIL_S * sr), np.float32)
    audio = np.concatenate(pieces)
    samples_per_frame = sr // fps
    n_frames = -(-audio.size // samples_per_frame)
    audio = np.pad(audio, (0, n_frames * samples_per_frame - audio.size))
    audio += rng.normal(0.0, 0.002, audio.size).astype(np.float32)  # room tone: no digital silence
    background = backdrop(config.width, config.height, plan.backdrop_bgr)
    frames = np.empty((n_frames, config.height, config.width, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = render_frame(
            pose_at(i / fps, spans), background, plan.shirt_bgr, plan.x_offset, plan.sport
        )
    return frames, np.clip(audio, -1.0, 1.0), rows, failures


def generate_interview(
    plan: InterviewPlan,
    config: DemoConfig,
    output_dir: str | Path,
    *,
    keep_raw: bool = False,
    threads: int = 1,
) -> InterviewResult:
    """Make ``raw/<id>.mov``, de-identify it into ``deid/<id>.mp4`` (+ sidecar) and return its manifest rows.

    Never raises for a problem of this interview: every clip that was not made lands in ``failures``.
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    result = InterviewResult(plan.interview_id)
    raw = out / "raw" / f"{plan.interview_id}.mov"
    deid = out / "deid" / f"{plan.interview_id}.mp4"
    try:
        frames, audio, rows, failures = render_interview(plan, config)
        result.failures += failures
        if not rows:
            return result
        raw.parent.mkdir(parents=True, exist_ok=True)
        deid.parent.mkdir(parents=True, exist_ok=True)
        _mux(frames, audio, config.sample_rate, config.fps, raw)
        deidentify(raw, deid, threads=threads)
        for row in rows:
            row["video"] = f"deid/{deid.name}"
        result.rows = rows
    except Exception as e:  # noqa: BLE001 - one interview must never stop the corpus; its clips become failures
        made = {f["id"] for f in result.failures}
        result.failures += [
            {"id": c.clip_id, "reason": f"interview {plan.interview_id}: {type(e).__name__}: {e}"}
            for c in plan.clips
            if c.clip_id not in made
        ]
        result.rows = []
    finally:
        if not keep_raw:
            raw.unlink(missing_ok=True)
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


@functools.lru_cache(maxsize=1)
def _detector(threads: int) -> CenterFace:
    """One CenterFace session per process (loading the ONNX model costs more than a short video)."""
    from deemo_jax.deid import CenterFace  # slow import: see the module docstring

    return CenterFace(threads=threads)


def deid_settings() -> DeidSettings:
    """The demo's de-identification settings: the defaults except a larger, stronger blur.

    With the defaults (ellipse, boxes 1.6x the detection, sigma = 0.15 x box side) the blurred head of these
    small (about 35 px) faces is still a face-shaped blob that CenterFace scores up to about 0.57 (no identity
    left, but the 0.5 audit fails); blurring the whole box, twice the detection's size (``mask_scale=1.5``),
    with sigma = 0.3 x box side, leaves scores of about 0.1.
    """
    from deemo_jax.deid import DeidSettings  # slow import: see the module docstring

    return DeidSettings(shape="box", blur_strength=0.3, mask_scale=1.5)


def deidentify(raw: Path, deid: Path, *, threads: int = 1) -> dict[str, Any]:
    """The real de-identification (face blur, McAdams voice, audit); returns the sidecar.

    Raises (e.g. :class:`deemo_jax.deid.AuditFailedError`) when it fails; a failed output and its sidecar are
    deleted, so no video that may still show a face stays in the corpus.
    """
    from deemo_jax.deid import deidentify_video, sidecar_path  # slow import: see the module docstring

    try:
        return deidentify_video(raw, deid, deid_settings(), detector=_detector(threads))
    except BaseException:
        deid.unlink(missing_ok=True)
        sidecar_path(deid).unlink(missing_ok=True)
        raise
