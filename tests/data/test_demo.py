"""The demo corpus generator: plan, speech prosody, rendering, and a tiny end-to-end corpus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deemo_jax import exit_codes
from deemo_jax.data import demo
from deemo_jax.data.demo import cli as demo_cli
from deemo_jax.data.demo import interview, render

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("ffmpeg") is None,
    reason="needs espeak-ng and ffmpeg (scripts/setup_env.sh installs them)",
)

SENTIMENT_WORDS = re.compile(
    r"\b(prouder|proud|happy|amazing|fantastic|great|thrilled|brilliant|delighted|loved|dream|confident|"
    r"excited|enjoyed|believed|fearless|clicked|grateful|disappointed|hurts?|frustrat\w*|upset|painful|"
    r"disaster|angry|gutted|terrible|poor|sorry|empty|sloppy|wasted|mistakes|slip|wrong|struggled|tired|"
    r"fell apart|let (me|everyone) down|couldn't)\b",
    re.IGNORECASE,
)
TINY = demo.DemoConfig(num_clips=2, clips_per_interview=2, seed=3, records_per_shard=1, vocab_size=400)


@pytest.fixture(scope="module")
def plan200() -> list[demo.InterviewPlan]:
    return demo.plan_corpus(demo.DemoConfig())


def test_plan_is_deterministic_balanced_and_split_by_interview(plan200):
    assert demo.plan_corpus(demo.DemoConfig()) == plan200
    assert demo.plan_corpus(demo.DemoConfig(seed=1)) != plan200
    clips = [c for p in plan200 for c in p.clips]
    assert len(clips) == 200 and len(plan200) == 50
    assert Counter(c.label for c in clips) == {"positive": 100, "negative": 100}
    for p in plan200:  # balanced inside every interview: voice, backdrop and sport say nothing about the label
        assert Counter(c.label for c in p.clips) == {"positive": 2, "negative": 2}
    assert Counter(p.split for p in plan200) == {"train": 35, "val": 5, "test": 10}
    assert len({c.transcription for c in clips}) == 200
    assert len({p.speaker.voice for p in plan200}) >= 20


def test_neutral_texts_carry_no_sentiment_and_reasoning_states_the_label(plan200):
    clips = [c for p in plan200 for c in p.clips]
    neutral = [c for c in clips if c.neutral_text]
    assert 0.25 <= len(neutral) / len(clips) <= 0.35
    assert Counter(c.label for c in neutral)["positive"] == Counter(c.label for c in neutral)["negative"]
    assert not [c.transcription for c in neutral if SENTIMENT_WORDS.search(c.transcription)]
    emotional = [c for c in clips if not c.neutral_text]
    assert np.mean([SENTIMENT_WORDS.search(c.transcription) is not None for c in emotional]) > 0.95
    for c in clips:
        assert c.reasoning.endswith(f"Overall, the athlete's emotion is {c.label}.")
        assert c.key_phrase in c.reasoning and c.key_phrase in c.transcription
        for g in c.gestures:
            assert 0.0 <= g.start_frac < g.end_frac <= 1.0
    # Cues mostly agree with the label, but not always (no single signal is trivially perfect).
    agree = [demo.GESTURE_POLARITY[g.name] == c.label for c in clips for g in c.gestures]
    assert 0.6 < np.mean(agree) < 0.9


def _median_f0(wave: np.ndarray, sr: int) -> float:
    """Median F0 (Hz) of the loud 40 ms frames, from the autocorrelation peak between 60 and 400 Hz."""
    n = int(0.04 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(wave, n)[:: n // 2]
    frames = frames[np.sqrt((frames**2).mean(1)) > 0.3 * np.sqrt((wave**2).mean())]
    spec = np.fft.rfft((frames - frames.mean(1, keepdims=True)) * np.hanning(n), 2 * n)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :n]
    lo, hi = sr // 400, sr // 60
    return float(np.median(sr / (lo + ac[:, lo:hi].argmax(1))))


def test_speech_prosody_differs_by_label(plan200):
    # Same speaker (interview), both labels: positive speech is higher, faster and louder.
    for plan in plan200[:2]:
        measures = {}
        for clip in plan.clips:
            wave = demo.synthesize_speech(clip.transcription, plan.speaker.voice, clip.prosody, 16000)
            words = len(clip.transcription.split())
            rms = float(np.sqrt(np.mean(wave**2)))
            measures.setdefault(clip.label, []).append((_median_f0(wave, 16000), words / (wave.size / 16000), rms))
        pos, neg = np.mean(measures["positive"], axis=0), np.mean(measures["negative"], axis=0)
        assert pos[0] > 1.1 * neg[0], (plan.speaker.voice, pos, neg)  # F0 (Hz)
        assert pos[1] > 1.15 * neg[1], (plan.speaker.voice, pos, neg)  # words per second
        assert pos[2] > 1.3 * neg[2], (plan.speaker.voice, pos, neg)  # RMS level


def _skin_mask(frame_bgr: np.ndarray) -> np.ndarray:
    return np.all(np.abs(frame_bgr.astype(int) - (120, 160, 205)) <= 12, axis=-1)


def _frame(gesture: str) -> np.ndarray:
    background = render.backdrop(256, 192, (120, 60, 20))
    pose = demo.pose_at(1.0, [{"label": gesture, "start": 0.0, "end": 2.0}])
    return demo.render_frame(pose, background, (40, 40, 40), 0, "tennis")


def test_rendered_body_language_differs_by_label():
    cx, s = 128, 192 / 240
    spread, folded = _skin_mask(_frame("spreading arms")), _skin_mask(_frame("folding arms"))
    ys, xs = np.nonzero(spread)
    assert np.abs(xs - cx).max() > 90 * s  # hands far out to the sides
    ys, xs = np.nonzero(folded)
    assert np.abs(xs - cx).max() < 62 * s  # arms kept in front of the body
    fist = _skin_mask(_frame("raising a fist"))
    rest = _skin_mask(demo.render_frame(demo.pose_at(1.0, []), render.backdrop(256, 192, (120, 60, 20)),
                                        (40, 40, 40), 0, "tennis"))
    raised = (slice(0, int(95 * s)), slice(int(cx + 40 * s), int(cx + 80 * s)))  # beside and above the head
    assert fist[raised].sum() > 20 and rest[raised].sum() == 0
    # Head down and slumping move the face down; hands at the face cover part of it.
    for name in ("lowering the head", "slumping"):
        assert demo.pose_at(1.0, [{"label": name, "start": 0.0, "end": 2.0}])[1] > demo.REST_POSE[1] + 15
    for name in ("scratching the nose", "rubbing the eyes", "touching the ear"):
        pose = demo.pose_at(1.0, [{"label": name, "start": 0.0, "end": 2.0}])
        hand = pose[8:10]
        assert np.abs(hand - pose[0:2]).max() <= 30, name


@pytest.fixture(scope="module")
def tiny_render():
    plan = demo.plan_corpus(TINY)[0]
    return plan, demo.render_interview(plan, TINY)


def test_render_interview_is_deterministic_and_cues_lie_inside_clips(tiny_render):
    plan, (frames, audio, rows, failures) = tiny_render
    assert failures == [] and len(rows) == len(plan.clips) == 2
    assert frames.shape[1:] == (TINY.height, TINY.width, 3) and frames.dtype == np.uint8
    assert audio.size == frames.shape[0] * TINY.sample_rate // TINY.fps
    again = demo.render_interview(plan, TINY)
    np.testing.assert_array_equal(again[0], frames)
    np.testing.assert_array_equal(again[1], audio)
    assert again[2] == rows
    previous_end = 0.0
    for row in rows:
        assert row["start"] > previous_end and row["end"] - row["start"] > 1.0
        previous_end = row["end"]
        assert len(row["nfbl"]) == 2
        for cue in row["nfbl"]:
            assert row["start"] <= cue["start"] < cue["end"] <= row["end"]
    # Speech fills the clips, not the pauses between them.
    sr = TINY.sample_rate
    gap = audio[int(rows[0]["end"] * sr) + 800: int(rows[1]["start"] * sr) - 800]
    speech = audio[int(rows[0]["start"] * sr): int(rows[0]["end"] * sr)]
    assert np.sqrt(np.mean(gap**2)) < 0.1 * np.sqrt(np.mean(speech**2))


def test_one_failing_clip_does_not_stop_its_interview(monkeypatch, tmp_path):
    plan = demo.plan_corpus(TINY)[0]
    real = demo.synthesize_speech

    def flaky(text, *args, **kwargs):
        if text == plan.clips[0].transcription:
            raise demo.SpeechError("voice not found")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(interview, "synthesize_speech", flaky)
    _, _, rows, failures = demo.render_interview(plan, TINY)
    assert [r["id"] for r in rows] == [plan.clips[1].clip_id]
    assert failures == [{"id": plan.clips[0].clip_id, "reason": "speech synthesis: voice not found"}]

    def broken_deid(raw, deid, **kwargs):
        deid.write_bytes(b"partial")
        raise RuntimeError("audit failed")

    monkeypatch.setattr(interview, "synthesize_speech", real)
    monkeypatch.setattr(interview, "deidentify", broken_deid)
    result = demo.generate_interview(plan, TINY, tmp_path)
    assert result.rows == [] and len(result.failures) == 2
    assert all("RuntimeError: audit failed" in f["reason"] for f in result.failures)
    assert not list((tmp_path / "raw").iterdir())  # no raw face or voice left behind


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "corpus"
    report = demo.make_demo_corpus(out, TINY, workers=1, progress=False)
    return out, report


def test_tiny_corpus_end_to_end(tiny_corpus):
    from array_record.python.array_record_module import ArrayRecordReader

    from deemo_jax.data import schema
    from deemo_jax.data.tokenizer import load_tokenizer
    from deemo_jax.deid import load_sidecar

    out, report = tiny_corpus
    assert not report.skipped and report.generation_failures == []
    assert report.manifest_rows == 2 and report.shard_written == 2 and report.shard_failed == 0
    assert (out / demo.DONE_FILE).is_file() and not (out / "raw").exists()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert Counter(r["label"] for r in rows) == {"positive": 1, "negative": 1}
    videos = sorted({r["video"] for r in rows})
    assert videos == ["deid/interview_000.mp4"]
    for video in videos:
        sidecar = load_sidecar(out / video)
        assert sidecar["deidentified"] and sidecar["audit"]["passed"] and sidecar["audit"]["frames"] > 0
        assert sidecar["audio"]["method"] == "mcadams"
    by_id = {r["id"]: r for r in rows}
    decoded = 0
    for shard in sorted((out / "shards").glob("*.array_record")):
        reader = ArrayRecordReader(str(shard))
        for i in range(reader.num_records()):
            record = schema.decode(reader.read([i])[0])
            row = by_id[record["id"]]
            assert (record["label"], record["transcription"], record["split"]) == (
                row["label"], row["transcription"], row["split"])
            assert record["frames"].shape == (8, 224, 224, 3) and record["fbank"].shape == (8, 128, 204)
            duration = row["end"] - row["start"]
            assert [c["label"] for c in record["nfbl"]] == [c["label"] for c in row["nfbl"]]
            assert all(0.0 <= c["start"] < c["end"] <= duration + 1e-6 for c in record["nfbl"])
            decoded += 1
        reader.close()
    assert decoded == 2
    tokenizer = load_tokenizer(out / "tokenizer")
    text = "Overall, the athlete's emotion is positive.###"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) < len(text) / 2  # merges learnt from the corpus
    assert "| train |" in (out / "README.md").read_text()


def test_rerun_is_instant_and_settings_are_guarded(tiny_corpus, tmp_path):
    out, first = tiny_corpus
    t0 = time.perf_counter()
    again = demo.make_demo_corpus(out, TINY, workers=1, progress=False)
    assert again.skipped and time.perf_counter() - t0 < 2.0
    assert (again.manifest_rows, again.shard_written, again.counts) == (2, 2, first.counts)
    with pytest.raises(demo.DemoDataError, match="seed.*--force"):
        demo.make_demo_corpus(out, demo.DemoConfig(**{**TINY.__dict__, "seed": 4}), workers=1, progress=False)
    # An interrupted run (no DONE) resumes: finished interviews are reused, the rest is rebuilt.
    video = out / "deid" / "interview_000.mp4"
    stamp = video.stat().st_mtime_ns
    (out / demo.DONE_FILE).unlink()
    shutil.rmtree(out / "shards")
    resumed = demo.make_demo_corpus(out, TINY, workers=1, progress=False)
    assert not resumed.skipped and resumed.shard_written == 2 and video.stat().st_mtime_ns == stamp
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(demo.DemoDataError, match="holds no demo corpus"):
        demo.make_demo_corpus(foreign, TINY, workers=1, force=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_config_and_cli_validation(tmp_path, capsys, monkeypatch):
    import importlib.util

    with pytest.raises(ValueError, match="neutral_fraction"):
        demo.DemoConfig(neutral_fraction=1.5).validate()
    with pytest.raises(ValueError, match="split_fractions"):
        demo.DemoConfig(split_fractions=(0.5, 0.5, 0.5)).validate()
    spec = importlib.util.spec_from_file_location("make_demo_data", Path(__file__).parents[2] / "scripts" /
                                                  "make_demo_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main is demo_cli.main  # the script is a shim over the package's command
    (tmp_path / "x.txt").write_text("x")
    assert demo_cli.main(["--output", str(tmp_path), "--quiet"]) == exit_codes.USAGE == 2
    assert "make_demo_data: error:" in (err := capsys.readouterr().err) and "holds no demo corpus" in err
    with pytest.raises(SystemExit):
        demo_cli.main(["--output", str(tmp_path / "new"), "--num-clips", "0"])

    def nothing_made(*args, **kwargs):
        raise demo.NoDemoClipError("no demo clip could be made; first reasons: ['x']")

    monkeypatch.setattr(demo_cli, "make_demo_corpus", nothing_made)
    assert demo_cli.main(["--output", str(tmp_path / "new"), "--quiet"]) == exit_codes.SOME_FAILED == 1
    assert "no demo clip could be made" in capsys.readouterr().err


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "deemo_jax.data.demo", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--num-clips" in proc.stdout and "make_demo_data.py" in proc.stdout
