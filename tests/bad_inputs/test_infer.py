"""Bad inputs of scripts/infer.py (deemo_jax.eval.infer): each case checks the exit code and a one-line message
(what, where, how to fix); argument problems fail before the model is loaded; a video the de-identification rule
does not accept is never read as is, and a failed privacy audit refuses it with nothing kept; a --template other
than the run was trained with is refused naming both."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

import deemo_jax.deid
import deemo_jax.eval.infer as infer_module
import deemo_jax.train.runs
from deemo_jax.deid import require_deidentified
from deemo_jax.eval.infer import infer, main
from deemo_jax.exit_codes import SOME_FAILED, USAGE
from tests.eval.conftest import loaded_run, shards, tiny_run  # noqa: F401  (session fixtures of the tiny run)

from .helpers import assert_one_line_error, run_main
from .test_build_shards import sidecar
from .test_planted_faces import write_face_video

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


class Reached(Exception):
    """Raised by the clip_inputs spy: the test has seen which file the model would read."""


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer_bad") / "interview.mp4"
    write_face_video(path)
    return path


@pytest.fixture
def no_model(tmp_path, monkeypatch):
    """Run where no model exists: any error but the expected one would be 'run `make demo` first'."""
    monkeypatch.chdir(tmp_path)
    return ["--workdir", str(tmp_path / "no_run")]


@pytest.fixture
def with_model(monkeypatch, loaded_run):  # noqa: F811
    """main() gets the session's tiny loaded run instead of loading one from --workdir."""
    monkeypatch.setattr(infer_module, "load_run", lambda *a, **k: loaded_run)
    seen = []

    def spy(video, *args, **kwargs):  # records the file the model would read and whether the rule accepts it
        try:
            passed = require_deidentified(video)["audit"]["passed"]
        except Exception as e:  # any refusal is recorded, not raised
            passed = e
        seen.append((video, passed))
        raise Reached(video)

    monkeypatch.setattr(infer_module, "clip_inputs", spy)
    return seen


def test_mistyped_transcript_path_is_an_error_not_the_transcript(face_video, no_model, capsys):
    # The defect: a mistyped --transcript path was used silently as the transcription itself.
    result = run_main(main, [str(face_video), "--transcript", "notes/typo.txt", *no_model], capsys)
    line = assert_one_line_error(result, "--transcript", "notes/typo.txt", "--transcript-file", code=USAGE)
    assert "make demo" not in line  # refused before the model is looked for


def test_missing_transcript_file_names_it(face_video, no_model, tmp_path, capsys):
    missing = tmp_path / "words.txt"
    result = run_main(main, [str(face_video), "--transcript-file", str(missing), *no_model], capsys)
    assert_one_line_error(result, str(missing), "does not exist", code=USAGE)


def test_existing_file_given_as_the_words_is_refused(face_video, no_model, tmp_path, capsys):
    words = tmp_path / "words.txt"
    words.write_text("we played well\n", encoding="utf-8")
    result = run_main(main, [str(face_video), "--transcript", str(words), *no_model], capsys)
    assert_one_line_error(result, str(words), "is a file", f"--transcript-file {words}", code=USAGE)


def test_unwritable_keep_folder_fails_before_the_model(face_video, no_model, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file\n")
    result = run_main(main, [str(face_video), "--keep-deidentified", str(blocker / "deid"), *no_model], capsys)
    line = assert_one_line_error(result, "--keep-deidentified folder", str(blocker), "regular file", code=USAGE)
    assert "make demo" not in line


def test_another_template_than_the_run_was_trained_with_exits_2(face_video, tiny_run, capsys):  # noqa: F811
    result = run_main(main, [str(face_video), "--workdir", str(tiny_run["workdir"]), "--template", "llama2"], capsys)
    assert_one_line_error(result, "trained with prompt template 'vicuna'", "used with 'llama2'", code=USAGE)


def test_failed_audit_refuses_the_video_and_keeps_nothing(face_video, with_model, tmp_path, monkeypatch, capsys):
    weak = dataclasses.replace(deemo_jax.deid.DeidSettings(), mode="none", audio="drop")  # masks nothing
    monkeypatch.setattr(infer_module, "DeidSettings", lambda: weak)
    kept = tmp_path / "kept"
    result = run_main(main, [str(face_video), "--keep-deidentified", str(kept)], capsys)
    assert_one_line_error(result, str(face_video), "privacy audit", "nothing of it was used", code=SOME_FAILED)
    assert with_model == []  # the model never read a frame of it
    assert kept.is_dir() and not list(kept.iterdir())


def test_unreadable_video_says_why_and_what_to_do(with_model, tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_text("not a video\n")
    result = run_main(main, [str(video)], capsys)
    assert_one_line_error(result, "cannot read the video", "clip.mp4", code=SOME_FAILED)
    assert with_model == []


def test_video_with_a_stale_sidecar_is_deidentified_first_not_used_as_is(face_video, with_model, tmp_path):
    video = tmp_path / "clip.mp4"
    (tmp_path / "other.mp4").write_bytes(b"other bytes")
    shutil.copy(face_video, video)
    sidecar(video, sha_of=tmp_path / "other.mp4")  # a passing sidecar, written for other bytes
    with pytest.raises(Reached):
        infer(video, workdir="unused", run=infer_module.load_run())
    ((read, passed),) = with_model
    assert read != video and read.name == "clip.deid.mp4"
    assert passed is True  # what the model reads passes the one rule

