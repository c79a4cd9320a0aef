"""Video and audio I/O through the system ``ffmpeg``/``ffprobe`` (rawvideo rgb24 pipes, no temporary frames).

Frames are read at a constant rate equal to the stream's average frame rate (ffmpeg duplicates/drops frames of
variable-rate input), so that the encoded output keeps the duration and stays in sync with the audio. Output:
H.264 (libx264, yuv420p; odd sizes padded by one black pixel), AAC audio, all container metadata stripped
(titles, GPS tags, device names can identify people).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO_SR = 16000  # McAdams (and the model's audio front end) work on 16 kHz mono


class MediaError(RuntimeError):
    """ffmpeg/ffprobe failed or the file is not a usable video (the message names the file and the cause)."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(f"'{name}' is not on PATH; install it (Debian/Ubuntu: apt-get install -y ffmpeg)")
    return path


def _stderr_tail(stderr: bytes, limit: int = 400) -> str:
    return " ".join(stderr.decode("utf-8", "replace").split())[-limit:]


def _read_log(log) -> bytes:
    log.seek(0)
    return log.read()


@dataclass(frozen=True)
class VideoInfo:
    width: int  # displayed size (rotation metadata applied, as ffmpeg decodes it)
    height: int
    fps: Fraction
    duration: float | None  # seconds, when known
    has_audio: bool

    @property
    def frame_estimate(self) -> int | None:
        return round(self.duration * float(self.fps)) if self.duration else None


def probe(path: str | Path) -> VideoInfo:
    """Read size, frame rate, duration and audio presence with ffprobe."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    cmd = [
        _tool("ffprobe"),
        "-v",
        "error",
        "-print_format",
        "json",
        "-show_streams",
        "-show_format",
        str(path),
    ]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise MediaError(f"{path.name}: ffprobe cannot read it ({_stderr_tail(result.stderr)})")
    meta = json.loads(result.stdout or b"{}")
    streams = meta.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and s.get("width")), None)
    if video is None:
        raise MediaError(f"{path.name}: no video stream")
    fps = Fraction(0)
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = video.get(key, "0/0").partition("/")
        if den and int(den) and int(num):
            fps = Fraction(int(num), int(den))
            break
    if fps <= 0:
        raise MediaError(f"{path.name}: the video stream has no usable frame rate")
    width, height = int(video["width"]), int(video["height"])
    rotation = int(float(video.get("tags", {}).get("rotate", 0)))
    for side in video.get("side_data_list", []):
        rotation = int(float(side.get("rotation", rotation)))
    if rotation % 180:
        width, height = height, width
    duration = video.get("duration") or meta.get("format", {}).get("duration")
    return VideoInfo(
        width=width,
        height=height,
        fps=fps,
        duration=float(duration) if duration else None,
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
    )


def read_frames(path: str | Path, info: VideoInfo) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames ``[H, W, 3]``; raises :class:`MediaError` if ffmpeg fails mid-stream."""
    cmd = [
        _tool("ffmpeg"),
        "-v",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-an",
        "-sn",
        "-r",
        str(info.fps),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    frame_bytes = info.width * info.height * 3
    # stderr goes to a file: a damaged stream can log more than a pipe buffer holds and stall ffmpeg.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        try:
            while True:
                buf = proc.stdout.read(frame_bytes)
                if len(buf) < frame_bytes:
                    break
                yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3).copy()
            if proc.wait() != 0 or buf:
                reason = _stderr_tail(_read_log(log)) or "truncated frame"
                raise MediaError(f"{Path(path).name}: decoding failed ({reason})")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def extract_audio(path: str | Path, sr: int = AUDIO_SR) -> np.ndarray:
    """First audio stream as float32 mono at ``sr`` Hz (ffmpeg resamples and mixes down)."""
    cmd = [
        _tool("ffmpeg"),
        "-v",
        "error",
        "-nostdin",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sr),
        "-f",
        "f32le",
        "-",
    ]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0:
        raise MediaError(f"{Path(path).name}: audio extraction failed ({_stderr_tail(result.stderr)})")
    return np.frombuffer(result.stdout, np.float32).copy()


class FrameWriter:
    """Pipe RGB frames into an H.264 mp4, optionally muxing a mono wav as AAC. Use as a context manager."""

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
        cmd = [
            _tool("ffmpeg"),
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-framerate",
            str(fps),
            "-i",
            "-",
        ]
        if audio is not None:
            cmd += ["-i", str(audio)]
        cmd += ["-map", "0:v:0"] + (
            ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"] if audio is not None else []
        )
        cmd += [
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-preset",
            preset,
            "-crf",
            str(crf),
            # A key frame every second keeps clip seeks in the shard builder cheap on long interviews.
            "-g",
            str(max(1, round(float(fps)))),
            "-pix_fmt",
            "yuv420p",
            "-map_metadata",
            "-1",
            "-map_chapters",
            "-1",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(self.path),
        ]
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=self._log)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != self._shape or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {self._shape}, got {frame.dtype} {frame.shape}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as e:
            raise MediaError(f"{self.path.name}: encoder stopped ({self._finish()})") from e

    def _finish(self) -> str:
        if not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._proc.wait()
        stderr = _read_log(self._log)
        self._log.close()
        return _stderr_tail(stderr)

    def close(self) -> None:
        stderr = self._finish()
        if self._proc.returncode != 0:
            raise MediaError(f"{self.path.name}: encoding failed ({stderr})")

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


def write_wav(path: Path, wave: np.ndarray, sr: int) -> None:
    sf.write(str(path), wave, sr, subtype="FLOAT")
