"""Bad inputs for the de-identification command (``python -m deemo_jax.deid`` = scripts/deidentify.py).

Every case builds its own small media (64-160 px, about a second) with ffmpeg, runs ``main(argv)`` in-process
and checks the documented exit code, a one-line error (what, where, how to fix), that good inputs are still
processed, that the printed counts reconcile with failures.jsonl, and that no video that may show a face (a
failed audit, a half-written file) is left under a final ``OUTPUT/*.mp4`` name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deemo_jax import exit_codes
from deemo_jax.deid import NotDeidentifiedError, cli, is_deidentified, load_sidecar, require_deidentified, sidecar_path
from tests.deid.synthetic import write_face_video

from .helpers import Result, assert_one_line_error, run_main

SUMMARY = re.compile(r"done: (\d+) processed \((\d+) new, (\d+) already done\) \+ (\d+) failed = (\d+) inputs")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Small inputs, good and bad, shared by the cases (the tests never modify them)."""
    d = tmp_path_factory.mktemp("bad-deid-inputs")
    # A real face (public-domain photo) that the audit flags at ~0.75-0.85 when nothing masks it.
    write_face_video(d / "face.mp4", n_frames=8, width=160, height=160, fps=8, audio=True)
    # A face-free clip with sound: passes the audit.
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=128x96:rate=8", "-f", "lavfi", "-i", "sine=f=220:sample_rate=16000",
            "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(d / "good.mp4"))  # fmt: skip
    # 40 frames, moov first (faststart); cut in half like an interrupted copy: the header still promises 2 s.
    full = d / "full.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=20", "-f", "lavfi", "-i", "sine=f=300", "-t", "2",
            "-c:v", "libx264", "-preset", "veryfast", "-g", "20", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-movflags", "+faststart", str(full))  # fmt: skip
    data = full.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 3000, 7):
        damaged[i] ^= 0xFF
    (d / "damaged.mp4").write_bytes(bytes(damaged))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=8", "-frames:v", "0", "-c:v", "mpeg4",
            str(d / "noframes.avi"))  # fmt: skip
    _ffmpeg("-f", "lavfi", "-i", "sine=f=300", "-t", "1", str(d / "voice.m4a"))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("meeting notes, not a video\n")
    return {p.name: p for p in d.iterdir()}


def _run(capsys, *argv: str | Path) -> Result:
    return run_main(cli.main, [str(a) for a in argv] + ["--threads", "1"], capsys)


def _summary(result: Result) -> dict[str, int]:
    match = SUMMARY.search(result.out)
    assert match, result.out
    processed, new, skipped, failed, inputs = map(int, match.groups())
    assert processed == new + skipped and processed + failed == inputs  # the counts reconcile
    return {"processed": processed, "new": new, "skipped": skipped, "failed": failed, "inputs": inputs}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def _final_videos(out: Path) -> list[str]:
    """Everything a consumer globbing ``OUTPUT/*.mp4`` would pick up (pathlib's glob includes hidden files)."""
    return sorted(p.name for p in out.glob("*.mp4"))


def _single_failure(capsys, tmp_path, path: Path, *fragments: str, stage: str) -> dict:
    """One bad input: exit 1, a one-line [FAILED] message naming it, one failures.jsonl row, no output."""
    out = tmp_path / "out"
    result = _run(capsys, path, "--output", out)
    line = assert_one_line_error(result, "[FAILED]", str(path), *fragments, code=exit_codes.SOME_FAILED)
    assert line.count(str(path)) == 1
    assert _summary(result) == {"processed": 0, "new": 0, "skipped": 0, "failed": 1, "inputs": 1}
    (row,) = _rows(out)
    assert row["input"] == path.name and row["stage"] == stage and row["index"] == 0
    assert str(path.parent) not in row["reason"]  # failures.jsonl holds file names, not folders
    assert _final_videos(out) == [] and not list(out.glob("*.deid.json"))
    assert_one_line_error(result, "1 of 1 inputs failed", "failures.jsonl", code=exit_codes.SOME_FAILED)
    return row


# ----------------------------------------------------------------------------------- privacy: failed audit


def test_failed_audit_output_is_deleted_never_under_its_final_name(media, tmp_path, capsys):
    out = tmp_path / "out"
    # --threshold 0.99: the detector masks nothing, so the written video shows the face and the audit fails
    result = _run(capsys, media["face.mp4"], "--output", out, "--threshold", "0.99")
    assert_one_line_error(result, "face.mp4", "privacy audit failed", "output was deleted", code=exit_codes.SOME_FAILED)
    assert _summary(result)["failed"] == 1
    (row,) = _rows(out)
    assert row["stage"] == "audit" and "quarantine" not in row
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl"]  # no video, partial or sidecar at all


def test_keep_failed_moves_the_output_to_quarantine_with_a_failed_sidecar(media, tmp_path, capsys):
    out = tmp_path / "out"
    result = _run(capsys, media["face.mp4"], "--output", out, "--threshold", "0.99", "--keep-failed")
    assert_one_line_error(result, "face.mp4", "privacy audit failed", "quarantine/face.FAILED.mp4",
                          code=exit_codes.SOME_FAILED)
    assert _final_videos(out) == [] and not sidecar_path(out / "face.mp4").exists()
    (row,) = _rows(out)
    assert row["stage"] == "audit" and row["quarantine"] == "quarantine/face.FAILED.mp4"
    kept = out / row["quarantine"]
    sidecar = load_sidecar(kept)
    assert sidecar["deidentified"] is False and sidecar["audit"]["passed"] is False
    assert sidecar["quarantine"]["file"] == row["quarantine"]
    assert not is_deidentified(kept)
    with pytest.raises(NotDeidentifiedError):
        require_deidentified(kept)


# ------------------------------------------------------------------------------------ bad inputs, one each


def test_truncated_faststart_mp4_fails_as_truncated(media, tmp_path, capsys):
    row = _single_failure(capsys, tmp_path, media["cut.mp4"], "truncated: decoded", "of 2.00 s",
                          stage="de-identification")
    assert "replace it with the complete file" in row["reason"]


def test_damaged_media_data_fails_on_decoding_errors(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, media["damaged.mp4"], "cannot decode", stage="de-identification")


def test_missing_input(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, tmp_path / "absent.mp4", "no such file", stage="input")


def test_not_a_video_file(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, media["notes.mp4"], "ffprobe cannot read it", stage="probe")


def test_zero_byte_file(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, media["empty.mp4"], "empty file (0 bytes)", stage="probe")


def test_video_stream_without_frames(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, media["noframes.avi"], "no video frame could be decoded",
                    stage="de-identification")


def test_audio_only_file(media, tmp_path, capsys):
    _single_failure(capsys, tmp_path, media["voice.m4a"], "no video stream", stage="probe")


# ------------------------------------------------------------------------------------------ output folder


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys").is_dir():
        pytest.skip("running as root without /sys: no folder here is unwritable")
    return Path("/sys/deemo-deid-test-output")  # root may write anywhere except a kernel file system


def test_unwritable_output_folder_is_refused_before_any_work(media, tmp_path, capsys):
    out = _unwritable_folder(tmp_path)
    result = _run(capsys, media["good.mp4"], "--output", out)
    assert_one_line_error(result, "output folder", str(out), "not writable", code=exit_codes.USAGE)
    assert "done:" not in result.out
    assert not out.exists() or not any(out.iterdir())


def test_output_below_a_regular_file(media, tmp_path, capsys):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    result = _run(capsys, media["good.mp4"], "--output", blocker / "deid")
    assert_one_line_error(result, str(blocker), "is a regular file", code=exit_codes.USAGE)
    assert blocker.read_text() == "not a folder\n"


def test_folder_without_videos_and_bad_arguments_are_usage_errors(media, tmp_path, capsys):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    result = _run(capsys, empty, "--output", tmp_path / "out")
    assert_one_line_error(result, "no video files found", str(empty), code=exit_codes.USAGE)
    result = _run(capsys, media["good.mp4"], "--output", tmp_path / "out", "--random-alpha")
    assert_one_line_error(result, "needs a seed", code=exit_codes.USAGE)


def test_a_lenient_audit_threshold_is_refused_before_any_work(media, tmp_path, capsys):
    result = _run(capsys, media["good.mp4"], "--output", tmp_path / "out", "--audit-threshold", "0.9")
    assert_one_line_error(result, "--audit-threshold 0.9", "use a value in (0, 0.5]", code=exit_codes.USAGE)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ batches


def test_batch_with_one_good_and_several_bad_inputs(media, tmp_path, capsys):
    out = tmp_path / "out"
    bad = [media["cut.mp4"], media["empty.mp4"], media["notes.mp4"], tmp_path / "absent.mp4",
           media["noframes.avi"]]
    result = _run(capsys, media["good.mp4"], *bad, "--output", out)
    assert result.code == exit_codes.SOME_FAILED and "Traceback" not in result.err
    assert _summary(result) == {"processed": 1, "new": 1, "skipped": 0, "failed": 5, "inputs": 6}
    assert _final_videos(out) == ["good.mp4"] and is_deidentified(out / "good.mp4")  # the good one is done
    rows = _rows(out)
    assert [r["input"] for r in rows] == [p.name for p in bad] and [r["index"] for r in rows] == [1, 2, 3, 4, 5]
    for path in bad:  # one line per failed input, naming it and saying what to do
        assert_one_line_error(result, "[FAILED]", str(path), code=exit_codes.SOME_FAILED)
    assert_one_line_error(result, "5 of 6 inputs failed", str(out / "failures.jsonl"), code=exit_codes.SOME_FAILED)

    # Rerun without the bad inputs: the good one is skipped, failures.jsonl is emptied, nothing points to it.
    result = _run(capsys, media["good.mp4"], "--output", out)
    assert result.code == exit_codes.OK
    assert _summary(result) == {"processed": 1, "new": 0, "skipped": 1, "failed": 0, "inputs": 1}
    assert _rows(out) == [] and "failures.jsonl" not in result.out + result.err


def test_clean_batch_with_keep_failed_quarantines_nothing_and_never_mentions_failures(media, tmp_path, capsys):
    out = tmp_path / "out"
    result = _run(capsys, media["good.mp4"], "--output", out, "--keep-failed")
    assert result.code == exit_codes.OK, result.err
    assert _summary(result) == {"processed": 1, "new": 1, "skipped": 0, "failed": 0, "inputs": 1}
    assert "failures.jsonl" not in result.out + result.err and "FAILED" not in result.err
    assert _rows(out) == [] and _final_videos(out) == ["good.mp4"]
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl", "good.mp4", "good.mp4.deid.json", "quarantine"]
    assert not any((out / "quarantine").iterdir())
    sidecar = load_sidecar(out / "good.mp4")
    assert sidecar["deidentified"] is True and sidecar["audio"]["method"] == "mcadams"


def test_interrupt_leaves_no_partial_video_and_exits_130(media, tmp_path, capsys, monkeypatch):
    real = cli.CenterFace

    class InterruptedDetector:  # Ctrl-C arrives while the third frame is being processed
        def __init__(self, *args, **kwargs):
            self._inner, self._calls = real(*args, **kwargs), 0
            self.backend, self.providers = self._inner.backend, self._inner.providers

        def detect(self, *args, **kwargs):
            self._calls += 1
            if self._calls == 3:
                raise KeyboardInterrupt
            return self._inner.detect(*args, **kwargs)

    monkeypatch.setattr(cli, "CenterFace", InterruptedDetector)
    out = tmp_path / "out"
    result = _run(capsys, media["good.mp4"], "--output", out)
    assert_one_line_error(result, "interrupted", "re-run", code=exit_codes.INTERRUPTED)
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl"]  # no partial or final video left
