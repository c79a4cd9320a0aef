"""scripts/infer.py (deemo_jax.eval.infer): a short generated video with a real face through de-identification,
frame/audio sampling and the tiny trained run to an answer; clear errors for a missing model."""

from __future__ import annotations

import hashlib
import json

import pytest

from deemo_jax.deid import load_sidecar
from deemo_jax.eval.infer import infer, main, read_transcript, split_answer
from tests.deid.synthetic import write_face_video

NEW = 6
GENERATION = {"length_bucket": 256}  # as test_evaluate.py: the compiled programs are shared


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer") / "interview.mp4"
    write_face_video(path, n_frames=16, width=320, height=240, fps=8, audio=True)
    return path


def test_infer_deidentifies_then_answers(face_video, loaded_run, tmp_path):
    raw_sha = hashlib.sha256(face_video.read_bytes()).hexdigest()
    kept = tmp_path / "deid"
    result = infer(face_video, workdir="unused", run=loaded_run, transcript="we played well today",
                   max_new_tokens=NEW, generation=GENERATION, keep_deidentified=kept)
    assert result["checkpoint"]["step"] == 7 and result["labels"] == ["positive", "negative"]
    assert result["template"] == "vicuna"
    assert result["deidentification"]["audit_passed"] is True
    assert result["emotion"] in (None, "positive", "negative") and result["answer"]
    assert result["finish_reason"] in ("length", "eos", "stop_sequence")
    json.dumps(result)  # the --json output
    # The model read the de-identified copy, whose sidecar vouches for it; the raw video is untouched.
    deid = kept / "interview.deid.mp4"
    sidecar = load_sidecar(deid)
    assert sidecar["deidentified"] and sidecar["audit"]["passed"]
    assert hashlib.sha256(face_video.read_bytes()).hexdigest() == raw_sha
    # A video with a verified sidecar is used as is: same clip, same answer.
    again = infer(deid, workdir="unused", run=loaded_run, transcript="we played well today", max_new_tokens=NEW,
                  generation=GENERATION)
    assert any("used as is" in note for note in again["notes"]) and again["deidentification"] is None
    assert again["answer"] == result["answer"]


def test_infer_command_prints_emotion_and_reasoning(face_video, tiny_run, tmp_path, capsys):
    from deemo_jax.deid import DeidSettings, deidentify_video

    deid = tmp_path / "clip.mp4"
    deidentify_video(face_video, deid, DeidSettings())
    assert main([str(deid), "--workdir", str(tiny_run["workdir"]), "--transcript", "we played well today",
                 "--max-new-tokens", str(NEW)]) == 0
    printed = capsys.readouterr().out
    assert "\nemotion: " in printed and "\nreasoning: " in printed


def test_missing_model_or_video_fail_with_a_fix(face_video, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/demo here
    assert main([str(face_video)]) == 2
    assert "make demo" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(face_video), "--start", "2", "--end", "1"]) == 2


def test_transcript_and_answer_helpers(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  we lost today \n", encoding="utf-8")
    assert read_transcript(file=str(path)) == "we lost today"
    assert read_transcript("just words") == "just words" and read_transcript(None) == ""
    assert read_transcript("yes") == "yes" and read_transcript("and/or so it goes") == "and/or so it goes"
    for mistyped in (str(tmp_path / "typo.txt"), "notes/words", "words.txt"):  # never the transcription
        with pytest.raises(ValueError, match="--transcript-file"):
            read_transcript(mistyped)
    with pytest.raises(ValueError, match="is a file"):  # an existing file given as the words
        read_transcript(str(path))
    with pytest.raises(ValueError, match="does not exist"):
        read_transcript(file=str(tmp_path / "typo.txt"))
    assert split_answer("Negative. He looks down.", "negative", "both") == "He looks down."
    assert split_answer("He looks down, so negative.", "negative", "reasoning") == "He looks down, so negative."
    assert split_answer("negative", "negative", "recognition") == ""
