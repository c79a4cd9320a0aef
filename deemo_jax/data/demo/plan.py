"""The plan of the demo corpus: settings, the plan types, and :func:`plan_corpus`, which decides every
interview and clip (sport, voice, label, transcription, prosody, gesture schedule, reasoning text) from the
seed alone, before any audio or video is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .vocabulary import (
    BACKDROPS,
    FILLERS,
    GESTURE_MEANING,
    GESTURE_POLARITY,
    NEGATIVE_GESTURES,
    NEGATIVE_TEMPLATES,
    NEUTRAL_GESTURES,
    NEUTRAL_TEMPLATES,
    POSITIVE_GESTURES,
    POSITIVE_TEMPLATES,
    SHIRTS,
    SPORTS,
    VOICE_LANGS,
    VOICE_VARIANTS,
)

LABELS = ("positive", "negative")
CORPUS_VERSION = 1


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
class Speaker:
    """An interviewee's voice: espeak-ng voice name and the prosody that their neutral speech would have."""

    voice: str
    pitch: int
    speed: int
    amplitude: int


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


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One of ``options``, uniformly (one ``rng.integers`` draw)."""
    return options[rng.integers(len(options))]


def _fill(template: str, sport: str, rng: np.random.Generator) -> tuple[str, str]:
    """Fill a template; return (sentence, key phrase)."""
    vocab = SPORTS[sport]
    values = {
        **{name: vocab[name] for name in ("period", "event", "venue", "equipment")},
        **{name: _pick(rng, vocab[f"{name}s"]) for name in ("ord", "skill", "place", "team")},
        **{name: _pick(rng, options) for name, options in FILLERS.items()},
    }
    text = template.format(**values)
    if "[" in text:
        key = text[text.index("[") + 1 : text.index("]")]
        text = text.replace("[", "").replace("]", "")
    else:
        key = text.rstrip(".")
    return text, key


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
        names.append(_pick(rng, choices))
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
    consistent = [g for g in gestures if GESTURE_POLARITY[g] == label]
    neutral = [g for g in gestures if GESTURE_POLARITY[g] is None]
    contrary = [g for g in gestures if GESTURE_POLARITY[g] not in (label, None)]
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
            voice=f"{_pick(rng, VOICE_LANGS)}+{VOICE_VARIANTS[i % len(VOICE_VARIANTS)]}",
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
                text, key = _fill(_pick(rng, templates), sport, rng)
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
                backdrop_bgr=_pick(rng, BACKDROPS),
                shirt_bgr=_pick(rng, SHIRTS),
                x_offset=int(rng.integers(-20, 21)),
                clips=tuple(clips),
            )
        )
    return interviews
