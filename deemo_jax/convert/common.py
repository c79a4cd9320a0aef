"""Strict key checking shared by every PyTorch -> NNX mapping.

A mapping declares the torch keys it needs (with shapes) and the patterns it knows to be ignorable; anything
else is an error that lists *all* offending keys at once, never a silent ``strict=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CheckpointKeyError(ValueError):
    """Missing, unexpected or mis-shaped checkpoint keys, all listed."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    context: str = ""

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {_preview(self.missing)}")
        if self.unexpected:
            parts.append(
                f"{len(self.unexpected)} unexpected keys: {_preview(self.unexpected)} "
                "(pass --allow-unexpected if they are known to be irrelevant)"
            )
        for key, expected, actual in self.shape_mismatches[:10]:
            parts.append(f"shape mismatch for {key}: expected {expected}, got {actual}")
        if len(self.shape_mismatches) > 10:
            parts.append(f"... and {len(self.shape_mismatches) - 10} more shape mismatches")
        prefix = f"{self.context}: " if self.context else ""
        return prefix + "; ".join(parts)

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
) -> None:
    """Compare checkpoint keys/shapes with what a mapping needs.

    Args:
      available: key -> shape of what the checkpoint holds.
      expected: key -> shape the mapping will read.
      ignorable: regular expressions (full match) for keys that may be present and are skipped on purpose.
      allow_unexpected: downgrade unknown extra keys from an error to "skipped".
    Raises:
      CheckpointKeyError listing every problem.
    """
    patterns = [re.compile(p) for p in ignorable]
    error = CheckpointKeyError(context=context)
    error.missing = sorted(k for k in expected if k not in available)
    if not allow_unexpected:
        error.unexpected = sorted(
            k for k in available if k not in expected and not any(p.fullmatch(k) for p in patterns)
        )
    error.shape_mismatches = [
        (k, tuple(expected[k]), tuple(available[k]))
        for k in sorted(expected)
        if k in available and tuple(available[k]) != tuple(expected[k])
    ]
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
    converter handle tensors one at a time with :func:`convert_tensor`.
    """

    target: tuple[str | int, ...] | None
    shape: tuple[int, ...]
    transform: Callable[[np.ndarray], np.ndarray] = np.asarray


def convert_tensor(rule: TensorRule, value: np.ndarray, dtype=None) -> np.ndarray:
    """Apply one rule (shape already checked) and cast to the storage ``dtype`` when given."""
    out = np.asarray(rule.transform(np.asarray(value)))
    return out if dtype is None else out.astype(dtype)


def set_path(tree: dict, path: Sequence[str | int], value) -> None:
    """``tree[p0][p1]...[pn] = value``, creating the intermediate dicts."""
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def params_from_table(
    state_dict: Mapping[str, np.ndarray],
    table: Mapping[str, TensorRule],
    ignorable: Iterable[str] = (),
    *,
    in_scope: Callable[[str], bool] = lambda key: True,
    dtype=None,
    context: str = "",
) -> dict:
    """Check the keys of ``state_dict`` that are ``in_scope`` against ``table``, then build the pure dict.

    Keys outside the scope belong to other components of a combined checkpoint and are not looked at.
    """
    available = {k: tuple(np.shape(v)) for k, v in state_dict.items() if in_scope(k)}
    check_keys(available, {k: r.shape for k, r in table.items()}, ignorable, context=context)
    out: dict = {}
    for key, rule in table.items():
        value = convert_tensor(rule, state_dict[key], dtype)
        if rule.target is not None:
            set_path(out, rule.target, value)
    return out
