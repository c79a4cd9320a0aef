"""Metrics JSON, and markdown tables laid out like the DEEMO paper's Table 4 (modalities) and 5 (methods).

Accuracy and F1 are shown in percent, judge scores on their 1-10 scale, with two decimals as in the paper.
The paper's F1 definition is not stated; ``f1="weighted"`` (Emotion-LLaMA's convention) is the default column
and ``f1="macro"`` is available. The paper's numbers are printed as reference rows, marked "paper".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from deemo_jax.eval.metrics import ClassificationMetrics
from deemo_jax.files import write_atomic

MODALITIES: tuple[str, ...] = ("transcription", "video", "audio", "nfbl")
MODALITY_HEADERS: dict[str, str] = {
    "transcription": "Audio transcription",
    "video": "De-identified video",
    "audio": "De-identified audio",
    "nfbl": "NFBL",
}

# Paper Table 4 (ablation on DEEMO-MER-testing): modalities, accuracy %, F1 %.
PAPER_TABLE4: tuple[tuple[frozenset[str], float, float], ...] = (
    (frozenset({"video"}), 44.77, 32.98),
    (frozenset({"audio"}), 53.19, 50.12),
    (frozenset({"nfbl"}), 53.19, 52.14),
    (frozenset({"transcription"}), 66.67, 63.13),
    (frozenset({"transcription", "video"}), 70.16, 69.32),
    (frozenset({"transcription", "video", "audio"}), 74.49, 74.45),
    (frozenset({"transcription", "video", "audio", "nfbl"}), 75.29, 75.21),
)


@dataclass(frozen=True)
class Table5Row:
    """One method: accuracy/F1 in percent, clue/label overlap on the 1-10 judge scale; None = not measured."""

    method: str
    modality: str = "V+A+T"
    llm: str = "Vicuna"
    size: str = "7B"
    accuracy: float | None = None
    f1: float | None = None
    clue_overlap: float | None = None
    label_overlap: float | None = None

    @property
    def avg(self) -> float | None:
        """Mean of clue and label overlap, as the paper's "Avg" column (6.20, 7.66 -> 6.93)."""
        if self.clue_overlap is None or self.label_overlap is None:
            return None
        return (self.clue_overlap + self.label_overlap) / 2

    @classmethod
    def from_results(
        cls,
        method: str,
        metrics: ClassificationMetrics | None = None,
        judge_summary: Mapping[str, Any] | None = None,
        f1: Literal["weighted", "macro"] = "weighted",
        **kwargs: str,
    ) -> Table5Row:
        """Build a row from ``classification_metrics`` output and a judge ``summary.json`` dict."""
        clue = label = None
        if judge_summary is not None:
            clue = judge_summary["metrics"]["clue_overlap"]["mean"]
            label = judge_summary["metrics"]["label_overlap"]["mean"]
        return cls(
            method=method,
            accuracy=None if metrics is None else 100 * metrics.accuracy,
            f1=None if metrics is None else 100 * _f1(metrics, f1),
            clue_overlap=clue,
            label_overlap=label,
            **kwargs,
        )


PAPER_DEEMO_LLAMA = Table5Row(
    "DEEMO-LLaMA (paper)", accuracy=74.49, f1=74.45, clue_overlap=6.20, label_overlap=7.66
)


def _f1(metrics: ClassificationMetrics, kind: str) -> float:
    if kind == "weighted":
        return metrics.weighted_f1
    if kind == "macro":
        return metrics.macro_f1
    raise ValueError(f"f1 must be 'weighted' or 'macro', got {kind!r}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _check_modalities(modalities: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(modalities)
    unknown = chosen - set(MODALITIES)
    if unknown or not chosen:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {sorted(chosen)}")
    return chosen


def table4_markdown(
    rows: Sequence[tuple[Iterable[str], ClassificationMetrics]],
    f1: Literal["weighted", "macro"] = "weighted",
    include_paper: bool = True,
) -> str:
    """Table 4: a ✓/- column per modality, then Accuracy (%) and F1 (%); ``rows``: (modalities, metrics)."""
    header = ["Source", *(MODALITY_HEADERS[m] for m in MODALITIES), "Accuracy (%)", f"F1-score {f1} (%)"]
    body = []
    for modalities, metrics in rows:
        chosen = _check_modalities(modalities)
        marks = ["✓" if m in chosen else "-" for m in MODALITIES]
        body.append(["ours", *marks, _num(100 * metrics.accuracy), _num(100 * _f1(metrics, f1))])
    if include_paper:
        for chosen, accuracy, paper_f1 in PAPER_TABLE4:
            marks = ["✓" if m in chosen else "-" for m in MODALITIES]
            body.append(["paper", *marks, _num(accuracy), _num(paper_f1)])
    return _markdown(header, body)


def table5_markdown(rows: Sequence[Table5Row], include_paper: bool = True) -> str:
    """Table 5: method, modality, LLM, size, Accuracy, F1, Clue Overlap, Label Overlap, Avg."""
    header = [
        "Method",
        "Modality",
        "LLM",
        "Model size",
        "Accuracy (%)",
        "F1-score (%)",
        "Clue Overlap (1-10)",
        "Label Overlap (1-10)",
        "Avg",
    ]
    all_rows = [*rows, PAPER_DEEMO_LLAMA] if include_paper else list(rows)
    body = [
        [
            r.method,
            r.modality,
            r.llm,
            r.size,
            _num(r.accuracy),
            _num(r.f1),
            _num(r.clue_overlap),
            _num(r.label_overlap),
            _num(r.avg),
        ]
        for r in all_rows
    ]
    return _markdown(header, body)


def metrics_markdown(metrics: ClassificationMetrics) -> str:
    """Summary line, per-class table and the confusion matrix (gold rows x predicted columns) as markdown."""
    summary = _markdown(
        ["N", "Accuracy (%)", "Weighted F1 (%)", "Macro F1 (%)", "UAR (%)", "Unparseable"],
        [
            [
                str(metrics.n),
                _num(100 * metrics.accuracy),
                _num(100 * metrics.weighted_f1),
                _num(100 * metrics.macro_f1),
                _num(100 * metrics.uar),
                f"{metrics.n_unparseable} ({100 * metrics.unparseable_rate:.2f}%)",
            ]
        ],
    )
    per_class = _markdown(
        ["Class", "Precision (%)", "Recall (%)", "F1 (%)", "Support", "Predicted"],
        [
            [
                label,
                _num(100 * m.precision),
                _num(100 * m.recall),
                _num(100 * m.f1),
                str(m.support),
                str(m.predicted),
            ]
            for label, m in metrics.per_class.items()
        ],
    )
    confusion = _markdown(
        ["gold \\ predicted", *metrics.confusion_columns],
        [
            [label, *(str(int(v)) for v in row)]
            for label, row in zip(metrics.labels, metrics.confusion, strict=True)
        ],
    )
    return f"{summary}\n{per_class}\n{confusion}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, ClassificationMetrics):
        return value.to_dict()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to metrics JSON")


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (numpy values and ``ClassificationMetrics`` allowed)."""

    def write(f) -> None:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=_jsonable)
        f.write("\n")

    write_atomic(path, write)


def write_jsonl_atomic(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write one JSON object per line atomically."""

    def write(f) -> None:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    write_atomic(path, write)


def write_metrics_json(
    metrics: ClassificationMetrics, path: str | os.PathLike, extra: Mapping[str, Any] | None = None
) -> None:
    """``metrics.to_dict()`` plus ``extra`` (e.g. checkpoint, config, decoding settings) as one JSON file."""
    payload = metrics.to_dict()
    if extra:
        clash = set(extra) & set(payload)
        if clash:
            raise ValueError(f"extra keys {sorted(clash)} would overwrite metric fields; rename them")
        payload.update(extra)
    write_json_atomic(payload, path)
