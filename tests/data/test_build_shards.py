"""Clip reading (media.py) and the shard builder end to end on tiny ffmpeg-generated videos."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from deemo_jax import media
from deemo_jax.data import schema
from deemo_jax.data.builder import BuildError, build_shards

_spec = importlib.util.spec_from_file_location(
    "build_shards_cli", Path(__file__).resolve().parents[2] / "scripts" / "build_shards.py"
)
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def _write_sidecar(video: Path, passed: bool = True) -> None:
    """The sidecar fields of scripts/deidentify.py that deemo_jax.deid.load_sidecar and the builder check."""
    sha = hashlib.sha256(video.read_bytes()).hexdigest()
    sidecar = {"deidentified": True, "output": {"sha256": sha}, "audit": {"passed": passed}}
    video.with_name(video.name + ".deid.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("videos")
    src = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"]
    _ffmpeg(*src, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "3",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(d / "good.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc2=size=176x96:rate=25", "-f", "lavfi",
            "-i", "sine=frequency=300:sample_rate=48000", "-ac", "2", "-t", "4", "-pix_fmt", "yuv420p",
            str(d / "stereo48k.mp4"))
    _ffmpeg(*src, "-t", "3", "-pix_fmt", "yuv420p", str(d / "noaudio.mp4"))
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov first (faststart), media data cut
    (d / "notavideo.mp4").write_text("this is not a video\n")
    shutil.copy(d / "good.mp4", d / "nosidecar.mp4")
    shutil.copy(d / "good.mp4", d / "failedaudit.mp4")
    for name in ("good", "stereo48k", "noaudio", "truncated", "notavideo"):
        _write_sidecar(d / f"{name}.mp4")
    _write_sidecar(d / "failedaudit.mp4", passed=False)
    return d


# ------------------------------------------------------------------------------------------- media.py


def test_uniform_frame_indices_reference_rule():
    np.testing.assert_array_equal(media.uniform_frame_indices(100), [0, 12, 25, 37, 50, 62, 75, 87])
    np.testing.assert_array_equal(media.uniform_frame_indices(8), np.arange(8))
    np.testing.assert_array_equal(media.uniform_frame_indices(5), [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(media.uniform_frame_indices(24), [0, 3, 6, 9, 12, 15, 18, 21])


def test_read_clip_frames_times_audio(videos):
    full = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(videos / "good.mp4"), "-vf", "scale=224:224:flags=bicubic",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True,
    ).stdout
    all_frames = np.frombuffer(full, np.uint8).reshape(-1, 224, 224, 3)
    assert len(all_frames) == 30
    clip = media.read_clip(videos / "good.mp4", 0.5, 2.9)  # frames 5..28 (24 of them): every 3rd
    assert clip.frames.shape == (8, 224, 224, 3) and clip.frames.dtype == np.uint8
    np.testing.assert_array_equal(clip.frames, all_frames[5 + np.arange(0, 24, 3)])  # exact seek
    np.testing.assert_allclose(clip.frame_times, np.arange(0, 2.4, 0.3), atol=1e-6)
    assert clip.sample_rate == 16000 and clip.audio.dtype == np.float32
    assert clip.audio.shape == (int(2.4 * 16000),)  # 44.1 kHz resampled
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spectrum) * 16000 / clip.audio.size - 440) < 1

    frames, times = media.read_frames(videos / "good.mp4", 0.0, 0.45)  # 5 frames: last one repeated
    np.testing.assert_allclose(times, [0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4], atol=1e-6)
    np.testing.assert_array_equal(frames[4], frames[7])


@pytest.mark.parametrize(
    ("name", "start", "end", "error", "message"),
    [
        ("good.mp4", 1.0, 5.0, media.ClipOutOfRangeError, "duration 3.000 s"),
        ("noaudio.mp4", 0.0, 1.0, media.NoAudioTrackError, "no audio track"),
        ("truncated.mp4", 0.0, 3.0, media.TruncatedVideoError, "truncated"),
        ("notavideo.mp4", 0.0, 1.0, media.UnreadableVideoError, "cannot read"),
        ("missing.mp4", 0.0, 1.0, media.UnreadableVideoError, "not found"),
        ("good.mp4", 2.95, 3.0, media.TooFewFramesError, "no video frame"),  # last frame: 2.9 s
    ],
)
def test_read_clip_typed_errors(videos, name, start, end, error, message):
    with pytest.raises(error, match=message):
        media.read_clip(videos / name, start, end)


# ------------------------------------------------------------------------------------------- builder


def _row(clip_id: str, video: str, start: float, end: float, label: str, split: str, **extra) -> dict:
    row = {"id": clip_id, "video": video, "start": start, "end": end, "transcription": f"words of {clip_id}",
           "label": label, "reasoning": f"why {clip_id}", "split": split}
    row.update(extra)
    return row


def _manifest_lines() -> list[bytes]:
    enc = [
        _row("g1", "good.mp4", 0.0, 3.0, "positive", "train",
             nfbl=[{"label": "touching the nose", "start": 0.5, "end": 4.0}]),
        _row("g2", "stereo48k.mp4", 1.0, 4.0, "negative", "train"),
        b'{"id": "bad_json", "video": ',
        None,  # non-UTF-8, filled below
        {k: v for k, v in _row("no_label", "good.mp4", 0, 1, "positive", "train").items() if k != "label"},
        _row("empty_text", "good.mp4", 0, 1, "positive", "train", transcription="   "),
        _row("neutral", "good.mp4", 0, 1, "neutral", "train"),
        _row("zero_len", "good.mp4", 2.0, 2.0, "positive", "train"),
        _row("outside", "good.mp4", 1.0, 5.0, "positive", "train"),
        _row("noaudio", "noaudio.mp4", 0.0, 2.0, "negative", "train"),
        _row("truncated", "truncated.mp4", 0.0, 3.0, "negative", "test"),
        _row("notavideo", "notavideo.mp4", 0.0, 1.0, "negative", "test"),
        _row("nosidecar", "nosidecar.mp4", 0.0, 2.0, "positive", "train"),
        _row("failedaudit", "failedaudit.mp4", 0.0, 2.0, "positive", "train"),
        _row("g3", "good.mp4", 0.5, 1.5, "positive", "test"),
        _row("g4", "good.mp4", 1.0, 2.5, "negative", "test"),
    ]
    latin1 = json.dumps(_row("latin1", "good.mp4", 0, 1, "positive", "train", transcription="CAFE")).encode()
    lines = [x if isinstance(x, bytes) else json.dumps(x).encode() for x in enc if x is not None]
    lines.insert(3, latin1.replace(b"CAFE", b"caf\xe9"))
    lines.insert(5, b"")  # blank lines are not rows
    return lines


# manifest line -> expected fragment of its failure reason (line 6 is blank)
EXPECTED_FAILURES = {
    3: "invalid JSON", 4: "not valid UTF-8", 5: "missing field", 7: "empty transcription", 8: "unknown label",
    9: "<= start", 10: "outside the video", 12: "truncated", 13: "cannot read",
    14: "no de-identification sidecar", 15: "failed privacy audit",
}


@pytest.fixture(scope="module")
def built(videos, tmp_path_factory):
    manifest = videos / "clips.jsonl"
    manifest.write_bytes(b"\n".join(_manifest_lines()) + b"\n")
    out = tmp_path_factory.mktemp("shards")
    report = build_shards(manifest, out, records_per_shard=2, workers=2, progress=False)
    return manifest, out, report


def _read_records(out: Path) -> dict[str, list[dict]]:
    meta = json.loads((out / "metadata.json").read_text())
    records: dict[str, list[dict]] = {}
    for shard in meta["shards"]:
        reader = ArrayRecordReader(str(out / shard["file"]))
        assert reader.num_records() == shard["records"]
        records.setdefault(shard["split"], []).extend(schema.decode(r) for r in reader.read_all())
        reader.close()
    return records


def test_build_counts_failures_and_metadata(built):
    manifest, out, report = built
    assert (report.written, report.failed, report.manifest_rows) == (5, 11, 16)
    assert report.summary() == "written 5 + failed 11 = manifest rows 16"
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["line"] for f in failures] == sorted(EXPECTED_FAILURES)
    for f in failures:
        assert EXPECTED_FAILURES[f["line"]] in f["reason"], f
    by_line = {f["line"]: f for f in failures}
    assert by_line[14]["id"] == "nosidecar"
    assert "scripts/deidentify.py" in by_line[14]["reason"]
    assert "--already-deidentified" in by_line[14]["reason"]
    assert str(out.parent) not in (out / "failures.jsonl").read_text()  # files named as in the manifest

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["schema_version"] == schema.SCHEMA_VERSION and meta["labels"] == ["positive", "negative"]
    assert meta["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert meta["already_deidentified"] is False
    assert meta["counts"]["written"] == 5 and meta["counts"]["failed"] == 11
    assert meta["counts"]["per_label"] == {"positive": 2, "negative": 3}
    assert meta["counts"]["per_split"]["train"]["per_label"] == {"positive": 1, "negative": 2}
    assert meta["counts"]["per_split"]["test"]["records"] == 2
    assert meta["frames"]["num_frames"] == 8 and meta["audio"]["num_mel_bins"] == 128
    shards = {s["file"]: s["records"] for s in meta["shards"]}
    assert shards == {
        "test-00000-of-00002.array_record": 0, "test-00001-of-00002.array_record": 2,
        "train-00000-of-00003.array_record": 2, "train-00001-of-00003.array_record": 1,
        "train-00002-of-00003.array_record": 0,
    }
    assert not list(out.glob("*.tmp"))
    assert any("g3" in w and "zero-padded" in w for w in report.warnings)


def test_records_decode_with_schema(built):
    _, out, _ = built
    records = _read_records(out)
    assert [r["id"] for r in records["train"]] == ["g1", "g2", "noaudio"]  # manifest order
    assert [r["id"] for r in records["test"]] == ["g3", "g4"]
    noaudio = records["train"].pop()  # a video without an audio track: a video-only record
    assert noaudio["has_audio"] is False and "fbank" not in noaudio and "audio_clip_times" not in noaudio
    assert noaudio["frames"].shape == (8, 224, 224, 3)
    for r in records["train"] + records["test"]:
        assert r["frames"].shape == (8, 224, 224, 3) and r["frames"].dtype == np.uint8
        assert r["frame_times"].shape == (8,) and r["frame_times"].dtype == np.float32
        assert r["fbank"].shape == (8, 128, 204) and r["fbank"].dtype == np.float32
        assert r["audio_clip_times"].shape == (8, 2) and r["audio_clip_times"].dtype == np.float32
        assert r["label_index"] == ["positive", "negative"].index(r["label"])
        assert not any(isinstance(v, str) and ".mp4" in v for v in r.values())  # no file paths
        assert len({f.tobytes() for f in r["frames"]}) > 1  # testsrc moves: distinct frames
    g1, g2 = records["train"]
    assert g1["nfbl"] == [{"label": "touching the nose", "start": 0.5, "end": 3.0}]  # clip-relative, clipped
    assert g1["transcription"] == "words of g1" and g1["reasoning"] == "why g1"
    np.testing.assert_allclose(g1["frame_times"], [0.0, 0.3, 0.7, 1.1, 1.5, 1.8, 2.2, 2.6], atol=1e-6)
    np.testing.assert_allclose(g2["audio_clip_times"][:, 0], np.arange(8) / 7, atol=1e-6)  # 3 s of audio
    g3 = records["test"][0]
    np.testing.assert_array_equal(g3["audio_clip_times"], np.tile([[0.0, 2.0]], (8, 1)))  # 1 s, padded


def test_rerun_skips_finished_shards_and_rebuilds_missing_ones(built):
    manifest, out, first = built
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")}
    again = build_shards(manifest, out, records_per_shard=2, workers=2, progress=False)
    assert all(s.skipped for s in again.shards)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record")} == mtimes
    assert again.summary() == first.summary()
    assert [f.line for f in again.failures] == [f.line for f in first.failures]

    # A crash mid-shard leaves only a .tmp file: the shard is not complete and gets rebuilt.
    victim = out / "test-00001-of-00002.array_record"
    victim.rename(out / "test-00001-of-00002.array_record.tmp")
    resumed = build_shards(manifest, out, records_per_shard=2, workers=1, progress=False)
    assert [s.file for s in resumed.shards if not s.skipped] == [victim.name]
    assert victim.is_file() and not list(out.glob("*.tmp"))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record") if p != victim} == {
        k: v for k, v in mtimes.items() if k != victim.name
    }
    assert [r["id"] for r in _read_records(out)["test"]] == ["g3", "g4"]

    with pytest.raises(BuildError, match="different build"):  # other settings, same directory
        build_shards(manifest, out, records_per_shard=3, progress=False)


def test_cli_sidecar_refusal_and_override(videos, tmp_path, capsys):
    manifest = tmp_path / "one.jsonl"
    row = _row("nosidecar", str(videos / "nosidecar.mp4"), 0.0, 2.0, "positive", "val")
    manifest.write_text(json.dumps(row))
    refused = tmp_path / "refused"
    assert cli.main(["--manifest", str(manifest), "--output", str(refused), "--no-progress"]) == 1
    failure = json.loads((refused / "failures.jsonl").read_text())
    assert "no de-identification sidecar" in failure["reason"]

    accepted = tmp_path / "accepted"
    args = ["--manifest", str(manifest), "--output", str(accepted), "--no-progress", "--already-deidentified"]
    assert cli.main(args) == 0
    assert "written 1 + failed 0 = manifest rows 1" in capsys.readouterr().out
    meta = json.loads((accepted / "metadata.json").read_text())
    assert meta["already_deidentified"] is True and meta["counts"]["per_split"]["val"]["records"] == 1

    assert cli.main(["--manifest", str(tmp_path / "nope.jsonl"), "--output", str(accepted)]) == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["--manifest", str(manifest), "--output", str(accepted), "--records-per-shard", "0"])
    assert exc.value.code == 2


def test_video_only_record_is_refused_only_when_the_run_uses_audio(built, tmp_path):
    from deemo_jax.data.pipeline import ExampleProcessor
    from deemo_jax.data.prompts import PromptConfig
    from deemo_jax.data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer

    _, out, _ = built
    reader = ArrayRecordReader(str(out / "train-00001-of-00003.array_record"))
    (data,) = reader.read_all()
    reader.close()
    words = "words of noaudio why ###Human: ###Assistant: <Audio></Audio> <Video></Video> <User></User>".split()
    texts = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 20
    tokenizer = load_tokenizer(train_sentencepiece_tokenizer(texts, tmp_path / "tok", vocab_size=300))

    def processor(use_audio: bool) -> ExampleProcessor:
        return ExampleProcessor(tokenizer, PromptConfig(use_audio=use_audio, labels=("positive", "negative")),
                                kind="mer", max_length=512, overlong_policy="drop", num_frames=8, num_audio_clips=8)

    element = processor(False)(data)
    assert element["frames"].shape == (8, 224, 224, 3) and "fbank" not in element
    with pytest.raises(ValueError, match="'noaudio' comes from a video without an audio track.*use_audio=False"):
        processor(True)(data)
