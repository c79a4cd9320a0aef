"""Bad inputs of scripts/build_shards.py (deemo_jax.data.cli): each case checks the exit code, a one-line message
(what, where, how to fix), that the good rows of the same manifest were written, and that the counts reconcile
(metadata.json written + failures.jsonl rows = manifest rows)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from array_record.python.array_record_module import ArrayRecordReader

from deemo_jax.data import schema
from deemo_jax.data.cli import main
from deemo_jax.exit_codes import BAD_DATA, OK, SOME_FAILED, USAGE

from .helpers import FIX_WORDS, assert_one_line_error, run_main

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Tiny source videos (no faces: testsrc patterns), without sidecars."""
    d = tmp_path_factory.mktemp("bad_build_media")
    src = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=10"]
    _ffmpeg(*src, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "3",
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(d / "good.mp4"))
    _ffmpeg(*src, "-t", "3", "-pix_fmt", "yuv420p", str(d / "noaudio.mp4"))
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov first (faststart), media data cut
    (d / "notavideo.mp4").write_text("this is not a video\n")
    return d


def sidecar(video: Path, *, passed: bool = True, deidentified: bool | None = None, threshold: float = 0.5,
            sha_of: Path | None = None) -> Path:
    """The sidecar fields scripts/deidentify.py writes that the rule checks (sha256 of ``sha_of`` or ``video``)."""
    sha = hashlib.sha256((sha_of or video).read_bytes()).hexdigest()
    faces = [] if passed else [0, 1, 2]
    data = {"deidentified": passed if deidentified is None else deidentified, "version": 1,
            "output": {"file": video.name, "sha256": sha},
            "audit": {"frames": 30, "frames_with_faces": faces, "max_score": 0.2 if passed else 0.91,
                      "threshold": threshold, "passed": passed}}
    path = video.with_name(video.name + ".deid.json")
    path.write_text(json.dumps(data))
    return path


def place(media: Path, folder: Path, name: str, source: str = "good.mp4", *, with_sidecar: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(media / source, target)
    if with_sidecar:
        sidecar(target)
    return target


def row(clip_id: str, video: str, label: str = "positive", split: str = "train", start: float = 0.0,
        end: float = 2.0) -> dict:
    return {"id": clip_id, "video": video, "start": start, "end": end, "transcription": f"words of {clip_id}",
            "label": label, "reasoning": f"why {clip_id}", "split": split}


def write_manifest(folder: Path, rows: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "clips.jsonl"
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def build(manifest: Path, out: Path, capsys, *extra: str):
    return run_main(main, ["--manifest", str(manifest), "--output", str(out), "--no-progress", *extra], capsys)


def shard_ids(out: Path) -> list[str]:
    meta = json.loads((out / "metadata.json").read_text())
    ids = []
    for shard in meta["shards"]:
        reader = ArrayRecordReader(str(out / shard["file"]))
        ids += [schema.decode(r)["id"] for r in reader.read_all()]
        reader.close()
    return ids


def failures(out: Path) -> dict[str, str]:
    """failures.jsonl as {id (or 'line N'): reason}, after checking that the counts reconcile."""
    rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    counts = json.loads((out / "metadata.json").read_text())["counts"]
    assert counts["written"] + len(rows) == counts["manifest_rows"], counts
    assert counts["failed"] == len(rows) and len(shard_ids(out)) == counts["written"]
    return {r["id"] or f"line {r['line']}": r["reason"] for r in rows}


def assert_reason(reason: str, *fragments: str) -> None:
    """A failures.jsonl reason is one line holding every fragment and a way to fix it."""
    assert "\n" not in reason and "Traceback" not in reason, reason
    for fragment in fragments:
        assert fragment.lower() in reason.lower(), (fragment, reason)
    assert any(w in reason.lower() for w in FIX_WORDS), f"no fix in: {reason}"


def test_failed_audit_sidecar_is_refused_even_with_already_deidentified(media, tmp_path, capsys):
    # The defect: --already-deidentified accepted a video whose sidecar records a failed audit (exit 0).
    place(media, tmp_path, "ok.mp4")
    bad = place(media, tmp_path, "faces.mp4", with_sidecar=False)
    sidecar(bad, passed=False)
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("faces", "faces.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys, "--already-deidentified")
    assert_one_line_error(result, "1 row(s) were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    assert_reason(failures(out)["faces"], "faces.mp4", "failed privacy audit", "never overrides")
    assert "line 2 (faces)" in result.out
    assert json.loads((out / "metadata.json").read_text())["already_deidentified"] is True


def test_video_without_audio_track_gives_a_video_only_record(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    place(media, tmp_path, "silent.mp4", "noaudio.mp4")
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("silent", "silent.mp4", "negative")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert result.code == OK, result.err
    assert not failures(out) and sorted(shard_ids(out)) == ["ok", "silent"]
    assert "must mux" not in result.out + result.err
    assert any("silent.mp4 has no audio track: video-only record" in line for line in result.out.splitlines())
    meta = json.loads((out / "metadata.json").read_text())
    reader = ArrayRecordReader(str(out / meta["shards"][0]["file"]))
    records = {r["id"]: r for r in map(schema.decode, reader.read_all())}
    reader.close()
    assert records["silent"]["has_audio"] is False and "fbank" not in records["silent"]
    assert records["ok"]["fbank"].shape == (8, 128, 204) and records["ok"].get("has_audio", True)


def test_same_file_name_in_two_folders_is_told_apart_by_folder(media, tmp_path, capsys):
    place(media, tmp_path / "day1", "clip.mp4")
    broken = place(media, tmp_path / "day2", "clip.mp4", "notavideo.mp4", with_sidecar=False)
    sidecar(broken)  # de-identification "passed", but the file is not a video
    manifest = write_manifest(tmp_path, [row("a", "day1/clip.mp4"), row("b", "day2/clip.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "were not written", str(out / "failures.jsonl"), code=SOME_FAILED)
    assert shard_ids(out) == ["a"]
    reason = failures(out)["b"]
    assert reason.startswith("day2/clip.mp4:"), reason
    assert_reason(reason, "day2/clip.mp4", "cannot read")


def test_output_folder_of_another_build_is_named_and_refused(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4")])
    out = tmp_path / "shards"
    assert build(manifest, out, capsys).code == OK
    other = write_manifest(tmp_path / "other", [row("ok2", str(tmp_path / "ok.mp4"))])
    result = build(other, out, capsys)
    assert_one_line_error(result, str(out), "different build", "choose a new --output folder", code=USAGE)
    assert shard_ids(out) == ["ok"] and not failures(out)  # the first build is untouched


def test_bad_manifest_rows_are_listed_and_good_rows_written(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    rows = [
        row("ok", "ok.mp4"),
        b'{"id": "broken", "video": ',
        row("neutral", "ok.mp4", label="neutral"),
        {k: v for k, v in row("nolabel", "ok.mp4").items() if k != "label"},
        row("backwards", "ok.mp4", start=2.0, end=1.0),
        row("ok", "ok.mp4", split="test"),  # duplicate id
        row("outside", "ok.mp4", start=1.0, end=9.0),
    ]
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "6 row(s) were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    got = failures(out)
    assert set(got) == {"line 2", "neutral", "nolabel", "backwards", "ok", "outside"}
    assert "invalid JSON" in got["line 2"] and "unknown label 'neutral'" in got["neutral"]
    assert "missing field" in got["nolabel"] and "<= start" in got["backwards"]
    assert "duplicate id 'ok'" in got["ok"]
    assert "ok.mp4" in got["outside"] and "outside the video" in got["outside"]


def test_missing_video_names_the_path_and_the_fix(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("gone", "videos/typo.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "1 row(s) were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    assert_reason(failures(out)["gone"], "videos/typo.mp4", "not found", "fix the path")


def test_empty_manifest_says_so_without_pointing_at_failures(tmp_path, capsys):
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("\n\n")
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    line = assert_one_line_error(result, str(manifest), "has no rows", code=BAD_DATA)
    assert "failures.jsonl" not in line and "see failures" not in result.err
    assert not failures(out) and shard_ids(out) == []


def test_unwritable_output_folder_fails_before_any_work(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4")])
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go\n")
    result = build(manifest, blocker / "shards", capsys)
    assert_one_line_error(result, str(blocker), "regular file", code=USAGE)
    assert blocker.read_text().startswith("a file") and not list(tmp_path.glob("**/*.array_record*"))


def test_video_changed_after_deidentification_is_refused(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    changed = place(media, tmp_path, "changed.mp4")
    shutil.copy(media / "noaudio.mp4", changed)  # replaced after its sidecar was written
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("changed", "changed.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    assert_reason(failures(out)["changed"], "changed.mp4", "written for other bytes", "re-run scripts/deidentify.py")


def test_truncated_video_reports_the_real_cause(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    place(media, tmp_path, "cut.mp4", "truncated.mp4")  # sidecar of the cut bytes: the rule accepts it
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("cut", "cut.mp4", end=3.0)])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    reason = failures(out)["cut"]
    assert "outside the video" not in reason
    assert_reason(reason, "cut.mp4", "truncated")


def test_unreadable_sidecar_is_refused_even_with_already_deidentified(media, tmp_path, capsys):
    place(media, tmp_path, "ok.mp4")
    broken = place(media, tmp_path, "broken.mp4", with_sidecar=False)
    broken.with_name("broken.mp4.deid.json").write_text("{not json")
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row("broken", "broken.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys, "--already-deidentified")
    assert_one_line_error(result, "were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    assert_reason(failures(out)["broken"], "broken.mp4", "cannot be read", "never overrides")


@pytest.mark.parametrize(
    ("kind", "fields", "fragment"),
    [
        ("unfinished", {"deidentified": False}, "does not record a finished de-identification"),
        ("lenient", {"threshold": 0.9}, "looser than the strict 0.5"),
    ],
)
def test_sidecar_without_a_strict_passed_audit_is_refused(media, tmp_path, capsys, kind, fields, fragment):
    place(media, tmp_path, "ok.mp4")
    video = place(media, tmp_path, f"{kind}.mp4", with_sidecar=False)
    sidecar(video, **fields)
    manifest = write_manifest(tmp_path, [row("ok", "ok.mp4"), row(kind, f"{kind}.mp4")])
    out = tmp_path / "shards"
    result = build(manifest, out, capsys)
    assert_one_line_error(result, "were not written", "failures.jsonl", code=SOME_FAILED)
    assert shard_ids(out) == ["ok"]
    assert_reason(failures(out)[kind], f"{kind}.mp4", fragment, "re-run scripts/deidentify.py")
