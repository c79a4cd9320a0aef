"""Prompts, response schemas and reply validation of the GPT judge.

The prompts are ours (English), following the structure of AffectGPT's Chinese EMER prompts; they are
versioned by ``PROMPT_VERSION``, which is recorded with every score and is part of every cache key: change a
prompt, bump the version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

PROMPT_VERSION = "deemo-emer-en-v1"
PAPER_JUDGE_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_MODEL = PAPER_JUDGE_MODEL
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PAPER_SCORES = {"clue_overlap": 6.20, "label_overlap": 7.66, "average": 6.93}
SCORE_MIN, SCORE_MAX = 1, 10


class ClueJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference_cues: StrictStr
    predicted_cues: StrictStr
    reason: StrictStr
    score: StrictInt


class EmotionWords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emotions: list[StrictStr]


class LabelJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: StrictStr
    score: StrictInt


RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "clue": ClueJudgement,
    "emotions": EmotionWords,
    "label": LabelJudgement,
}

CLUE_PROMPT = """\
You are given two descriptions of the same person in a video clip: a ground-truth description and a \
predicted description. Score the predicted description on a scale from 1 to 10 by following these steps.
1. Summarise the cues about the person's emotional state in the ground-truth description (what is said, how \
it sounds, body language, context) and the conclusion drawn from them.
2. Summarise the cues about the person's emotional state in the predicted description in the same way.
3. Compare the two summaries: the more the predicted emotional cues and the reasoning built on them overlap \
with the ground truth, and the more complete the predicted reasoning is, the higher the score. 1 means no \
overlap at all; 10 means the same cues and the same conclusion.
4. Reply in the requested JSON format: your summary of step 1 (reference_cues), your summary of step 2 \
(predicted_cues), a short reason, and the integer score.

Ground-truth description:
<<<{reference}>>>

Predicted description:
<<<{generated}>>>"""

EMOTIONS_PROMPT = """\
From the following description of a person in a video clip, infer the person's most likely emotional state \
and output only emotion words, in the requested JSON format (an empty list if no emotion can be inferred).

Example
Description: <<<Although he appears to smile, his trembling voice and clenched fists show that he is \
actually very anxious.>>>
Emotion words: ["anxious"]

Description: <<<{description}>>>"""

LABEL_PROMPT = """\
You are given the true emotional state and the predicted emotional state of a person, each as a list of \
emotion words. Score the overlap between the predicted and the true emotions on a scale from 1 to 10: the \
higher the overlap, the higher the score. Synonyms and closely related emotions count as overlap; 1 means \
unrelated or opposite emotions, 10 means the same emotions. Reply in the requested JSON format with a short \
reason and the integer score.

True emotions: {reference_emotions}
Predicted emotions: {predicted_emotions}"""


def _format_emotions(words: Sequence[str]) -> str:
    return ", ".join(words) if words else "(none)"


def normalise_emotion_words(words: Iterable[str]) -> list[str]:
    """Strip, lower-case and de-duplicate (first occurrence kept) the extracted emotion words."""
    seen: list[str] = []
    for word in words:
        word = " ".join(word.strip().strip(".,;:!?\"'").lower().split())
        if word and word not in seen:
            seen.append(word)
    return seen


def response_format_param(model: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` body field (what ``chat.completions.parse(response_format=model)`` sends)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "strict": True, "schema": model.model_json_schema()},
    }


@dataclass(frozen=True)
class JudgeRequest:
    kind: str  # "clue" | "emotions" | "label"
    prompt: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def clue_request(reference: str, generated: str) -> JudgeRequest:
    return JudgeRequest("clue", CLUE_PROMPT.format(reference=reference, generated=generated))


def emotions_request(description: str) -> JudgeRequest:
    return JudgeRequest("emotions", EMOTIONS_PROMPT.format(description=description))


def label_request(reference_emotions: Sequence[str], predicted_emotions: Sequence[str]) -> JudgeRequest:
    return JudgeRequest(
        "label",
        LABEL_PROMPT.format(
            reference_emotions=_format_emotions(reference_emotions),
            predicted_emotions=_format_emotions(predicted_emotions),
        ),
    )


# ---------------------------------------------------------------------------------------------------------
# Reply validation
# ---------------------------------------------------------------------------------------------------------


class InvalidJudgement(ValueError):
    """The reply was not a valid result (unparseable, refused, truncated, score out of range)."""


# A whole reply that is one Markdown code block: ```json\n{...}\n``` (language tag optional).
_FENCE = re.compile(r"\A\s*```[ \t]*(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)


def strip_json_fence(content: str) -> str:
    """The JSON inside ``content`` if the reply is exactly one fenced block, else ``content`` unchanged.

    Servers that ignore ``response_format`` often wrap the JSON in a Markdown fence. Stripping it is safe
    because the inner text is still validated against the schema; prose around the block, or two blocks,
    are left as they are and fail validation.
    """
    match = _FENCE.match(content)
    if match is None or "```" in match["body"]:
        return content
    return match["body"]


def check_parsed(kind: str, parsed: BaseModel | None) -> dict[str, Any]:
    """The normalised result of a schema-valid reply; raises ``InvalidJudgement`` (score outside 1..10)."""
    if parsed is None:
        raise InvalidJudgement("the reply had no parsed content (refusal or empty message)")
    data = parsed.model_dump()
    if kind == "emotions":
        data["emotions"] = normalise_emotion_words(data["emotions"])
    elif not SCORE_MIN <= data["score"] <= SCORE_MAX:
        raise InvalidJudgement(f"score {data['score']} is outside {SCORE_MIN}..{SCORE_MAX}")
    return data


def parse_reply(kind: str, content: str | None) -> dict[str, Any]:
    """Validate a reply's text against the schema of ``kind``.

    Raises ``InvalidJudgement`` (no content, bad score) or ``pydantic.ValidationError`` (not the schema).
    """
    if kind not in RESPONSE_MODELS:
        raise InvalidJudgement(f"unknown request kind {kind!r}")
    if not content:
        raise InvalidJudgement("the reply had no content (refusal or empty message)")
    return check_parsed(kind, RESPONSE_MODELS[kind].model_validate_json(strip_json_fence(content)))


def validate_result(kind: str, result: Any) -> dict[str, Any]:
    """Re-validate a stored result (a dict); returns the normalised dict or raises."""
    if kind not in RESPONSE_MODELS:
        raise InvalidJudgement(f"unknown request kind {kind!r}")
    return check_parsed(kind, RESPONSE_MODELS[kind].model_validate(result))
