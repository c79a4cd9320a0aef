"""Turn a generated answer into one label of a closed label set, or ``None`` when it cannot be done.

The rule, applied to the text after normalisation (Unicode NFKC, lower case, the ``###`` end marker and
``</s>``/``<s>`` removed, surrounding quotes/asterisks stripped), first match wins:

1. ``leading``: the first segment of the text (up to the first ``. ! ? ; : ,`` or newline) is exactly one
   label. This covers the training targets: the bare label (``"positive"``) and ``"{label}. {reasoning}"``.
2. ``explicit``: an explicit statement such as ``"the emotion is negative"``, ``"sentiment: positive"``,
   ``"label = negative"``, ``"the answer was probably positive"``; the first such statement counts.
   ``"the emotion is not positive"`` is not an explicit statement (``not`` breaks the pattern).
3. ``unique``: exactly one distinct label occurs, not negated, anywhere in the text.
4. ``first_sentence``: several distinct labels occur, but the first sentence mentions exactly one of them
   (not negated): models state their conclusion first.
5. Otherwise the answer is unparseable (``None``), including when the first sentence names several labels.

Negation: a label word preceded, within the same clause and at most three words before it, by a negator
(``not no never neither nor non without hardly barely`` or a word ending in ``n't``) is ignored. A negated
label is never mapped to its complement: ``"not positive"`` gives ``None`` even for a binary label set,
because it may mean neutral. Labels match as whole words only (``"unhappy"`` does not contain ``"happy"``),
inflections are not matched (``"positively"`` is not ``"positive"``).

Callers never get a silent fallback class: ``None`` must be counted as unparseable (see ``metrics.py``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

DEFAULT_LABELS: tuple[str, ...] = ("positive", "negative")

_NEGATORS = frozenset({"not", "no", "never", "neither", "nor", "non", "without", "hardly", "barely"})
_NEGATION_WINDOW = 3
_SEGMENT_END = re.compile(r"[.!?;:,\n]")
_SENTENCE_END = re.compile(r"[.!?\n]")
_CLAUSE_END = re.compile(r"[.!?;:,\n()\[\]]")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STRIP_CHARS = " \t\r\n\"'`*_#>"
_EXPLICIT_NOUNS = (
    r"(?:emotion|emotional state|emotional tone|sentiment|polarity|label|answer|prediction|mood)"
)
_HEDGES = r"(?:(?:likely|probably|mostly|overall|clearly|predominantly|mainly|generally|quite|more)\s+)*"


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("</s>", " ").replace("<s>", " ").replace("###", " ")
    text = text.replace("\u2019", "'")
    return text.strip(_STRIP_CHARS)


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of strings, got {labels!r}")
    lowered = tuple(_normalise(label) for label in labels)
    if any(not label for label in lowered) or len(set(lowered)) != len(lowered):
        raise ValueError(f"labels must be non-empty and distinct ignoring case, got {list(labels)!r}")
    return lowered


def _is_negated(text: str, start: int) -> bool:
    clause_start = max((m.end() for m in _CLAUSE_END.finditer(text, 0, start)), default=0)
    words = _WORD.findall(text[clause_start:start].replace("-", " "))[-_NEGATION_WINDOW:]
    return any(word in _NEGATORS or word.endswith("n't") for word in words)


def _mentions(text: str, lowered: tuple[str, ...]) -> list[tuple[int, int]]:
    """(position, label index) of every non-negated whole-word occurrence, in text order."""
    found = []
    for index, label in enumerate(lowered):
        for match in re.finditer(rf"(?<![a-z0-9]){re.escape(label)}(?![a-z0-9])", text):
            if not _is_negated(text, match.start()):
                found.append((match.start(), index))
    return sorted(found)


def parse_label_with_rule(text: str, labels: Sequence[str] = DEFAULT_LABELS) -> tuple[str | None, str]:
    """Like :func:`parse_label`, also naming the rule that decided (``"unparseable"`` when none did)."""
    if not isinstance(text, str):
        raise TypeError(f"parse_label expects the generated text as str, got {type(text).__name__}")
    lowered = _check_labels(labels)
    norm = _normalise(text)

    first_segment = _SEGMENT_END.split(norm, maxsplit=1)[0].strip(_STRIP_CHARS)
    if first_segment in lowered:
        return labels[lowered.index(first_segment)], "leading"

    alternatives = "|".join(re.escape(label) for label in sorted(lowered, key=len, reverse=True))
    explicit = re.search(
        rf"\b{_EXPLICIT_NOUNS}\b[^.!?\n]{{0,30}}?(?:\bis\b|\bwas\b|\bwould be\b|:|=)\s*:?\s*"
        rf"[\"'*`]*\s*{_HEDGES}[\"'*`]*({alternatives})(?![a-z0-9])",
        norm,
    )
    if explicit:
        return labels[lowered.index(explicit.group(1))], "explicit"

    mentions = _mentions(norm, lowered)
    distinct = {index for _, index in mentions}
    if len(distinct) == 1:
        return labels[distinct.pop()], "unique"
    if distinct:
        sentence_end = _SENTENCE_END.search(norm)
        limit = sentence_end.start() if sentence_end else len(norm)
        in_first = {index for position, index in mentions if position < limit}
        if len(in_first) == 1:
            return labels[in_first.pop()], "first_sentence"
    return None, "unparseable"


def parse_label(text: str, labels: Sequence[str] = DEFAULT_LABELS) -> str | None:
    """The label ``text`` states (spelled as in ``labels``), or ``None``; the rule is in the module doc."""
    return parse_label_with_rule(text, labels)[0]
