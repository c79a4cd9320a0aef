"""Read one clip ``[start, end]`` of a (de-identified) video: 8 RGB frames and 16-kHz mono audio.

Decoding uses the system ``ffmpeg``/``ffprobe`` binaries in subprocesses. ``-ss``/``-to`` are input options,
so ffmpeg seeks to the key frame before ``start`` and decodes (and drops) up to ``start``: the cut is exact
to the frame and to the audio sample.

Frames follow the reference loader (reference_spec.md §9.1): every frame of the clip is decoded and resized
straight to 224x224 (aspect ratio not kept, like decord's ``VideoReader(height=224, width=224)``) with
ffmpeg's swscale **bicubic** filter, then the uniform segment-start rule picks the frames. Decoding the whole
clip holds ``size*size*3`` bytes per frame in memory (11 s at 30 fps: about 50 MB).

Audio is channel 0 (as torchaudio's Kaldi fbank reads channel 0 only), decoded at the file's own rate and
resampled to 16 kHz with :func:`deemo_jax.data.fbank.resample`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deemo_jax.data.fbank import SAMPLE_RATE, resample

NUM_FRAMES = 8
FRAME_SIZE = 224
INTERPOLATION = "bicubic"
# Clip bounds may exceed the container duration by this much (annotation rounding, last-frame duration).
END_TOLERANCE_S = 0.05
_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:(\S+)")


class MediaError(Exception):
    """A clip that cannot be read; ``str(error)`` says why (and, where it can, how to fix it)."""


class UnreadableVideoError(MediaError):
    """ffprobe/ffmpeg cannot open or decode the file (not a video, missing, corrupt)."""


class TruncatedVideoError(MediaError):
    """The file opens but its streams end before the clip does (typically a partly copied file)."""


class NoAudioTrackError(MediaError):
    """The video has no audio stream."""


class ClipOutOfRangeError(MediaError):
    """``[start, end]`` is not inside the video."""


class TooFewFramesError(MediaError):
    """No video frame falls inside the clip."""


class FFmpegNotFoundError(RuntimeError):
    """The ffmpeg/ffprobe binaries are not installed (an environment problem, not a per-clip one)."""


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    width: int
    height: int
    fps: float | None
    audio_sample_rate: int | None  # None: no audio stream
    audio_channels: int


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, size, size, 3] RGB
    frame_times: np.ndarray  # float32 [T] seconds, clip-relative
    audio: np.ndarray  # float32 [samples] mono, channel 0
    sample_rate: int


def require_ffmpeg() -> None:
    """Raise :class:`FFmpegNotFoundError` unless both ``ffmpeg`` and ``ffprobe`` are on PATH."""
    missing = [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]
    if missing:
        raise FFmpegNotFoundError(
            f"{' and '.join(missing)} not found on PATH; install FFmpeg (e.g. `apt-get install -y ffmpeg`, "
            "or run scripts/setup_env.sh)"
        )


def _run(cmd: list[str], path: Path, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        require_ffmpeg()
        raise
    except subprocess.TimeoutExpired as e:
        raise UnreadableVideoError(f"{path.name}: {cmd[0]} did not finish within {timeout:.0f} s") from e


def _last_error(stderr: bytes, path: Path) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    # Keep messages free of the full path (it may contain names); the caller knows which file it asked for.
    return (lines[-1] if lines else "no error message").replace(str(path), path.name)


def _rate(text: str | None) -> float | None:
    if not text or "/" not in text:
        return None
    num, den = text.split("/", 1)
    try:
        value = float(num) / float(den)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def probe(path: str | Path, *, timeout: float = 60.0) -> MediaInfo:
    """Duration and stream facts of ``path`` via ffprobe (raises :class:`UnreadableVideoError`)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableVideoError(f"{path.name}: file not found")
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise UnreadableVideoError(f"{path.name}: ffprobe cannot read it ({_last_error(proc.stderr, path)})")
    meta = json.loads(proc.stdout or b"{}")
    streams = meta.get("streams", [])
    video = [
        s for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not video:
        raise UnreadableVideoError(f"{path.name}: no video stream")
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    duration = meta.get("format", {}).get("duration") or video[0].get("duration")
    if duration is None:
        raise UnreadableVideoError(f"{path.name}: ffprobe reports no duration")
    v = video[0]
    return MediaInfo(
        duration=float(duration),
        width=int(v.get("width", 0)),
        height=int(v.get("height", 0)),
        fps=_rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
        audio_sample_rate=int(audio[0]["sample_rate"]) if audio else None,
        audio_channels=int(audio[0].get("channels", 0)) if audio else 0,
    )


def uniform_frame_indices(vlen: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Segment starts ``int(arange(0, vlen, vlen / n))`` with ``n = min(num_frames, vlen)``; the last index
    is repeated up to ``num_frames`` when ``vlen < num_frames`` (AffectGPT).

    vlen=100 -> 0, 12, 25, 37, 50, 62, 75, 87.
    """
    if vlen < 1 or num_frames < 1:
        raise ValueError(f"uniform_frame_indices: need vlen >= 1, num_frames >= 1, got {vlen}, {num_frames}")
    n = min(num_frames, vlen)
    # Float rounding can make arange one element longer than n; the reference intends n segment starts.
    idx = np.arange(0, vlen, vlen / n).astype(np.int64)[:n]
    return np.concatenate([idx, np.full(num_frames - n, idx[-1], np.int64)])


def _no_audio(path: Path) -> NoAudioTrackError:
    return NoAudioTrackError(
        f"{path.name}: the video has no audio track (the de-identification step must mux the audio back in)"
    )


def _check_range(path: Path, info: MediaInfo, start: float, end: float) -> None:
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
        raise ClipOutOfRangeError(f"{path.name}: invalid clip [{start}, {end}] s (need 0 <= start < end)")
    if start >= info.duration or end > info.duration + END_TOLERANCE_S:
        raise ClipOutOfRangeError(
            f"{path.name}: clip [{start:.3f}, {end:.3f}] s is outside the video "
            f"(duration {info.duration:.3f} s)"
        )


def read_frames(
    path: str | Path,
    start: float,
    end: float,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = FRAME_SIZE,
    info: MediaInfo | None = None,
    timeout: float = 600.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` frames of ``[start, end]``.

    Returns ``(uint8 [T, size, size, 3] RGB, float32 [T] seconds relative to start)``.
    """
    path = Path(path)
    info = info or probe(path)
    _check_range(path, info, start, end)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
        "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(path),
        "-map", "0:v:0", "-an", "-sn",
        "-vf", f"scale={size}:{size}:flags={INTERPOLATION},showinfo",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise UnreadableVideoError(f"{path.name}: ffmpeg cannot decode it ({_last_error(proc.stderr, path)})")
    frame_bytes = size * size * 3
    vlen = len(proc.stdout) // frame_bytes
    times = [float(m.group(3)) for m in _SHOWINFO.finditer(proc.stderr.decode("utf-8", "replace"))]
    if vlen == 0:
        raise TooFewFramesError(
            f"{path.name}: no video frame inside the clip [{start:.3f}, {end:.3f}] s (fps {info.fps})"
        )
    if len(proc.stdout) % frame_bytes or len(times) != vlen:
        raise UnreadableVideoError(
            f"{path.name}: ffmpeg returned {len(proc.stdout)} bytes and {len(times)} frame timestamps for "
            f"{size}x{size} RGB frames; the stream is inconsistent"
        )
    interval = 1.0 / info.fps if info.fps else 0.5
    covered = times[-1] + interval
    wanted = min(end, info.duration) - start
    if covered < wanted - 2 * interval - END_TOLERANCE_S:
        raise TruncatedVideoError(
            f"{path.name}: frames stop {covered:.3f} s into the clip [{start:.3f}, {end:.3f}] s although the "
            f"container says the video lasts {info.duration:.3f} s; the file is probably truncated "
            "(copy or download it again)"
        )
    idx = uniform_frame_indices(vlen, num_frames)
    all_frames = np.frombuffer(proc.stdout, np.uint8).reshape(vlen, size, size, 3)
    return np.ascontiguousarray(all_frames[idx]), np.asarray(times, np.float32)[idx]


def read_audio(
    path: str | Path,
    start: float,
    end: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    info: MediaInfo | None = None,
    timeout: float = 600.0,
) -> np.ndarray:
    """Channel 0 of the first audio stream over ``[start, end]``, float32 at ``sample_rate``."""
    path = Path(path)
    info = info or probe(path)
    _check_range(path, info, start, end)
    if info.audio_sample_rate is None:
        raise _no_audio(path)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(path),
        "-map", "0:a:0", "-vn", "-sn", "-af", "pan=mono|c0=c0", "-f", "f32le", "pipe:1",
    ]
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise UnreadableVideoError(
            f"{path.name}: ffmpeg cannot decode the audio ({_last_error(proc.stderr, path)})"
        )
    wave = np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], np.float32)
    return resample(wave, info.audio_sample_rate, sample_rate)


def read_clip(
    path: str | Path, start: float, end: float, *, num_frames: int = NUM_FRAMES, size: int = FRAME_SIZE
) -> Clip:
    """Frames and audio of ``[start, end]`` of ``path`` (raises a :class:`MediaError` subclass)."""
    path = Path(path)
    info = probe(path)
    if info.audio_sample_rate is None:  # checked first: it is cheaper than decoding the frames
        raise _no_audio(path)
    frames, frame_times = read_frames(path, start, end, num_frames=num_frames, size=size, info=info)
    audio = read_audio(path, start, end, info=info)
    return Clip(frames=frames, frame_times=frame_times, audio=audio, sample_rate=SAMPLE_RATE)
