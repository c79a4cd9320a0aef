import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deemo_jax.deid import is_deidentified

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "deidentify.py"


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("deidentify_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _no_raw_media(text: str) -> bool:
    """Logs hold names, counts and scores only: no long runs of numbers (pixels, samples), no array dumps."""
    return "array(" not in text and not re.search(r"(\d+[.,]?\s*){40,}", text) and len(text) < 5000


def test_batch_records_failures_reconciles_counts_and_resumes(cli, face_video, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(face_video[0], inputs / "good.mp4")
    (inputs / "corrupt.mp4").write_bytes(b"\x00" * 1000)
    missing = tmp_path / "missing.mov"
    out = tmp_path / "out"
    args = [str(inputs), str(missing), "--output", str(out), "--threads", "1", "--carry-frames", "1"]

    assert cli(args) == 1  # exit status 1: some inputs failed, the others are done
    printed = capsys.readouterr()
    assert "1 processed (1 new, 0 already done) + 2 failed = 3 inputs" in printed.out
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {(f["input"], f["stage"]) for f in failures} == {
        ("corrupt.mp4", "probe"),
        ("missing.mov", "input"),
    }
    assert is_deidentified(out / "good.mp4")
    assert _no_raw_media(printed.out + printed.err)

    (inputs / "corrupt.mp4").unlink()
    assert cli(args[:1] + args[2:]) == 0  # rerun: the done video is skipped, nothing fails
    printed = capsys.readouterr()
    assert "[skip] good.mp4" in printed.out
    assert "1 processed (0 new, 1 already done) + 0 failed = 1 inputs" in printed.out
    assert (out / "failures.jsonl").read_text() == ""

    assert cli(args[:1] + args[2:] + ["--mode", "solid"]) == 0  # other settings: redone, not skipped
    assert "1 processed (1 new, 0 already done)" in capsys.readouterr().out


def test_audit_flags_the_raw_video_and_prints_frame_indices(cli, face_video, deid_output, capsys):
    assert cli(["--audit", str(face_video[0]), "--threads", "1"]) == 1
    out = capsys.readouterr().out
    assert "FACES FOUND in frames [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]" in out
    assert cli(["--audit", str(deid_output[0]), "--threads", "1"]) == 0
    assert "passed (12 frames" in capsys.readouterr().out


def test_invalid_arguments_exit_2(cli, face_video, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli([str(face_video[0]), "--output", str(tmp_path), "--random-alpha"])
    assert exit_info.value.code == 2 and "needs a seed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli([str(face_video[0])])
    assert exit_info.value.code == 2 and "--output DIR is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli([str(face_video[0]), "-o", str(tmp_path), "--scale", "640by360"])



def test_python_dash_m_runs_the_same_command(face_video, tmp_path):
    blocker = tmp_path / "results.txt"  # --output below a regular file: refused before any work, exit 2
    blocker.write_text("a file, not a folder\n")
    proc = subprocess.run(
        [sys.executable, "-m", "deemo_jax.deid", str(face_video[0]), "--output", str(blocker / "deid")],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"deidentify: error: output folder {blocker / 'deid'}: {blocker} is a regular file, not a folder; "
        "choose another path or move that file"
    ]
