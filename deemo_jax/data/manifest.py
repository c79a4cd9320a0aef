"""JSONL clip manifest: parsing and per-row validation.

One JSON object per line, one clip per row::

    {"id": "ath03_c2", "video": "videos/ath03.mp4", "start": 12.5, "end": 24.0,
     "transcription": "...", "label": "positive", "reasoning": "...",
     "nfbl": [{"label": "scratching the nose", "start": 14.0, "end": 15.2}], "split": "train"}

``video`` may be relative (resolved against the manifest's folder). ``start``/``end`` and the NFBL times are
seconds on the source video's timeline; ``nfbl`` is optional (default ``[]``); ``reasoning`` must be present
but may be empty (recognition-only data). Blank lines are ignored. Unknown keys are ignored.

A bad row (invalid JSON, non-UTF-8 bytes, missing or mistyped field, empty transcription, unknown label,
``end <= start``, duplicate id, NFBL outside the clip) becomes a :class:`RowFailure`; parsing never stops
on one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LABELS = ("positive", "negative")
REQUIRED_FIELDS = ("id", "video", "start", "end", "transcription", "label", "reasoning", "split")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class NfblSpan:
    label: str
    start: float
    end: float


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line number in the manifest
    id: str
    video: str  # as written in the manifest
    video_path: Path  # resolved
    start: float
    end: float
    transcription: str
    label: str
    label_index: int
    reasoning: str
    split: str
    nfbl: tuple[NfblSpan, ...] = field(default_factory=tuple)

    def nfbl_clip_relative(self) -> list[dict[str, Any]]:
        """NFBL spans clipped to ``[start, end]`` and shifted to clip-relative seconds."""
        duration = self.end - self.start
        return [
            {
                "label": s.label,
                "start": max(s.start - self.start, 0.0),
                "end": min(s.end - self.start, duration),
            }
            for s in self.nfbl
        ]


@dataclass(frozen=True)
class RowFailure:
    line: int
    id: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.id, "reason": self.reason}


@dataclass
class Manifest:
    path: Path
    sha256: str
    num_rows: int  # non-blank lines
    rows: list[ManifestRow]
    failures: list[RowFailure]


class _RowError(ValueError):
    pass


def _number(obj: dict, key: str) -> float:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _RowError(f"field {key!r} must be a finite number of seconds, got {value!r}")
    return float(value)


def _text(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _nfbl(value: Any, start: float, end: float) -> tuple[NfblSpan, ...]:
    if not isinstance(value, list):
        raise _RowError(f"field 'nfbl' must be a list of {{label, start, end}}, got {type(value).__name__}")
    spans = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or any(k not in item for k in ("label", "start", "end")):
            raise _RowError(f"nfbl[{i}] must be an object with 'label', 'start' and 'end', got {item!r}")
        label = item["label"]
        if not isinstance(label, str) or not label.strip():
            raise _RowError(f"nfbl[{i}].label must be a non-empty string, got {label!r}")
        s, e = _number(item, "start"), _number(item, "end")
        if e <= s:
            raise _RowError(f"nfbl[{i}] ({label!r}): end {e} <= start {s}")
        if e <= start or s >= end:
            raise _RowError(
                f"nfbl[{i}] ({label!r}) [{s}, {e}] s does not overlap the clip [{start}, {end}] s "
                "(NFBL times are seconds of the source video, like the clip's start/end)"
            )
        spans.append(NfblSpan(label=label, start=s, end=e))
    return tuple(spans)


def _parse_row(obj: Any, line: int, base: Path, labels: Sequence[str]) -> ManifestRow:
    if not isinstance(obj, dict):
        raise _RowError(f"a row must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise _RowError(f"missing field(s) {missing} (required: {list(REQUIRED_FIELDS)})")
    clip_id = _text(obj, "id")
    if not clip_id.strip():
        raise _RowError("field 'id' is empty")
    video = _text(obj, "video")
    if not video.strip():
        raise _RowError("field 'video' is empty")
    start, end = _number(obj, "start"), _number(obj, "end")
    if start < 0:
        raise _RowError(f"start {start} s is negative")
    if end <= start:
        raise _RowError(f"end {end} s <= start {start} s")
    transcription = _text(obj, "transcription")
    if not transcription.strip():
        raise _RowError("empty transcription")
    label = _text(obj, "label")
    if label not in labels:
        raise _RowError(f"unknown label {label!r}; the label set is {list(labels)} (set it with --labels)")
    split = _text(obj, "split")
    if not _SPLIT_RE.match(split):
        raise _RowError(f"split {split!r} must be a non-empty name of letters, digits, '_', '-' or '.'")
    nfbl = _nfbl(obj.get("nfbl", []), start, end)
    return ManifestRow(
        line=line, id=clip_id, video=video, video_path=(base / video).resolve(), start=start, end=end,
        transcription=transcription, label=label, label_index=list(labels).index(label),
        reasoning=_text(obj, "reasoning"), split=split, nfbl=nfbl,
    )


def validate_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Check a label set (non-empty, unique, non-blank strings) and return it as a tuple."""
    labels = tuple(labels)
    if not labels or any(not isinstance(x, str) or not x.strip() for x in labels):
        raise ValueError(f"label set must be a non-empty list of non-empty strings, got {list(labels)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"label set has duplicates: {list(labels)}")
    return labels


def parse_manifest(path: str | Path, labels: Sequence[str] = DEFAULT_LABELS) -> Manifest:
    """Read ``path`` as bytes and validate each non-blank line; bad lines become failures, never exceptions.

    Raises only for problems with the file itself (missing, unreadable) or with ``labels``.
    """
    labels = validate_labels(labels)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found (pass the JSONL file with --manifest)")
    data = path.read_bytes()
    base = path.resolve().parent
    rows: list[ManifestRow] = []
    failures: list[RowFailure] = []
    seen: dict[str, int] = {}
    num_rows = 0
    for line_no, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        num_rows += 1
        obj: Any = None
        try:
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # tolerate a BOM
            except UnicodeDecodeError as e:
                bad = raw[e.start: e.start + 1]
                raise _RowError(f"not valid UTF-8 (byte {e.start}: {bad!r}); save the file as UTF-8") from e
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _RowError(f"invalid JSON: {e.msg} at column {e.colno}") from e
            row = _parse_row(obj, line_no, base, labels)
            if row.id in seen:
                raise _RowError(f"duplicate id {row.id!r} (first used on line {seen[row.id]})")
            seen[row.id] = line_no
            rows.append(row)
        except _RowError as e:
            clip_id = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
            failures.append(RowFailure(line=line_no, id=clip_id, reason=str(e)))
    return Manifest(
        path=path, sha256=hashlib.sha256(data).hexdigest(), num_rows=num_rows, rows=rows, failures=failures
    )
