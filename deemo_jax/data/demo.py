"""The bundled demo corpus: synthetic post-game interviews made on the machine, with no download.

What it imitates (paper §3): athletes answering questions at a press-conference table after a match, clips
labelled positive or negative, non-facial body language (NFBL) annotated with start/end times, and a reasoning
text per clip that cites transcription, acoustic, visual and NFBL cues and ends by stating the emotion.

How each interview is made (:func:`generate_interview`, one process per interview):

- text: athlete-interview sentences from templates and a per-sport vocabulary (:func:`plan_corpus`); a
  fraction of the clips (``neutral_fraction``) gets a sentiment-neutral transcription, so that in those clips
  only the voice and the body language carry the label;
- audio: ``espeak-ng`` speaks each sentence with emotion-dependent prosody (positive: higher pitch, faster,
  louder, wide pitch range; negative: lower, slower, quieter, flat), each interview with its own voice;
- video: OpenCV frames of a seated figure at a table with a microphone and a sponsor backdrop, whose gestures
  follow a per-clip schedule (positive: spreading arms, raising a fist, nodding, sitting upright; negative:
  folding arms, lowering the head, slumping, scratching the nose, touching the ear, rubbing the eyes; either:
  illustrative hand gestures, adjusting the microphone). The head is the face of ``skimage.data.astronaut()``
  (public-domain NASA photo shipped with scikit-image), so the real face detector has a real face to find;
- the clip's cues are not perfectly consistent (``gesture_consistency``, prosody jitter around a per-speaker
  base), so no single signal is trivially perfect;
- video and audio are muxed by ffmpeg into ``raw/``, de-identified with
  :func:`deemo_jax.deid.deidentify_video` (face blur + McAdams voice + audit) into ``deid/``, and the raw
  file is deleted (``keep_raw=False``).

:func:`make_demo_corpus` then writes ``manifest.jsonl`` (splits by interview), builds the shards with the real
builder, trains a SentencePiece tokenizer on all text, and writes ``README.md`` and a ``DONE`` marker.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

LABELS = ("positive", "negative")
CORPUS_VERSION = 1

# --------------------------------------------------------------------------------------------------
# Configuration and plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """What to generate. The defaults are the bundled corpus (about 200 clips in 50 interviews)."""

    num_clips: int = 200
    clips_per_interview: int = 4
    seed: int = 0
    width: int = 256
    height: int = 192
    fps: int = 8
    sample_rate: int = 16000
    neutral_fraction: float = 0.3
    gesture_consistency: float = 0.75  # probability that a gesture slot shows a cue of the clip's own label
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test (by interview)
    records_per_shard: int = 64
    vocab_size: int = 1000

    def validate(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"DemoConfig.{name} = {getattr(self, name)!r}: {want}")

        for name in ("num_clips", "clips_per_interview", "fps", "records_per_shard"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if self.width < 160 or self.height < 120 or self.width % 2 or self.height % 2:
            raise bad("width", f"frame size {self.width}x{self.height} must be even and at least 160x120")
        if self.sample_rate % self.fps:
            raise bad("sample_rate", f"must be a multiple of fps ({self.fps}) so audio and frames line up")
        if not 0.0 <= self.neutral_fraction <= 1.0:
            raise bad("neutral_fraction", "must be in [0, 1]")
        if not 0.0 <= self.gesture_consistency <= 1.0:
            raise bad("gesture_consistency", "must be in [0, 1]")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
            raise bad("split_fractions", "must be three non-negative numbers (train, val, test) summing to 1")


@dataclass(frozen=True)
class Prosody:
    """espeak-ng settings: pitch 0-99 (-p), speed in words/minute (-s), amplitude 0-200 (-a), SSML range."""

    pitch: int
    speed: int
    amplitude: int
    pitch_range: str


@dataclass(frozen=True)
class GesturePlan:
    name: str
    start_frac: float  # fraction of the clip's speech duration
    end_frac: float


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str
    label: str
    neutral_text: bool
    transcription: str
    key_phrase: str
    prosody: Prosody
    gestures: tuple[GesturePlan, ...]
    reasoning: str


@dataclass(frozen=True)
class InterviewPlan:
    interview_id: str
    index: int
    sport: str
    speaker: Speaker
    split: str
    backdrop_bgr: tuple[int, int, int]
    shirt_bgr: tuple[int, int, int]
    x_offset: int
    clips: tuple[ClipPlan, ...]


# --------------------------------------------------------------------------------------------------
# Text bank
# --------------------------------------------------------------------------------------------------

SPORTS: dict[str, dict[str, Any]] = {
    "tennis": dict(
        period="set",
        ords=("first", "second", "third", "fourth", "fifth"),
        event="match",
        skills=("serve", "forehand", "backhand", "return", "footwork"),
        places=("the tiebreak", "the long rallies", "the big points", "the return games"),
        teams=("my team", "my coach", "everyone in my box"),
        venue="court",
        equipment="racket",
    ),
    "football": dict(
        period="half",
        ords=("first", "second"),
        event="match",
        skills=("passing", "pressing", "finishing", "defending", "crossing"),
        places=("the box", "set pieces", "midfield", "the last ten minutes"),
        teams=("the lads", "the squad", "the whole team"),
        venue="pitch",
        equipment="boots",
    ),
    "basketball": dict(
        period="quarter",
        ords=("first", "second", "third", "fourth"),
        event="game",
        skills=("shooting", "rebounding", "defense", "ball movement", "free throws"),
        places=("the paint", "transition", "the pick and roll", "the last two minutes"),
        teams=("the guys", "the second unit", "the whole team"),
        venue="court",
        equipment="shoes",
    ),
    "boxing": dict(
        period="round",
        ords=("first", "second", "third", "fifth", "eighth", "tenth"),
        event="fight",
        skills=("jab", "footwork", "right hand", "head movement", "body work"),
        places=("the exchanges", "the late rounds", "the clinches", "the middle of the ring"),
        teams=("my corner", "my trainer", "my whole camp"),
        venue="arena",
        equipment="gloves",
    ),
    "american football": dict(
        period="quarter",
        ords=("first", "second", "third", "fourth"),
        event="game",
        skills=("blocking", "run game", "passing game", "tackling", "route running"),
        places=("the red zone", "third downs", "the two-minute drill", "the trenches"),
        teams=("the offense", "the defense", "the guys"),
        venue="stadium",
        equipment="helmet",
    ),
    "UFC": dict(
        period="round",
        ords=("first", "second", "third", "fourth", "fifth"),
        event="fight",
        skills=("wrestling", "striking", "takedown defense", "cardio", "ground game"),
        places=("the clinch", "the scrambles", "the exchanges", "the last round"),
        teams=("my coaches", "my team", "my training partners"),
        venue="arena",
        equipment="gloves",
    ),
}

# Square brackets mark the key phrase that the reasoning text quotes.
POSITIVE_TEMPLATES = (
    "We played with so much heart tonight and [I'm proud of {team}].",
    "[I felt great out there] and my {skill} was working from the {ord} {period}.",
    "[This is an amazing feeling], the crowd was fantastic and we fed off that energy.",
    "[I'm really happy] with how we handled {place}, everyone stepped up when it mattered.",
    "Honestly [it's a dream come true] to win here and I'm so grateful to {team}.",
    "We stayed calm in the {ord} {period} and [I loved the way {team} kept fighting].",
    "[I was confident the whole way] and I'm excited for the next {event}.",
    "What a night, [I enjoyed every minute] and my {skill} felt better than ever.",
    "[I'm thrilled with this win], we worked so hard for it and it paid off.",
    "[It was a brilliant performance] from {team} and I couldn't be prouder.",
    "My {skill} was sharp today and [I'm delighted] with the way I finished the {ord} {period}.",
    "[We believed in ourselves] in {place} and that made all the difference.",
    "[I'm so happy for the fans], they deserve nights like this.",
    "[Everything clicked today], my {skill} was there whenever I needed it.",
    "[It feels fantastic] to win like this in front of our own fans.",
    "We were fearless in {place} and [I'm proud of every single one of us].",
)
NEGATIVE_TEMPLATES = (
    "[I made too many mistakes out there] and it hurts to lose like this.",
    "My {skill} let me down in the {ord} {period} and [I'm really disappointed].",
    "We were sloppy in {place} and [it's frustrating to throw this away].",
    "[I'm tired and upset], nothing worked for {team} tonight.",
    "[It's a painful loss] and I feel like I let everyone down.",
    "I couldn't find my rhythm and [the {ord} {period} was a disaster] for us.",
    "[I'm angry with myself], we had the chance and we wasted it.",
    "[This one really hurts], I struggled with my {skill} all night.",
    "We didn't deserve anything today, [it was a poor performance] from {team}.",
    "[I'm gutted], my {bodypart} bothered me and I just couldn't move.",
    "[I don't know what went wrong] in {place}, it was just a terrible day.",
    "[I'm sorry for the fans], they deserved much better than this.",
    "My {skill} fell apart under pressure and [that is hard to accept].",
    "[We let it slip] in the {ord} {period} and now it's a long flight home.",
    "[I feel empty right now], I gave everything and it wasn't enough.",
    "[Nothing went our way] in {place} and I'm frustrated with myself.",
)
NEUTRAL_TEMPLATES = (
    "The {ord} {period} started at {clock} and we adjusted to the {condition}.",
    "We arrived on {day} and practised twice on this {venue}.",
    "The {event} was moved to the main {venue} because of the {condition}.",
    "My coach and I talked about the schedule for the next {num} days.",
    "We will review the video on {day} and then travel to the next city.",
    "The {skill} is something we work on every morning in practice.",
    "I changed my {equipment} before the {ord} {period} as usual.",
    "The next {event} is on {day} at {clock}, so we will rest tomorrow.",
    "The {condition} changed a little after the {ord} {period}.",
    "We use the same warm-up routine before every {event}.",
    "I spoke with the physio after the {ord} {period} about the usual routine.",
    "We flew in on {day} and the {venue} was ready at {clock}.",
)
_FILLERS = dict(
    clock=("six o'clock", "half past seven", "eight o'clock", "noon", "two o'clock", "nine o'clock"),
    condition=("wind", "rain", "heat", "lights", "humidity", "cold"),
    day=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    num=("two", "three", "four", "five"),
    bodypart=("knee", "shoulder", "ankle", "back", "wrist"),
)

# --------------------------------------------------------------------------------------------------
# Gestures (NFBL cues) and their wording in the reasoning text
# --------------------------------------------------------------------------------------------------

POSITIVE_GESTURES = ("spreading arms", "raising a fist", "nodding", "sitting upright")
NEGATIVE_GESTURES = (
    "folding arms",
    "lowering the head",
    "slumping",
    "scratching the nose",
    "touching the ear",
    "rubbing the eyes",
)
NEUTRAL_GESTURES = ("illustrative hand gestures", "adjusting the microphone")
GESTURE_MEANING = {
    "spreading arms": "open, expansive arm movements that signal confidence",
    "raising a fist": "a raised fist, a gesture of triumph",
    "nodding": "repeated nodding, which conveys agreement and satisfaction",
    "sitting upright": "an upright, lifted posture that suggests pride and energy",
    "folding arms": "folded arms, a self-protective posture often linked to defensiveness or discomfort",
    "lowering the head": "a lowered head, which suggests dejection",
    "slumping": "a slumped posture that conveys fatigue and low spirits",
    "scratching the nose": "a hand scratching the nose, a self-manipulation that often accompanies stress or unease",
    "touching the ear": "a hand touching the ear, a self-manipulation associated with anxiety",
    "rubbing the eyes": "hands rubbing the eyes, a self-protective gesture that can reflect tiredness or distress",
    "illustrative hand gestures": "illustrative hand gestures that accompany the explanation",
    "adjusting the microphone": "an adjustment of the microphone, a manipulation of an object",
}
_GESTURE_POLARITY = {
    **{g: "positive" for g in POSITIVE_GESTURES},
    **{g: "negative" for g in NEGATIVE_GESTURES},
    **{g: None for g in NEUTRAL_GESTURES},
}

_VOICE_LANGS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
_VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
_BACKDROPS = ((120, 60, 20), (40, 40, 130), (30, 90, 30), (90, 90, 90), (110, 40, 90), (20, 70, 120))
_SHIRTS = ((200, 200, 200), (40, 40, 40), (50, 50, 170), (160, 90, 30), (40, 140, 40), (30, 140, 200))


def _fill(template: str, sport: str, rng: np.random.Generator) -> tuple[str, str]:
    """Fill a template; return (sentence, key phrase)."""
    vocab = SPORTS[sport]
    values = {
        "period": vocab["period"],
        "event": vocab["event"],
        "venue": vocab["venue"],
        "equipment": vocab["equipment"],
        "ord": vocab["ords"][rng.integers(len(vocab["ords"]))],
        "skill": vocab["skills"][rng.integers(len(vocab["skills"]))],
        "place": vocab["places"][rng.integers(len(vocab["places"]))],
        "team": vocab["teams"][rng.integers(len(vocab["teams"]))],
        **{k: v[rng.integers(len(v))] for k, v in _FILLERS.items()},
    }
    text = template.format(**values)
    if "[" in text:
        key = text[text.index("[") + 1 : text.index("]")]
        text = text.replace("[", "").replace("]", "")
    else:
        key = text.rstrip(".")
    return text, key


@dataclass(frozen=True)
class Speaker:
    """An interviewee's voice: espeak-ng voice name and the prosody that their neutral speech would have."""

    voice: str
    pitch: int
    speed: int
    amplitude: int


def _prosody(label: str, speaker: Speaker, rng: np.random.Generator) -> Prosody:
    """Emotion shifts prosody away from the speaker's base; the jitter makes the classes overlap a little."""
    sign = 1 if label == "positive" else -1
    pitch = speaker.pitch + (12 if sign > 0 else -8) + rng.integers(-8, 9)
    speed = speaker.speed + (22 if sign > 0 else -18) + rng.integers(-15, 16)
    amplitude = speaker.amplitude * (1.2 if sign > 0 else 0.8) + rng.integers(-15, 16)
    ranges = ("medium", "high", "x-high") if sign > 0 else ("x-low", "low", "medium")
    return Prosody(
        pitch=int(np.clip(pitch, 0, 99)),
        speed=int(speed),
        amplitude=int(np.clip(amplitude, 20, 200)),
        pitch_range=ranges[rng.choice(3, p=(0.2, 0.4, 0.4))],
    )


def _acoustic_description(prosody: Prosody, speaker: Speaker) -> str:
    """What the audio actually does, relative to the speaker's base (so an off-label cue is described as is)."""
    dp, ds = prosody.pitch - speaker.pitch, prosody.speed - speaker.speed
    da = prosody.amplitude / speaker.amplitude
    pitch = "high-pitched" if dp >= 4 else "low-pitched" if dp <= -4 else "at a moderate pitch"
    speed = "fast" if ds >= 10 else "slow" if ds <= -10 else "at an even pace"
    loud = "loud" if da >= 1.1 else "quiet" if da <= 0.9 else "moderately loud"
    variation = {
        "x-high": "lively variations in pitch", "high": "lively variations in pitch",
        "medium": "some variation in pitch", "low": "a flat, monotone delivery", "x-low": "a flat, monotone delivery",
    }[prosody.pitch_range]
    score = (dp >= 4) - (dp <= -4) + (ds >= 10) - (ds <= -10) + (da >= 1.1) - (da <= 0.9)
    tone = {True: " The delivery sounds energetic and upbeat.", False: " The delivery sounds subdued."}.get(
        score >= 2 if abs(score) >= 2 else None, ""
    )
    return f"In the audio, the voice is {pitch}, {speed} and {loud}, with {variation}.{tone}"


def _gestures(label: str, consistency: float, rng: np.random.Generator) -> tuple[GesturePlan, ...]:
    """Two gesture slots per clip: one in each half of the clip."""
    own = POSITIVE_GESTURES if label == "positive" else NEGATIVE_GESTURES
    other = NEGATIVE_GESTURES if label == "positive" else POSITIVE_GESTURES
    names: list[str] = []
    for _ in range(2):
        u = rng.random()
        if u < consistency:
            pool = own
        elif u < consistency + (1 - consistency) / 2:
            pool = NEUTRAL_GESTURES
        else:
            pool = other
        choices = [g for g in pool if g not in names] or list(pool)
        names.append(choices[rng.integers(len(choices))])
    slots = ((0.04, 0.46), (0.54, 0.96))
    plans = []
    for name, (lo, hi) in zip(names, slots, strict=True):
        start = lo + rng.uniform(0.0, 0.08)
        end = hi - rng.uniform(0.0, 0.08)
        plans.append(GesturePlan(name, round(start, 3), round(end, 3)))
    return tuple(plans)


def _reasoning(
    label: str,
    sport: str,
    acoustic: str,
    transcription_key: str,
    neutral_text: bool,
    gestures: Sequence[str],
    rng: np.random.Generator,
) -> str:
    event = SPORTS[sport]["event"]
    parts = [
        f"The athlete sits at a press-conference table with a microphone in front of a sponsor backdrop "
        f"after a {sport} {event}."
    ]
    if neutral_text:
        parts.append(
            f'The transcription itself is factual ("{transcription_key}") and carries little emotion, so the '
            "tone of voice and the body language are the main cues."
        )
    else:
        meaning = (
            ("pride and satisfaction", "joy and confidence", "gratitude and happiness")
            if label == "positive"
            else ("disappointment and frustration", "regret and self-blame", "sadness and frustration")
        )[rng.integers(3)]
        parts.append(f'The transcription expresses {meaning}: the athlete says "{transcription_key}".')
    parts.append(acoustic)
    consistent = [g for g in gestures if _GESTURE_POLARITY[g] == label]
    neutral = [g for g in gestures if _GESTURE_POLARITY[g] is None]
    contrary = [g for g in gestures if _GESTURE_POLARITY[g] not in (label, None)]
    described = [GESTURE_MEANING[g] for g in consistent + neutral]
    if described:
        parts.append(f"In terms of non-facial body language, the athlete shows {described[0]}.")
        parts += [f"The athlete also shows {d}." for d in described[1:]]
    if contrary:
        verb = "point" if len(contrary) > 1 else "points"
        parts.append(
            f"Only {' and '.join(contrary)} briefly {verb} the other way, which the other cues outweigh."
        )
    parts.append(f"Overall, the athlete's emotion is {label}.")
    return " ".join(parts)


def _split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    n_train = n - n_val - n_test
    if n_train < 1 and n >= 1 and fractions[0] > 0:  # tiny corpora: training data comes first
        n_train, n_test = 1, max(0, n_test - 1)
        n_val = n - n_train - n_test
    return n_train, n_val, n_test


def plan_corpus(config: DemoConfig) -> list[InterviewPlan]:
    """The deterministic plan of the corpus: interviews, their clips, texts, prosody and gesture schedules.

    Labels are balanced within every interview (so speaker, backdrop or sport say nothing about the label),
    the neutral-text clips are spread evenly over both labels, and every transcription is distinct.
    """
    config.validate()
    rng = np.random.default_rng([config.seed, 20250604])
    per = config.clips_per_interview
    n_interviews = -(-config.num_clips // per)
    sizes = [per] * (config.num_clips // per) + ([config.num_clips % per] if config.num_clips % per else [])

    labels: list[list[str]] = []
    offset = 0
    for size in sizes:
        # Alternate labels globally so an odd-sized interview does not always favour one label.
        clip_labels = [LABELS[(offset + j) % 2] for j in range(size)]
        rng.shuffle(clip_labels)
        labels.append(clip_labels)
        offset += size
    flat = [(i, j) for i, size in enumerate(sizes) for j in range(size)]
    neutral: set[tuple[int, int]] = set()
    for label in LABELS:
        members = [ij for ij in flat if labels[ij[0]][ij[1]] == label]
        count = round(len(members) * config.neutral_fraction)
        for k in rng.permutation(len(members))[:count]:
            neutral.add(members[int(k)])

    order = rng.permutation(n_interviews)
    n_train, n_val, _ = _split_counts(n_interviews, config.split_fractions)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[int(i)] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"

    sports = list(SPORTS)
    seen: set[str] = set()
    interviews = []
    for i, size in enumerate(sizes):
        sport = sports[i % len(sports)]
        speaker = Speaker(
            voice=f"{_VOICE_LANGS[rng.integers(len(_VOICE_LANGS))]}+{_VOICE_VARIANTS[i % len(_VOICE_VARIANTS)]}",
            pitch=int(rng.integers(30, 66)),
            speed=int(rng.integers(145, 186)),
            amplitude=int(rng.integers(75, 126)),
        )
        interview_id = f"interview_{i:03d}"
        clips = []
        for j in range(size):
            label = labels[i][j]
            is_neutral = (i, j) in neutral
            templates = (
                NEUTRAL_TEMPLATES
                if is_neutral
                else (POSITIVE_TEMPLATES if label == "positive" else NEGATIVE_TEMPLATES)
            )
            for _ in range(1000):
                text, key = _fill(templates[rng.integers(len(templates))], sport, rng)
                if text not in seen:
                    break
            else:
                raise RuntimeError("demo text bank exhausted: too many clips for the templates")
            seen.add(text)
            gestures = _gestures(label, config.gesture_consistency, rng)
            prosody = _prosody(label, speaker, rng)
            acoustic = _acoustic_description(prosody, speaker)
            clips.append(
                ClipPlan(
                    clip_id=f"{interview_id}_clip{j}",
                    label=label,
                    neutral_text=is_neutral,
                    transcription=text,
                    key_phrase=key,
                    prosody=prosody,
                    gestures=gestures,
                    reasoning=_reasoning(label, sport, acoustic, key, is_neutral, [g.name for g in gestures], rng),
                )
            )
        interviews.append(
            InterviewPlan(
                interview_id=interview_id,
                index=i,
                sport=sport,
                speaker=speaker,
                split=split_of[i],
                backdrop_bgr=_BACKDROPS[rng.integers(len(_BACKDROPS))],
                shirt_bgr=_SHIRTS[rng.integers(len(_SHIRTS))],
                x_offset=int(rng.integers(-20, 21)),
                clips=tuple(clips),
            )
        )
    return interviews


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------


class SpeechError(RuntimeError):
    """espeak-ng is missing or failed on one sentence."""


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechError(
            "espeak-ng not found on PATH; install it with `apt-get install -y espeak-ng` "
            "(scripts/setup_env.sh does this)"
        )
    return path


def synthesize_speech(text: str, voice: str, prosody: Prosody, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 mono at ``sample_rate``, leading/trailing silence trimmed."""
    import soundfile as sf
    from scipy.signal import resample_poly

    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    ssml = f'<speak><prosody range="{prosody.pitch_range}">{escaped}</prosody></speak>'
    cmd = [
        require_espeak(), "-m", "-v", voice, "-p", str(prosody.pitch), "-s", str(prosody.speed),
        "-a", str(prosody.amplitude), "--stdout", ssml,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as e:
        raise SpeechError(f"espeak-ng timed out on {text[:40]!r}") from e
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise SpeechError(f"espeak-ng failed for voice {voice!r}: {reason}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wave.ndim > 1:
        wave = wave[:, 0]
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        wave = resample_poly(wave, sample_rate // g, sr // g).astype(np.float32)
    voiced = np.flatnonzero(np.abs(wave) > 0.01 * max(float(np.abs(wave).max()), 1e-6))
    if voiced.size == 0:
        raise SpeechError(f"espeak-ng produced silence for {text[:40]!r}")
    return np.ascontiguousarray(wave[voiced[0] : voiced[-1] + 1])


# --------------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------------

# Pose vector (coordinates of the 320x240 design canvas; x relative to the figure's centre line):
# head x, head y, left elbow x, y, left hand x, y, right elbow x, y, right hand x, y, shoulder dy.
# "left" is the image's left.
_HX, _HY, _LEX, _LEY, _LHX, _LHY, _REX, _REY, _RHX, _RHY, _SDY = range(11)
REST_POSE = np.array([0, 78, -50, 158, -28, 176, 50, 158, 28, 176, 0], np.float32)
_HEAD_HALF = (22, 30)  # half width, half height of the head on the design canvas
_TABLE_Y = 172
_MIC = (40, 138)  # microphone head (x relative to centre, y)
_RAMP_S = 0.3


def _pose_target(name: str, tau: float) -> np.ndarray:
    """Target pose of a gesture ``tau`` seconds after it started (oscillating gestures move with tau)."""
    p = REST_POSE.copy()
    wave = math.sin(2 * math.pi * tau)
    if name == "spreading arms":
        p[_LEX : _LHY + 1] = (-74, 132, -102, 104 + 4 * wave)
        p[_REX : _RHY + 1] = (74, 132, 102, 104 + 4 * wave)
    elif name == "raising a fist":
        p[_REX : _RHY + 1] = (62, 104, 64, 58 + 5 * math.sin(2 * math.pi * 1.5 * tau))
    elif name == "nodding":
        p[_HY] += 7 * math.sin(2 * math.pi * 1.6 * tau)
    elif name == "sitting upright":
        p[_SDY], p[_HY] = -9, p[_HY] - 10
        p[[_LHY, _RHY]] -= 14
        p[[_LEY, _REY]] -= 8
    elif name == "folding arms":
        p[_LEX : _LHY + 1] = (-50, 150, 24, 140)
        p[_REX : _RHY + 1] = (50, 154, -24, 146)
    elif name == "lowering the head":
        p[_HY], p[_SDY] = p[_HY] + 20, 4
    elif name == "slumping":
        p[_SDY], p[_HX], p[_HY] = 12, 5, p[_HY] + 22
        p[_LEX : _LHY + 1] = (-46, 172, -32, 190)
        p[_REX : _RHY + 1] = (46, 172, 32, 190)
    elif name == "scratching the nose":
        p[_REX : _RHY + 1] = (44, 140, 2 + 3 * math.sin(2 * math.pi * 3 * tau), p[_HY] + 8)
    elif name == "touching the ear":
        p[_REX : _RHY + 1] = (54, 132, _HEAD_HALF[0] + 3, p[_HY] + 2 + 2 * wave)
    elif name == "rubbing the eyes":
        s = 4 * math.sin(2 * math.pi * 2.5 * tau)
        p[_LEX : _LHY + 1] = (-42, 140, -9 + s, p[_HY] - 6)
        p[_REX : _RHY + 1] = (42, 140, 9 - s, p[_HY] - 6)
    elif name == "illustrative hand gestures":
        s, c = math.sin(2 * math.pi * 1.2 * tau), math.cos(2 * math.pi * 1.2 * tau)
        p[_LEX : _LHY + 1] = (-54, 158, -30 - 12 * s, 146 + 6 * c)
        p[_REX : _RHY + 1] = (54, 158, 30 + 12 * c, 146 + 6 * s)
    elif name == "adjusting the microphone":
        p[_REX : _RHY + 1] = (64, 160, _MIC[0] + 2 * wave, _MIC[1] + 4)
    else:
        raise ValueError(f"unknown gesture {name!r}; known: {sorted(GESTURE_MEANING)}")
    return p


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def pose_at(t: float, gestures: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pose at time ``t`` (s) given NFBL spans ``{label, start, end}`` on the same timeline."""
    pose = REST_POSE.copy()
    pose[_HX] += 2 * math.sin(2 * math.pi * 0.25 * t)  # idle sway
    for g in gestures:
        if g["start"] <= t <= g["end"]:
            ramp = min(_RAMP_S, (g["end"] - g["start"]) / 3)
            w = _smoothstep((t - g["start"]) / ramp) * _smoothstep((g["end"] - t) / ramp)
            pose = pose + w * (_pose_target(g["label"], t - g["start"]) - REST_POSE)
    return pose


@functools.lru_cache(maxsize=1)
def _face_crop() -> np.ndarray:
    """The face of ``skimage.data.astronaut()`` (public-domain NASA portrait), BGR."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[28:178, 172:280, ::-1])


@functools.lru_cache(maxsize=8)
def _face_sprite(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Face resized to the head, and a soft elliptical alpha mask ``[h, w, 1]`` float32."""
    face = cv2.resize(_face_crop(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = ((xx + 0.5 - width / 2) / (width / 2)) ** 2 + ((yy + 0.5 - height / 2) / (height / 2)) ** 2
    alpha = np.clip((1.0 - r) * 6.0, 0.0, 1.0)[..., None]
    return face, alpha


@functools.lru_cache(maxsize=8)
def _backdrop(width: int, height: int, bgr: tuple[int, int, int]) -> np.ndarray:
    """Step-and-repeat sponsor backdrop (the static part of every frame), BGR."""
    s = height / 240
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bgr
    light = tuple(min(255, c + 45) for c in bgr)
    for row, y in enumerate(range(int(8 * s), height, int(34 * s))):
        for x in range(int(-10 * s + (row % 2) * 22 * s), width, int(44 * s)):
            cv2.rectangle(img, (x, y), (x + int(26 * s), y + int(12 * s)), light, -1)
            cv2.circle(img, (x + int(34 * s), y + int(6 * s)), max(2, int(4 * s)), light, -1)
    return img


def _shift(pt: tuple[float, float], cx: float, s: float) -> tuple[int, int]:
    return int(round(cx + pt[0] * s)), int(round(pt[1] * s))


def render_frame(
    pose: np.ndarray, background: np.ndarray, shirt_bgr: tuple[int, int, int], x_offset: int, sport: str
) -> np.ndarray:
    """One BGR frame of the figure in ``pose`` over a copy of ``background``."""
    img = background.copy()
    height, width = img.shape[:2]
    s = height / 240
    cx = width / 2 + x_offset * s
    skin = (120, 160, 205)
    sdy = float(pose[_SDY])
    shoulders = ((-34, 118 + sdy), (34, 118 + sdy))
    torso = np.array(
        [
            _shift((-34, 118 + sdy), cx, s),
            _shift((34, 118 + sdy), cx, s),
            _shift((44, 200), cx, s),
            _shift((-44, 200), cx, s),
        ],
        np.int32,
    )
    cv2.fillConvexPoly(img, torso, shirt_bgr, cv2.LINE_AA)
    head = (float(pose[_HX]), float(pose[_HY]))
    neck_top = _shift((head[0], head[1] + _HEAD_HALF[1] - 4), cx, s)
    cv2.line(img, neck_top, _shift((0, 120 + sdy), cx, s), skin, max(2, int(14 * s)), cv2.LINE_AA)
    # Head: the astronaut face, alpha-blended inside an ellipse.
    hw, hh = int(2 * _HEAD_HALF[0] * s), int(2 * _HEAD_HALF[1] * s)
    face, alpha = _face_sprite(hw, hh)
    x0, y0 = _shift((head[0] - _HEAD_HALF[0], head[1] - _HEAD_HALF[1]), cx, s)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + hw, width), min(y0 + hh, height)
    if xb > xa and yb > ya:
        roi = img[ya:yb, xa:xb].astype(np.float32)
        f = face[ya - y0 : yb - y0, xa - x0 : xb - x0]
        a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
        img[ya:yb, xa:xb] = (roi + a * (f - roi)).astype(np.uint8)
    # Table front, name card and microphone.
    cv2.rectangle(img, (0, int(_TABLE_Y * s)), (width, height), (40, 55, 70), -1)
    cv2.rectangle(img, (0, int(_TABLE_Y * s)), (width, int((_TABLE_Y + 4) * s)), (70, 90, 110), -1)
    card0, card1 = _shift((-30, 192), cx, s), _shift((30, 212), cx, s)
    cv2.rectangle(img, card0, card1, (235, 235, 235), -1)
    cv2.putText(
        img,
        sport.upper()[:8],
        (card0[0] + int(3 * s), card1[1] - int(6 * s)),
        cv2.FONT_HERSHEY_PLAIN,
        0.7 * s,
        (60, 60, 60),
        1,
        cv2.LINE_AA,
    )
    cv2.line(
        img,
        _shift((_MIC[0] + 6, _TABLE_Y), cx, s),
        _shift((_MIC[0], _MIC[1] + 6), cx, s),
        (30, 30, 30),
        max(1, int(3 * s)),
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        _shift(_MIC, cx, s),
        (max(2, int(5 * s)), max(3, int(8 * s))),
        0,
        0,
        360,
        (25, 25, 25),
        -1,
        cv2.LINE_AA,
    )
    # Arms last: hands may cover the face (that is what NFBL self-manipulations look like).
    arm = max(2, int(11 * s))
    for shoulder, (ex, ey, hx, hy) in (
        (shoulders[0], pose[_LEX : _LHY + 1]),
        (shoulders[1], pose[_REX : _RHY + 1]),
    ):
        p_sh, p_el, p_ha = _shift(shoulder, cx, s), _shift((ex, ey), cx, s), _shift((hx, hy), cx, s)
        cv2.line(img, p_sh, p_el, shirt_bgr, arm, cv2.LINE_AA)
        cv2.line(img, p_el, p_ha, skin, max(2, int(9 * s)), cv2.LINE_AA)
        cv2.circle(img, p_ha, max(2, int(7 * s)), skin, -1, cv2.LINE_AA)
    return img


# --------------------------------------------------------------------------------------------------
# One interview: audio + frames -> raw mp4 -> de-identified mp4
# --------------------------------------------------------------------------------------------------

_LEAD_S, _GAP_S, _TAIL_S = 0.5, 0.7, 0.4


@dataclass
class InterviewResult:
    """What one interview produced: manifest rows (one per clip made) and failures (one per clip not made)."""

    interview_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mux(frames_bgr: np.ndarray, audio: np.ndarray, sample_rate: int, fps: int, path: Path) -> None:
    """Write the raw interview: H.264 (ultrafast; it is re-encoded by the de-identification) and 16-bit PCM
    audio (no lossy step before the voice anonymisation) in a QuickTime container, frames through a pipe."""
    import soundfile as sf

    wav = path.with_suffix(".wav")
    sf.write(wav, audio, sample_rate, subtype="PCM_16")
    height, width = frames_bgr.shape[1:3]
    cmd = [
        "ffmpeg", "-y", "-hide_banner", "-nostats", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
        "-i", str(wav), "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "pcm_s16le", "-ac", "1", "-ar", str(sample_rate), str(path),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, input=frames_bgr.tobytes(), capture_output=True, timeout=600, check=False)
    finally:
        wav.unlink(missing_ok=True)
    if proc.returncode != 0:
        error = proc.stderr.decode("utf-8", "replace")[-300:]
        raise RuntimeError(f"ffmpeg could not write {path.name}: {error}")


def render_interview(
    plan: InterviewPlan, config: DemoConfig
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], list[dict[str, str]]]:
    """Synthesize and render one interview.

    Returns ``(frames_bgr [N, H, W, 3] uint8, audio float32 [N * sr / fps], rows, failures)`` where rows are
    manifest rows without ``video`` (times on the interview's timeline) and failures ``{id, reason}`` for the
    clips whose speech could not be made (the rest of the interview goes on).
    """
    sr, fps = config.sample_rate, config.fps
    rng = np.random.default_rng([config.seed, plan.index, 7])
    pieces: list[np.ndarray] = [np.zeros(int(_LEAD_S * sr), np.float32)]
    cursor = _LEAD_S
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    spans: list[dict[str, Any]] = []
    for clip in plan.clips:
        try:
            speech = synthesize_speech(clip.transcription, plan.speaker.voice, clip.prosody, sr)
        except SpeechError as e:
            failures.append({"id": clip.clip_id, "reason": f"speech synthesis: {e}"})
            continue
        start = cursor
        duration = speech.size / sr
        end = start + duration
        nfbl = [
            {
                "label": g.name,
                "start": round(start + g.start_frac * duration, 2),
                "end": round(start + g.end_frac * duration, 2),
            }
            for g in clip.gestures
        ]
        spans += nfbl
        rows.append(
            {
                "id": clip.clip_id,
                "start": round(start, 3),
                "end": round(end, 3),
                "transcription": clip.transcription,
                "label": clip.label,
                "reasoning": clip.reasoning,
                "nfbl": nfbl,
                "split": plan.split,
            }
        )
        pieces += [speech, np.zeros(int(_GAP_S * sr), np.float32)]
        cursor = end + _GAP_S
    pieces[-1] = np.zeros(int(_TAIL_S * sr), np.float32)
    audio = np.concatenate(pieces)
    samples_per_frame = sr // fps
    n_frames = -(-audio.size // samples_per_frame)
    audio = np.pad(audio, (0, n_frames * samples_per_frame - audio.size))
    audio += rng.normal(0.0, 0.002, audio.size).astype(np.float32)  # room tone: no digital silence
    background = _backdrop(config.width, config.height, plan.backdrop_bgr)
    frames = np.empty((n_frames, config.height, config.width, 3), np.uint8)
    for i in range(n_frames):
        frames[i] = render_frame(
            pose_at(i / fps, spans), background, plan.shirt_bgr, plan.x_offset, plan.sport
        )
    return frames, np.clip(audio, -1.0, 1.0), rows, failures


def generate_interview(
    plan: InterviewPlan,
    config: DemoConfig,
    output_dir: str | Path,
    *,
    keep_raw: bool = False,
    threads: int = 1,
) -> InterviewResult:
    """Make ``raw/<id>.mov``, de-identify it into ``deid/<id>.mp4`` (+ sidecar) and return its manifest rows.

    Never raises for a problem of this interview: every clip that was not made lands in ``failures``.
    """
    t0 = time.perf_counter()
    out = Path(output_dir)
    result = InterviewResult(plan.interview_id)
    raw = out / "raw" / f"{plan.interview_id}.mov"
    deid = out / "deid" / f"{plan.interview_id}.mp4"
    try:
        frames, audio, rows, failures = render_interview(plan, config)
        result.failures += failures
        if not rows:
            return result
        raw.parent.mkdir(parents=True, exist_ok=True)
        deid.parent.mkdir(parents=True, exist_ok=True)
        _mux(frames, audio, config.sample_rate, config.fps, raw)
        deidentify(raw, deid, threads=threads)
        for row in rows:
            row["video"] = f"deid/{deid.name}"
        result.rows = rows
    except Exception as e:  # noqa: BLE001 - one interview must never stop the corpus; its clips become failures
        made = {f["id"] for f in result.failures}
        result.failures += [
            {"id": c.clip_id, "reason": f"interview {plan.interview_id}: {type(e).__name__}: {e}"}
            for c in plan.clips
            if c.clip_id not in made
        ]
        result.rows = []
    finally:
        if not keep_raw:
            raw.unlink(missing_ok=True)
        result.seconds = round(time.perf_counter() - t0, 3)
    return result


@functools.lru_cache(maxsize=1)
def _detector(threads: int) -> Any:
    """One CenterFace session per process (loading the ONNX model costs more than a short video)."""
    from deemo_jax.deid import CenterFace

    return CenterFace(threads=threads)


def deid_settings() -> Any:
    """The demo's de-identification settings: the defaults except a larger, stronger blur.

    With the defaults (ellipse, boxes 1.6x the detection, sigma = 0.15 x box side) the blurred head of these
    small (about 35 px) faces is still a face-shaped blob that CenterFace scores up to about 0.57 (no identity
    left, but the 0.5 audit fails); blurring the whole box, twice the detection's size (``mask_scale=1.5``),
    with sigma = 0.3 x box side, leaves scores of about 0.1.
    """
    from deemo_jax.deid import DeidSettings

    return DeidSettings(shape="box", blur_strength=0.3, mask_scale=1.5)


def deidentify(raw: Path, deid: Path, *, threads: int = 1) -> dict[str, Any]:
    """The real de-identification (face blur, McAdams voice, audit); returns the sidecar.

    Raises (e.g. :class:`deemo_jax.deid.AuditFailedError`) when it fails; a failed output and its sidecar are
    deleted, so no video that may still show a face stays in the corpus.
    """
    from deemo_jax.deid import deidentify_video, sidecar_path

    try:
        return deidentify_video(raw, deid, deid_settings(), detector=_detector(threads))
    except BaseException:
        deid.unlink(missing_ok=True)
        sidecar_path(deid).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------

# Everything make_demo_corpus writes; --force deletes exactly these, and only in a directory holding
# PLAN_FILE.
PLAN_FILE = "plan.json"
DONE_FILE = "DONE"
_OWNED = (
    PLAN_FILE,
    DONE_FILE,
    "README.md",
    "manifest.jsonl",
    "generation_failures.jsonl",
    "raw",
    "deid",
    "interviews",
    "shards",
    "tokenizer",
)


class DemoDataError(RuntimeError):
    """The output directory cannot be used as asked (another corpus, a foreign directory)."""


@dataclass
class DemoReport:
    output_dir: Path
    skipped: bool  # True: the corpus was already complete and nothing was done
    planned_clips: int
    manifest_rows: int
    generation_failures: list[dict[str, str]]
    shard_written: int
    shard_failed: int
    counts: dict[str, dict[str, int]]  # split -> label -> records in the shards
    seconds: dict[str, float]
    bytes_on_disk: int

    def summary(self) -> str:
        lines = [
            f"demo corpus in {self.output_dir}" + (" (complete; nothing done)" if self.skipped else ""),
            f"  clips: planned {self.planned_clips} = generated {self.manifest_rows} + failed "
            f"{len(self.generation_failures)}; shards: written {self.shard_written} + failed "
            f"{self.shard_failed} "
            f"= manifest rows {self.manifest_rows}",
        ]
        for split, per_label in self.counts.items():
            lines.append(f"  {split:5s}: " + ", ".join(f"{k} {v}" for k, v in per_label.items()))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines.append(f"  size {self.bytes_on_disk / 1e6:.1f} MB; {timing}")
        return "\n".join(lines)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _config_json(config: DemoConfig) -> dict[str, Any]:
    return {
        "corpus_version": CORPUS_VERSION,
        **asdict(config),
        "split_fractions": list(config.split_fractions),
    }


def _prepare_output(out: Path, config: DemoConfig, force: bool) -> dict[str, Any] | None:
    """Check/clean the output directory; return the DONE record when the same corpus is already complete."""
    if out.exists() and not out.is_dir():
        raise DemoDataError(f"--output {out} exists and is not a directory")
    wanted = _config_json(config)
    plan_file = out / PLAN_FILE
    if out.is_dir() and any(out.iterdir()) and not plan_file.is_file():
        raise DemoDataError(
            f"--output {out} is a non-empty directory that holds no demo corpus ({PLAN_FILE} missing); "
            "choose a new or empty directory"
        )
    if plan_file.is_file() and not force:
        existing = json.loads(plan_file.read_text(encoding="utf-8"))
        if existing != wanted:
            changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise DemoDataError(
                f"{out} holds a demo corpus made with other settings ({', '.join(changed)}); pass --force to "
                "rebuild it, or choose another --output"
            )
        done = out / DONE_FILE
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
    if force and plan_file.is_file():
        for name in _OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(plan_file, json.dumps(wanted, indent=2) + "\n")
    return None


def _interview_job(
    plan: InterviewPlan, config: DemoConfig, output_dir: str, keep_raw: bool, threads: int
) -> InterviewResult:
    result = generate_interview(plan, config, output_dir, keep_raw=keep_raw, threads=threads)
    if not result.failures:  # a complete interview is kept for reruns; an incomplete one is retried
        _write_text_atomic(
            Path(output_dir) / "interviews" / f"{plan.interview_id}.json",
            json.dumps(result.to_json(), ensure_ascii=False),
        )
    return result


def _finished_interview(out: Path, plan: InterviewPlan) -> InterviewResult | None:
    from deemo_jax.deid import is_deidentified

    path = out / "interviews" / f"{plan.interview_id}.json"
    if not path.is_file() or not is_deidentified(out / "deid" / f"{plan.interview_id}.mp4"):
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return InterviewResult(**data)


def _run_interviews(
    plans: list[InterviewPlan], config: DemoConfig, out: Path, *, workers: int, keep_raw: bool, progress: bool
) -> list[InterviewResult]:
    """Generate the interviews not finished by an earlier run; never stops on one interview."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    (out / "interviews").mkdir(parents=True, exist_ok=True)
    results: dict[str, InterviewResult] = {}
    todo = []
    for plan in plans:
        done = _finished_interview(out, plan)
        if done is not None:
            results[plan.interview_id] = done
        else:
            todo.append(plan)
    bar = tqdm(
        total=len(plans), initial=len(results), unit="interview", desc="demo interviews", disable=not progress
    )
    try:
        if workers == 1:
            for plan in todo:
                results[plan.interview_id] = _interview_job(plan, config, str(out), keep_raw, 0)
                bar.update(1)
        else:
            for attempt in range(2):  # a second pool retries interviews whose worker process died
                if not todo:
                    break
                crashed = []
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                    futures = {pool.submit(_interview_job, p, config, str(out), keep_raw, 1): p for p in todo}
                    for future in as_completed(futures):
                        plan = futures[future]
                        try:
                            results[plan.interview_id] = future.result()
                        except BrokenProcessPool as e:
                            if attempt == 0:
                                crashed.append(plan)
                                continue
                            results[plan.interview_id] = _failed(plan, f"worker process died: {e}")
                        except Exception as e:  # noqa: BLE001 - recorded per clip, the corpus goes on
                            results[plan.interview_id] = _failed(plan, f"{type(e).__name__}: {e}")
                        bar.update(1)
                todo = crashed
    finally:
        bar.close()
    return [results[p.interview_id] for p in plans]


def _failed(plan: InterviewPlan, reason: str) -> InterviewResult:
    return InterviewResult(
        plan.interview_id, failures=[{"id": c.clip_id, "reason": reason} for c in plan.clips]
    )


def tokenizer_texts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """All text a model sees on this corpus: every task's prompt (with the NFBL part) and target, per clip."""
    from deemo_jax.data.prompts import AUDIO_PLACEHOLDER, TASKS, VIDEO_PLACEHOLDER, PromptConfig, build_prompt

    texts = []
    for row in rows:
        duration = row["end"] - row["start"]
        record = {
            "kind": "mer",
            "id": row["id"],
            "transcription": row["transcription"],
            "label": row["label"],
            "reasoning": row["reasoning"],
            "nfbl": [
                {
                    "label": c["label"],
                    "start": max(0.0, c["start"] - row["start"]),
                    "end": min(duration, c["end"] - row["start"]),
                }
                for c in row["nfbl"]
            ],
        }
        for task in TASKS:
            prompt, target = build_prompt(record, PromptConfig(task=task, nfbl_as_text=True, labels=LABELS))
            text = (prompt + target).replace(VIDEO_PLACEHOLDER, "").replace(AUDIO_PLACEHOLDER, "")
            texts.append(text)
    return texts


def make_demo_corpus(
    output_dir: str | Path,
    config: DemoConfig | None = None,
    *,
    workers: int = 2,
    force: bool = False,
    keep_raw: bool = False,
    progress: bool = True,
) -> DemoReport:
    """Generate (or finish, or just report) the demo corpus in ``output_dir``; see the module docstring.

    A complete corpus with the same settings returns at once (``skipped=True``); ``force=True`` rebuilds
    it. An interrupted run resumes: finished interviews and shards are kept. Raises :class:`DemoDataError`
    for an unusable output directory or a missing ffmpeg, and :class:`SpeechError` when espeak-ng is
    missing.
    """
    config = config or DemoConfig()
    config.validate()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out = Path(output_dir)
    done = _prepare_output(out, config, force)
    if done is not None:
        return _report_from_done(out, done)
    from deemo_jax.data.builder import build_shards
    from deemo_jax.data.tokenizer import train_sentencepiece_tokenizer  # imports transformers: seconds

    require_espeak()
    if shutil.which("ffmpeg") is None:
        raise DemoDataError("ffmpeg not found on PATH; install it with `apt-get install -y ffmpeg`")

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plans = plan_corpus(config)
    results = _run_interviews(plans, config, out, workers=workers, keep_raw=keep_raw, progress=progress)
    seconds["interviews"] = time.perf_counter() - t0
    if not keep_raw:
        shutil.rmtree(out / "raw", ignore_errors=True)

    rows = [row for r in results for row in r.rows]
    failures = [f for r in results for f in r.failures]
    if len(rows) + len(failures) != config.num_clips:
        raise RuntimeError(
            f"internal error: {len(rows)} clips + {len(failures)} failures != {config.num_clips}"
        )
    if not rows:
        reasons = sorted({f["reason"] for f in failures})[:3]
        raise DemoDataError(f"no demo clip could be made; first reasons: {reasons}")
    manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    manifest_path = out / "manifest.jsonl"
    if manifest_path.is_file() and manifest_path.read_text(encoding="utf-8") != manifest:
        shutil.rmtree(out / "shards", ignore_errors=True)  # built from an earlier, incomplete manifest
    _write_text_atomic(manifest_path, manifest)
    _write_text_atomic(
        out / "generation_failures.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures)
    )

    t1 = time.perf_counter()
    build = build_shards(
        manifest_path,
        out / "shards",
        labels=LABELS,
        records_per_shard=config.records_per_shard,
        workers=workers,
        already_deidentified=False,
        progress=progress,
    )
    seconds["shards"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    train_sentencepiece_tokenizer(tokenizer_texts(rows), out / "tokenizer", vocab_size=config.vocab_size)
    seconds["tokenizer"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0

    metadata = json.loads((out / "shards" / "metadata.json").read_text(encoding="utf-8"))
    counts = {split: dict(entry["per_label"]) for split, entry in metadata["counts"]["per_split"].items()}
    report = DemoReport(
        output_dir=out,
        skipped=False,
        planned_clips=config.num_clips,
        manifest_rows=len(rows),
        generation_failures=failures,
        shard_written=build.written,
        shard_failed=build.failed,
        counts=counts,
        seconds={k: round(v, 1) for k, v in seconds.items()},
        bytes_on_disk=0,
    )
    _write_text_atomic(out / "README.md", _readme(report, config, rows))
    report.bytes_on_disk = _dir_bytes(out)
    done_record = {
        "corpus_version": CORPUS_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "planned_clips": report.planned_clips,
        "manifest_rows": report.manifest_rows,
        "generation_failed": len(failures),
        "shard_written": report.shard_written,
        "shard_failed": report.shard_failed,
        "counts": counts,
        "seconds": report.seconds,
        "bytes_on_disk": report.bytes_on_disk,
    }
    _write_text_atomic(out / DONE_FILE, json.dumps(done_record, indent=2) + "\n")
    return report


def _report_from_done(out: Path, done: dict[str, Any]) -> DemoReport:
    failures_file = out / "generation_failures.jsonl"
    failures = [
        json.loads(line) for line in failures_file.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return DemoReport(
        output_dir=out,
        skipped=True,
        planned_clips=done["planned_clips"],
        manifest_rows=done["manifest_rows"],
        generation_failures=failures,
        shard_written=done["shard_written"],
        shard_failed=done["shard_failed"],
        counts=done["counts"],
        seconds=done["seconds"],
        bytes_on_disk=done["bytes_on_disk"],
    )


def _readme(report: DemoReport, config: DemoConfig, rows: Sequence[dict[str, Any]]) -> str:
    neutral = sum(
        1
        for p in plan_corpus(config)
        for c in p.clips
        if c.neutral_text and c.clip_id in {r["id"] for r in rows}
    )
    table = "\n".join(
        f"| {split} | " + " | ".join(str(per_label.get(label, 0)) for label in LABELS) + " |"
        for split, per_label in report.counts.items()
    )
    return f"""# Demo corpus (synthetic)

Made by `python scripts/make_demo_data.py --output {report.output_dir.name} --num-clips {config.num_clips} \\
--seed {config.seed}` (deemo_jax/data/demo.py, corpus version {CORPUS_VERSION}); see docs/demo_data.md.
Everything here is synthetic: espeak-ng speech, OpenCV drawings, and the face of `skimage.data.astronaut()`
(a public-domain NASA photo shipped with scikit-image), blurred by the real de-identification.

| split | {" | ".join(LABELS)} |
|---|{"---|" * len(LABELS)}
{table}

- {report.manifest_rows} clips of {config.num_clips} planned ({len(report.generation_failures)} failed: see
  `generation_failures.jsonl`); {neutral} have a sentiment-neutral transcription.
- `deid/`: de-identified interview videos ({config.width}x{config.height}, {config.fps} fps, 16 kHz McAdams
  audio) with their `.deid.json` sidecars (audit passed); no raw video or voice is kept.
- `manifest.jsonl`: one clip per row (start/end and NFBL times in seconds of the interview video).
- `shards/`: ArrayRecord shards built by `deemo_jax.data.builder` (`metadata.json`, `failures.jsonl`).
- `tokenizer/`: SentencePiece tokenizer (vocabulary {config.vocab_size}) trained on all prompts and targets.
"""
