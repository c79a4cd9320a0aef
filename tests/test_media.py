"""The media layer (deemo_jax/media.py) fails closed: truncated files, decoding errors, files without frames."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deemo_jax import media

FPS, SECONDS, FRAMES = 20, 2, 40


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    full = d / "full.mp4"  # moov atom first (faststart): a cut copy still has the whole header
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}", "-f", "lavfi", "-i", "sine=f=300:sample_rate=44100",
        "-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-movflags", "+faststart", str(full),
    )  # fmt: skip
    data = full.read_bytes()
    (d / "half.mp4").write_bytes(data[: len(data) // 2])  # what `head -c` of an interrupted copy leaves
    damaged = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 3000, 7):  # garbage inside the media data, size unchanged
        damaged[i] ^= 0xFF
    (d / "damaged.mp4").write_bytes(bytes(damaged))
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}", "-frames:v", "0", "-c:v", "mpeg4",
            str(d / "noframes.avi"))  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "sine=f=300", "-t", "1", str(d / "voice.m4a"))
    _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=160x120:rate={FPS}", "-t", "1", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(d / "silent.mp4"))  # fmt: skip
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video\n")
    return {p.stem: p for p in d.iterdir()}


def test_complete_file_reads_fully(files):
    info = media.probe(files["full"])
    assert (info.width, info.height, info.fps, info.nb_frames) == (160, 120, FPS, FRAMES)
    assert info.video_duration == pytest.approx(SECONDS) and info.audio_duration == pytest.approx(SECONDS, abs=0.05)
    assert sum(1 for _ in media.iter_frames(files["full"], info)) == FRAMES
    assert media.extract_audio(files["full"]).size == pytest.approx(SECONDS * media.SAMPLE_RATE, rel=0.02)
    clip = media.read_clip(files["full"], 0.0, SECONDS)
    assert clip.frames.shape == (8, 224, 224, 3) and clip.audio.size == SECONDS * media.SAMPLE_RATE


def test_truncated_file_still_promises_the_whole_video(files):
    info = media.probe(files["half"])  # the header is intact: ffprobe cannot tell
    assert info.nb_frames == FRAMES and info.video_duration == pytest.approx(SECONDS)


@pytest.mark.parametrize(
    "reader",
    [
        pytest.param(lambda p: list(media.iter_frames(p)), id="iter_frames"),
        pytest.param(lambda p: media.extract_audio(p), id="extract_audio"),
        pytest.param(lambda p: media.read_frames(p, 0.0, SECONDS), id="read_frames"),
        pytest.param(lambda p: media.read_audio(p, 0.0, SECONDS), id="read_audio"),
        pytest.param(lambda p: media.read_clip(p, 0.0, SECONDS), id="read_clip"),
    ],
)
def test_every_reader_refuses_a_truncated_file(files, reader):
    with pytest.raises(media.TruncatedVideoError, match=r"half\.mp4: truncated: decoded \d\.\d\d s of 2\.00 s"):
        reader(files["half"])


def test_iter_frames_names_the_frame_counts(files):
    with pytest.raises(media.TruncatedVideoError, match=rf"of {FRAMES} frames; .*replace it with the complete file"):
        for _ in media.iter_frames(files["half"]):
            pass


def test_decoding_errors_are_failures_not_warnings(files):
    # ffmpeg exits 0 and delivers every frame (some garbled); only its stderr tells
    with pytest.raises(media.UnreadableVideoError, match="damaged.mp4: ffmpeg cannot decode the video"):
        list(media.iter_frames(files["damaged"]))
    with pytest.raises(media.UnreadableVideoError, match="cannot decode the video"):
        media.read_frames(files["damaged"], 0.0, SECONDS)


def test_check_complete_tolerance():
    media.check_complete("a.mp4", "video", 1.95, 2.0, 0.1)  # within tolerance
    media.check_complete("a.mp4", "video", 0.0, None, 0.1)  # nothing promised: nothing to compare
    with pytest.raises(media.TruncatedVideoError, match=r"a.mp4: truncated: decoded 1.85 s of 2.00 s of video"):
        media.check_complete("a.mp4", "video", 1.85, 2.0, 0.1)


def test_unusable_files_raise_one_line_errors_with_a_fix(files):
    cases = [
        ("empty", media.UnreadableVideoError, r"empty file \(0 bytes\)"),
        ("notes", media.UnreadableVideoError, "ffprobe cannot read it"),
        ("voice", media.UnreadableVideoError, "no video stream"),
    ]
    for name, error, text in cases:
        with pytest.raises(error, match=text) as caught:
            media.probe(files[name])
        assert "\n" not in str(caught.value) and any(w in str(caught.value) for w in ("replace", "check"))
    with pytest.raises(media.TooFewFramesError, match="noframes.avi: no video frame could be decoded"):
        list(media.iter_frames(files["noframes"]))
    with pytest.raises(media.NoAudioTrackError, match="no audio track"):
        media.extract_audio(files["silent"])

