"""Video and audio I/O for every package: ffprobe/ffmpeg runners, ``probe``, frame and audio readers, the H.264
writer, one :class:`MediaError` hierarchy and the model's audio sample rate.

Everything goes through the system ``ffmpeg``/``ffprobe`` binaries in subprocesses (rawvideo rgb24 and f32le
pipes, no temporary frames). Two kinds of reader:

* **clips** (the shard builder and inference): :func:`read_clip`, :func:`read_frames`, :func:`read_audio` read
  ``[start, end]``. ``-ss``/``-to`` are input options, so ffmpeg seeks to the key frame before ``start`` and
  decodes (and drops) up to ``start``: the cut is exact to the frame and to the audio sample. Frames follow the
  reference loader (reference_spec.md §9.1): every frame of the clip is decoded and resized straight to
  224x224 (aspect ratio not kept, like decord's ``VideoReader(height=224, width=224)``) with ffmpeg's swscale
  **bicubic** filter, then the uniform segment-start rule picks the frames. Audio is channel 0 (torchaudio's
  Kaldi fbank reads channel 0 only), decoded at the file's own rate and resampled to 16 kHz with
  :func:`resample`.
* **whole streams** (de-identification): :func:`iter_frames` yields every frame at a constant rate equal to the
  stream's average frame rate (ffmpeg duplicates/drops frames of variable-rate input, so the re-encoded output
  keeps the duration and stays in sync with the audio); :func:`extract_audio` gives all of the first audio
  stream mixed down to mono at a chosen rate.

Every reader fails closed: a non-zero ffmpeg exit, an error line on ffmpeg's stderr, or less media than the
container promises (stream duration, ``nb_frames``; typically a file cut short by an interrupted copy, whose
header still describes the whole video) raises a :class:`MediaError` subclass instead of returning what
happened to decode. Messages name the file by its base name only (paths may hold participants' names).

:class:`FrameWriter` encodes H.264 (libx264, yuv420p; odd sizes padded by one black pixel) with optional AAC
audio, all container metadata stripped (titles, GPS tags, device names can identify people).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # the model's audio front end and McAdams both work on 16 kHz mono
NUM_FRAMES = 8
FRAME_SIZE = 224
INTERPOLATION = "bicubic"
# Clip bounds may exceed the container duration by this much (annotation rounding, last-frame duration).
END_TOLERANCE_S = 0.05
# Decoded audio may fall short of the stream's duration by this much before the file counts as truncated
# (codec priming and padding are a few hundredths of a second).
AUDIO_TOLERANCE_S = 0.1
_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:(\S+)")
# With ``-loglevel level+info`` ffmpeg tags every line with its level.
_ERROR_LINE = re.compile(r"\[(error|fatal|panic)\]")
_MESSAGE_LIMIT = 300


class MediaError(RuntimeError):
    """A file that cannot be used as a video; ``str(error)`` names the file, the cause and, where it can, the fix."""


class UnreadableVideoError(MediaError):
    """ffprobe/ffmpeg cannot open or decode the file (not a video, missing, corrupt, decode errors)."""


class TruncatedVideoError(MediaError):
    """The file opens but holds less video or audio than its container promises (typically a partly copied file)."""


class NoAudioTrackError(MediaError):
    """The video has no audio stream."""


class ClipOutOfRangeError(MediaError):
    """``[start, end]`` is not inside the video."""


class TooFewFramesError(MediaError):
    """No video frame falls inside the clip, or the stream holds no frame at all."""


class EncodingError(MediaError):
    """ffmpeg failed to write an output file."""


class FFmpegNotFoundError(RuntimeError):
    """The ffmpeg/ffprobe binaries are not installed (an environment problem, not a per-file one)."""


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file (the first video stream that is not cover art, the first audio stream)."""

    width: int  # displayed size (rotation metadata applied, as ffmpeg decodes it)
    height: int
    fps: Fraction | None  # average frame rate (None: the stream states none)
    duration: float | None  # container duration in seconds (the video stream's when the container has none)
    video_duration: float | None  # the video stream's own duration, when stated
    nb_frames: int | None  # frames the video stream's header promises, when stated
    audio_sample_rate: int | None  # None: no audio stream
    audio_channels: int
    audio_duration: float | None  # the audio stream's own duration, when stated

    @property
    def has_audio(self) -> bool:
        return self.audio_sample_rate is not None

    @property
    def frame_estimate(self) -> int | None:
        """Frames :func:`iter_frames` is expected to yield, when the duration and rate are known."""
        duration = self.video_duration or self.duration
        return round(duration * float(self.fps)) if duration and self.fps else None


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, size, size, 3] RGB
    frame_times: np.ndarray  # float32 [T] seconds, clip-relative
    audio: np.ndarray  # float32 [samples] mono, channel 0
    sample_rate: int


# ------------------------------------------------------------------------------------------------ runners


def require_ffmpeg() -> None:
    """Raise :class:`FFmpegNotFoundError` unless both ``ffmpeg`` and ``ffprobe`` are on PATH."""
    missing = [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]
    if missing:
        raise FFmpegNotFoundError(
            f"{' and '.join(missing)} not found on PATH; install FFmpeg (e.g. `apt-get install -y ffmpeg`, "
            "or run scripts/setup_env.sh)"
        )


def _run(cmd: list[str], path: Path, timeout: float | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        require_ffmpeg()
        raise
    except subprocess.TimeoutExpired as e:
        raise UnreadableVideoError(f"{path.name}: {cmd[0]} did not finish within {timeout:.0f} s") from e


def _popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(cmd, **kwargs)
    except FileNotFoundError:
        require_ffmpeg()
        raise


def _error_summary(stderr: bytes, path: Path) -> str:
    """The last error line of ffmpeg's stderr, one line, without the full path (the caller names the file)."""
    lines = [
        " ".join(ln.split())
        for ln in stderr.decode("utf-8", "replace").splitlines()
        if ln.strip() and "Last message repeated" not in ln
    ]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)] or lines
    text = (errors[-1] if errors else "no error message").replace(str(path), path.name)
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _read_log(log: IO[bytes]) -> bytes:
    log.seek(0)
    return log.read()


# ------------------------------------------------------------------------------------------------- probe


def _rate(text: str | None) -> Fraction | None:
    num, _, den = (text or "").partition("/")
    try:
        value = Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _seconds(stream: dict) -> float | None:
    """A stream's own duration: ``duration``, else Matroska's ``DURATION`` tag (``HH:MM:SS.fraction``)."""
    value = stream.get("duration")
    if value not in (None, "N/A"):
        try:
            return float(value)
        except ValueError:
            pass
    tag = next((v for k, v in stream.get("tags", {}).items() if k.upper() == "DURATION"), None)
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    return None


def probe(path: str | Path, *, timeout: float = 60.0) -> MediaInfo:
    """Size, frame rate, durations and audio facts of ``path`` via ffprobe (raises :class:`UnreadableVideoError`)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableVideoError(f"{path.name}: file not found; check the path")
    if path.stat().st_size == 0:
        raise UnreadableVideoError(f"{path.name}: empty file (0 bytes); replace it with the complete video")
    cmd = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)]
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise UnreadableVideoError(
            f"{path.name}: ffprobe cannot read it ({_error_summary(proc.stderr, path)}); check that it is a video "
            "file and not damaged"
        )
    meta = json.loads(proc.stdout or b"{}")
    streams = meta.get("streams", [])
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video" and s.get("width") and not s.get("disposition", {}).get("attached_pic")
        ),
        None,
    )
    if video is None:
        raise UnreadableVideoError(
            f"{path.name}: no video stream (an audio-only or image file?); check that it is the right file"
        )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    width, height = int(video["width"]), int(video["height"])
    rotation = int(float(video.get("tags", {}).get("rotate", 0)))
    for side in video.get("side_data_list", []):
        rotation = int(float(side.get("rotation", rotation)))
    if rotation % 180:
        width, height = height, width
    video_duration = _seconds(video)
    container = meta.get("format", {}).get("duration")
    nb_frames = video.get("nb_frames")
    return MediaInfo(
        width=width,
        height=height,
        fps=_rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        duration=float(container) if container not in (None, "N/A") else video_duration,
        video_duration=video_duration,
        nb_frames=int(nb_frames) if str(nb_frames).isdigit() else None,
        audio_sample_rate=int(audio["sample_rate"]) if audio else None,
        audio_channels=int(audio.get("channels", 0)) if audio else 0,
        audio_duration=_seconds(audio) if audio else None,
    )


# ------------------------------------------------------------------------------------------ completeness


def check_complete(path: str | Path, what: str, decoded_s: float, promised_s: float | None, tolerance_s: float,
                   detail: str = "") -> None:
    """Raise :class:`TruncatedVideoError` when ``decoded_s`` falls short of ``promised_s`` by more than
    ``tolerance_s`` (nothing to compare when the container promises nothing)."""
    if promised_s is None or decoded_s >= promised_s - tolerance_s:
        return
    detail = f", {detail}" if detail else ""
    raise TruncatedVideoError(
        f"{Path(path).name}: truncated: decoded {decoded_s:.2f} s of {promised_s:.2f} s of {what}{detail}; "
        "the file is incomplete (an interrupted copy or download): replace it with the complete file"
    )


def _promised_video_s(info: MediaInfo) -> float | None:
    """What the video stream's header promises: its duration and its frame count, whichever is longer."""
    candidates = [info.video_duration or 0.0]
    if info.nb_frames and info.fps:
        candidates.append(info.nb_frames / float(info.fps))
    return max(candidates) or None


def require_fps(path: str | Path, info: MediaInfo) -> Fraction:
    """``info.fps``; :class:`UnreadableVideoError` when the stream states no frame rate (nothing to re-encode at)."""
    path = Path(path)
    if info.fps is None:
        raise UnreadableVideoError(
            f"{path.name}: the video stream has no usable frame rate; re-encode it (e.g. ffmpeg -i IN -r 25 OUT.mp4)"
        )
    return info.fps


def _decode_failed(path: Path, what: str, stderr: bytes) -> UnreadableVideoError:
    return UnreadableVideoError(
        f"{path.name}: ffmpeg cannot decode the {what} ({_error_summary(stderr, path)}); the file is damaged: "
        "replace it with an intact copy"
    )


# ------------------------------------------------------------------------------------------ clip readers


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
        f"{path.name}: the video has no audio track; use a video with sound, or build video-only clips "
        "(scripts/build_shards.py records them without audio)"
    )


def _check_range(path: Path, info: MediaInfo, start: float, end: float) -> float:
    """The container duration, after checking that ``[start, end]`` lies inside it."""
    if info.duration is None:
        raise UnreadableVideoError(f"{path.name}: ffprobe reports no duration")
    if not (np.isfinite(start) and np.isfinite(end)) or start < 0 or end <= start:
        raise ClipOutOfRangeError(f"{path.name}: invalid clip [{start}, {end}] s (need 0 <= start < end)")
    if start >= info.duration or end > info.duration + END_TOLERANCE_S:
        raise ClipOutOfRangeError(
            f"{path.name}: clip [{start:.3f}, {end:.3f}] s is outside the video "
            f"(duration {info.duration:.3f} s)"
        )
    return info.duration


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
    duration = _check_range(path, info, start, end)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "level+info",
        "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(path),
        "-map", "0:v:0", "-an", "-sn",
        "-vf", f"scale={size}:{size}:flags={INTERPOLATION},showinfo",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise UnreadableVideoError(f"{path.name}: ffmpeg cannot decode it ({_error_summary(proc.stderr, path)})")
    frame_bytes = size * size * 3
    vlen = len(proc.stdout) // frame_bytes
    log = proc.stderr.decode("utf-8", "replace")
    times = [float(m.group(3)) for m in _SHOWINFO.finditer(log)]
    if vlen == 0:
        fps = f"{float(info.fps):g}" if info.fps else None
        raise TooFewFramesError(f"{path.name}: no video frame inside the clip [{start:.3f}, {end:.3f}] s (fps {fps})")
    if len(proc.stdout) % frame_bytes or len(times) != vlen:
        raise UnreadableVideoError(
            f"{path.name}: ffmpeg returned {len(proc.stdout)} bytes and {len(times)} frame timestamps for "
            f"{size}x{size} RGB frames; the stream is inconsistent"
        )
    interval = 1.0 / float(info.fps) if info.fps else 0.5
    covered = times[-1] + interval
    wanted = min(end, duration) - start
    check_complete(
        path, f"the clip [{start:.3f}, {end:.3f}] s", covered, wanted, 2 * interval + END_TOLERANCE_S,
        f"although the container says the video lasts {duration:.3f} s",
    )
    if any(_ERROR_LINE.search(line) for line in log.splitlines()):
        raise _decode_failed(path, "video", proc.stderr)
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
    """Channel 0 of the first audio stream over ``[start, end]``, float32 at ``sample_rate``.

    The audio may end before ``end`` when its stream is shorter than the clip; it may not end before the
    stream's own stated duration (:class:`TruncatedVideoError`).
    """
    path = Path(path)
    info = info or probe(path)
    _check_range(path, info, start, end)
    if info.audio_sample_rate is None:
        raise _no_audio(path)
    cmd = [
        "ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-ss", f"{start:.6f}", "-to", f"{end:.6f}", "-i", str(path),
        "-map", "0:a:0", "-vn", "-sn", "-af", "pan=mono|c0=c0", "-f", "f32le", "pipe:1",
    ]  # fmt: skip
    proc = _run(cmd, path, timeout)
    if proc.returncode != 0:
        raise _decode_failed(path, "audio", proc.stderr)
    wave = np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], np.float32)
    if info.audio_duration is not None:
        check_complete(path, "audio", start + wave.size / info.audio_sample_rate,
                       min(end, info.audio_duration), AUDIO_TOLERANCE_S)
    if proc.stderr.strip():
        raise _decode_failed(path, "audio", proc.stderr)
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


# ------------------------------------------------------------------------------------ whole-stream readers


def iter_frames(path: str | Path, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """Yield every frame as RGB uint8 ``[H, W, 3]`` at the stream's average frame rate.

    After the last frame, raises :class:`TruncatedVideoError` when fewer frames came than the stream's header
    promises and :class:`UnreadableVideoError` when ffmpeg failed or logged a decoding error; a consumer must
    therefore treat its output as unfinished until the iterator is exhausted.
    """
    path = Path(path)
    info = info or probe(path)
    fps = require_fps(path, info)
    cmd = [
        "ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0", "-an", "-sn",
        "-r", str(fps), "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    frame_bytes = info.width * info.height * 3
    count, buf = 0, b""
    # stderr goes to a file: a damaged stream can log more than a pipe buffer holds and stall ffmpeg.
    with tempfile.TemporaryFile() as log:
        proc = _popen(cmd, stdout=subprocess.PIPE, stderr=log)
        try:
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                count += 1
                yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3).copy()
            returncode = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        stderr = _read_log(log)
    # Most specific first: a cut-off file also makes ffmpeg log errors (or exit non-zero).
    interval = 1.0 / float(fps)
    detail = f"{count} of {info.nb_frames} frames" if info.nb_frames else f"{count} frames"
    check_complete(path, "video", count * interval, _promised_video_s(info), 2 * interval + END_TOLERANCE_S, detail)
    if count == 0:
        cause = f" ({_error_summary(stderr, path)})" if stderr.strip() else ""
        raise TooFewFramesError(
            f"{path.name}: no video frame could be decoded{cause}; check that the file is a complete video"
        )
    if returncode != 0 or buf or stderr.strip():
        raise _decode_failed(path, "video", stderr or b"a partial last frame")


def extract_audio(path: str | Path, sr: int = SAMPLE_RATE, *, info: MediaInfo | None = None) -> np.ndarray:
    """First audio stream as float32 mono at ``sr`` Hz (ffmpeg resamples and mixes all channels down).

    Raises :class:`TruncatedVideoError` when the samples fall short of the stream's stated duration and
    :class:`UnreadableVideoError` when ffmpeg fails or logs a decoding error.
    """
    path = Path(path)
    info = info or probe(path)
    if not info.has_audio:
        raise _no_audio(path)
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0", "-vn", "-ac", "1",
           "-ar", str(sr), "-f", "f32le", "-"]  # fmt: skip
    proc = _run(cmd, path, None)
    if proc.returncode != 0:
        raise _decode_failed(path, "audio", proc.stderr)
    wave = np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], np.float32).copy()
    check_complete(path, "audio", wave.size / sr, info.audio_duration, AUDIO_TOLERANCE_S)
    if proc.stderr.strip():
        raise _decode_failed(path, "audio", proc.stderr)
    return wave


def resample(wave: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of ``[samples]`` or ``[channels, samples]`` (libsoxr, HQ, librosa's default
    resampler); the output has ``round(samples * target_sr / sr)`` samples."""
    if sr <= 0 or target_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {sr} -> {target_sr}")
    wave = np.asarray(wave, dtype=np.float32)
    if sr == target_sr:
        return wave
    if wave.ndim not in (1, 2):
        raise ValueError(f"resample: wave must be [samples] or [channels, samples], got {wave.shape}")
    if wave.shape[-1] == 0:
        return np.zeros((*wave.shape[:-1], 0), np.float32)
    out = soxr.resample(wave.T, sr, target_sr, quality="HQ")  # soxr wants [samples, channels]
    return np.ascontiguousarray(out.T, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ writers


class FrameWriter:
    """Pipe RGB frames into an H.264 mp4, optionally muxing a mono wav as AAC. Use as a context manager.

    The container is always mp4 (``-f mp4``), whatever ``path``'s suffix: callers write to a temporary name.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        fps: Fraction,
        *,
        audio: Path | None = None,
        crf: int = 20,
        preset: str = "veryfast",
    ):
        self.path = Path(path)
        self._shape = (height, width, 3)
        cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "-"]  # fmt: skip
        if audio is not None:
            cmd += ["-i", str(audio)]
        cmd += ["-map", "0:v:0"] + (["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"] if audio is not None else [])
        cmd += [
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
            # A key frame every second keeps clip seeks in the shard builder cheap on long interviews.
            "-g", str(max(1, round(float(fps)))), "-pix_fmt", "yuv420p",
            "-map_metadata", "-1", "-map_chapters", "-1", "-movflags", "+faststart", "-f", "mp4", str(self.path),
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()
        self._proc = _popen(cmd, stdin=subprocess.PIPE, stderr=self._log)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {self._shape}, got {frame.dtype} {frame.shape}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as e:
            raise EncodingError(f"{self.path.name}: encoder stopped ({self._finish()})") from e

    def _finish(self) -> str:
        if not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._proc.wait()
        stderr = _read_log(self._log)
        self._log.close()
        return _error_summary(stderr, self.path)

    def close(self) -> None:
        stderr = self._finish()
        if self._proc.returncode != 0:
            raise EncodingError(f"{self.path.name}: encoding failed ({stderr})")

    def abort(self) -> None:
        self._proc.kill()
        self._finish()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_wav(path: str | Path, wave: np.ndarray, sr: int) -> None:
    """``wave`` (float32 mono) as a 32-bit float wav."""
    sf.write(str(path), wave, sr, subtype="FLOAT")
