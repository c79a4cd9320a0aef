"""Strict key checking shared by every PyTorch -> NNX mapping.

A mapping declares the torch keys it needs (with shapes) and the patterns it knows to be ignorable; anything
else is an error that lists *all* offending keys at once, never a silent ``strict=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------------------------ mismatch report
ShapeMismatch = tuple[str, tuple[int, ...], tuple[int, ...]]  # (key, expected/target shape, actual/stored shape)


def mismatch_report(
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    shape_mismatches: Sequence[ShapeMismatch] = (),
    *,
    missing_label: str = "missing keys",
    unexpected_label: str = "unexpected keys",
    expected_label: str = "expected",
    actual_label: str = "got",
    limit: int = 12,
) -> str:
    """The one "missing / unexpected / shape mismatch" message of every strict comparison of two key sets.

    Used by the torch-key check of the converters (:class:`CheckpointKeyError`), by the loading of converted
    directories and by the training checkpoints; the labels name the two sides in the caller's terms. Returns
    "" when there is nothing to report; lists are previewed (``limit`` entries) with their full count.
    """
    parts = []
    if missing:
        parts.append(f"{len(missing)} {missing_label}: {_preview(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} {unexpected_label}: {_preview(unexpected, limit)}")
    if shape_mismatches:
        items = [f"{k}: {expected_label} {tuple(e)}, {actual_label} {tuple(a)}" for k, e, a in shape_mismatches]
        noun = "shape mismatch" if len(items) == 1 else "shape mismatches"
        parts.append(f"{len(items)} {noun}: {_preview(items, limit)}")
    return "; ".join(parts)


def compare_shapes(
    available: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]]
) -> tuple[list[str], list[str], list[ShapeMismatch]]:
    """(missing, unexpected, shape mismatches) of ``available`` against ``expected`` (key -> shape), sorted."""
    missing = sorted(k for k in expected if k not in available)
    unexpected = sorted(k for k in available if k not in expected)
    mismatched = [
        (k, tuple(expected[k]), tuple(available[k]))
        for k in sorted(expected)
        if k in available and tuple(available[k]) != tuple(expected[k])
    ]
    return missing, unexpected, mismatched


@dataclass
class CheckpointKeyError(ValueError):
    """Missing, unexpected or mis-shaped checkpoint keys, all listed."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    context: str = ""
    hint: str = ""  # how to fix it, appended to the message (the CLI sets one)

    def __str__(self) -> str:
        report = mismatch_report(self.missing, self.unexpected, self.shape_mismatches)
        if self.unexpected:
            report += " (pass --allow-unexpected if they are known to be irrelevant)"
        prefix = f"{self.context}: " if self.context else ""
        suffix = f"; {self.hint}" if self.hint else ""
        return prefix + report + suffix

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatches)


def _preview(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def check_keys(
    available: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    ignorable: Iterable[str] = (),
    *,
    allow_unexpected: bool = False,
    context: str = "",
    hint: str = "",
) -> None:
    """Compare checkpoint keys/shapes with what a mapping needs.

    Args:
      available: key -> shape of what the checkpoint holds.
      expected: key -> shape the mapping will read.
      ignorable: regular expressions (full match) for keys that may be present and are skipped on purpose.
      allow_unexpected: downgrade unknown extra keys from an error to "skipped".
      context, hint: what was compared, and how to fix a mismatch (both part of the message).
    Raises:
      CheckpointKeyError listing every problem.
    """
    patterns = [re.compile(p) for p in ignorable]
    missing, unexpected, mismatched = compare_shapes(available, expected)
    if allow_unexpected:
        unexpected = []
    unexpected = [k for k in unexpected if not any(p.fullmatch(k) for p in patterns)]
    error = CheckpointKeyError(missing, unexpected, mismatched, context=context, hint=hint)
    if error:
        raise error


def linear_kernel(weight: np.ndarray) -> np.ndarray:
    """torch ``Linear.weight`` [out, in] -> NNX kernel [in, out]."""
    return np.ascontiguousarray(np.asarray(weight).T)


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch ``Conv2d.weight`` [O, I, kH, kW] -> NNX kernel [kH, kW, I, O]."""
    return np.ascontiguousarray(np.asarray(weight).transpose(2, 3, 1, 0))


# --------------------------------------------------------------------------------------------- key tables
@dataclass(frozen=True)
class TensorRule:
    """How one torch tensor becomes one NNX leaf.

    ``target`` is the path in the module's pure dict (``None``: read and validated only, nothing stored);
    ``shape`` the torch shape the checkpoint must have; ``transform`` maps the numpy value to the NNX layout
    (and may raise ``ValueError`` to reject a value). A table ``{torch key: TensorRule}`` lets a streaming
    converter handle tensors one at a time (``converted.write_params``).
    """

    target: tuple[str | int, ...] | None
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = np.asarray


def set_path(tree: dict, path: Sequence[str | int], value) -> None:
    """``tree[p0][p1]...[pn] = value``, creating the intermediate dicts."""
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value
