"""Classification metrics for emotion recognition, with an explicit policy for unparseable answers.

Policy: a prediction of ``None`` (the answer could not be parsed, see ``labels.py``) is a separate predicted
class, ``UNPARSEABLE``, that no gold example has. Hence it
- counts as wrong for accuracy;
- is a false negative of the gold example's class (it lowers that class's recall, UAR and F1);
- is never a true or false positive of any real class (no class's precision changes);
- is kept out of every average: macro and weighted averages run over the real labels only, weighted by gold
  support. This equals scikit-learn's ``*_score(gold, pred, labels=labels)`` with the unparseable
  predictions replaced by a string outside ``labels``.
A precision, recall or F1 whose denominator is 0 is 0 (scikit-learn's ``zero_division=0``).

"F1" in the Emotion-LLaMA code is the *weighted* F1; DEEMO's paper does not say which one it reports, so both
are computed. Weighted recall always equals accuracy (sum of TP over N).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

UNPARSEABLE = "unparseable"


@dataclass(frozen=True)
class ClassMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # gold examples of the class
    predicted: int  # examples predicted as the class


@dataclass(frozen=True)
class ClassificationMetrics:
    labels: tuple[str, ...]
    n: int
    accuracy: float
    per_class: dict[str, ClassMetrics]
    macro_precision: float
    macro_recall: float  # = UAR (unweighted average recall)
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    confusion: np.ndarray  # int64 [K, K + 1]: rows gold ``labels``, columns ``labels`` then UNPARSEABLE
    n_unparseable: int

    @property
    def uar(self) -> float:
        return self.macro_recall

    @property
    def unparseable_rate(self) -> float:
        return self.n_unparseable / self.n

    @property
    def confusion_columns(self) -> tuple[str, ...]:
        return (*self.labels, UNPARSEABLE)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (fractions in [0, 1], counts as ints)."""
        return {
            "labels": list(self.labels),
            "n": self.n,
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "uar": self.uar,
            "macro_f1": self.macro_f1,
            "weighted_precision": self.weighted_precision,
            "weighted_recall": self.weighted_recall,
            "weighted_f1": self.weighted_f1,
            "n_unparseable": self.n_unparseable,
            "unparseable_rate": self.unparseable_rate,
            "per_class": {
                label: {
                    "precision": m.precision,
                    "recall": m.recall,
                    "f1": m.f1,
                    "support": m.support,
                    "predicted": m.predicted,
                }
                for label, m in self.per_class.items()
            },
            "confusion": {
                "rows_gold": list(self.labels),
                "columns_predicted": list(self.confusion_columns),
                "counts": self.confusion.tolist(),
            },
            "unparseable_policy": "wrong for accuracy; a false negative of its gold class; no class TP/FP",
        }


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def confusion_matrix(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Counts ``[K, K + 1]``: row = gold label, column = predicted label, last column = unparseable (None)."""
    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {list(labels)!r}")
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length: {len(gold)} vs {len(pred)}")
    if len(gold) == 0:
        raise ValueError("no examples: gold and pred are empty")
    index = {label: i for i, label in enumerate(labels)}
    k = len(labels)
    cm = np.zeros((k, k + 1), dtype=np.int64)
    for position, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if g not in index:
            raise ValueError(f"gold[{position}] = {g!r} is not in labels {list(labels)!r}")
        if p is not None and p not in index:
            raise ValueError(
                f"pred[{position}] = {p!r} is not in labels {list(labels)!r}; "
                "pass None for an unparseable answer (deemo_jax.eval.labels.parse_label returns None)"
            )
        cm[index[g], k if p is None else index[p]] += 1
    return cm


def classification_metrics(
    gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]
) -> ClassificationMetrics:
    """Accuracy, per-class P/R/F1, macro/weighted averages, UAR, confusion matrix (policy: module doc)."""
    labels = tuple(labels)
    cm = confusion_matrix(gold, pred, labels)
    k = len(labels)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm[:, :k].sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    weights = support / n
    per_class = {
        label: ClassMetrics(
            float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]), int(predicted[i])
        )
        for i, label in enumerate(labels)
    }
    return ClassificationMetrics(
        labels=labels,
        n=n,
        accuracy=float(tp.sum() / n),
        per_class=per_class,
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        weighted_precision=float(weights @ precision),
        weighted_recall=float(weights @ recall),
        weighted_f1=float(weights @ f1),
        confusion=cm,
        n_unparseable=int(cm[:, k].sum()),
    )


def plot_confusion_matrix(
    cm: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> None:
    """Write a PNG of a ``[K, K]`` or ``[K, K + 1]`` (with the unparseable column) count matrix."""
    # matplotlib only when a plot is written (its import costs a second or two of every command's start-up)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    labels = list(labels)
    k = len(labels)
    if cm.ndim != 2 or cm.shape[0] != k or cm.shape[1] not in (k, k + 1):
        raise ValueError(f"cm must be [{k}, {k}] or [{k}, {k + 1}] for {k} labels, got shape {cm.shape}")
    columns = labels + [UNPARSEABLE] * (cm.shape[1] - k)
    fig = Figure(figsize=(1.2 * len(columns) + 2.0, 1.0 * k + 1.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for (row, col), value in np.ndenumerate(cm):
        ax.text(
            col, row, str(value), ha="center", va="center", color="white" if value > threshold else "black"
        )
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)
