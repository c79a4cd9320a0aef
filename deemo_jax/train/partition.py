"""What trains (config pattern rules) and where every piece of state lives (logical axes -> NamedSharding).

Trainable rules are regular expressions over parameter paths written ``a/b/0/c`` (the ``DeemoLlama``
attribute names first, e.g. ``video_qformer/layer/0/attention/query/kernel``). A rule matches a parameter
when it matches a prefix of its path that ends at a ``/`` boundary, so ``video_qformer`` selects the whole
module, ``llama/layers/(30|31)`` the last two LLM layers and ``llama_proj`` does not select
``audio_llama_proj``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deemo_jax import sharding
from deemo_jax.sharding import LogicalRules


def path_string(path: Sequence[Any]) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


class TrainableFilter:
    """NNX filter: an ``nnx.Param`` whose path matches one of ``patterns`` (see the module docstring)."""

    def __init__(self, patterns: Sequence[str]):
        if isinstance(patterns, str):
            raise ValueError("trainable patterns must be a list of regular expressions, not one string")
        self.patterns = tuple(patterns)
        try:
            self._regexes = tuple(re.compile(rf"(?:{p})(?:/|$)") for p in self.patterns)
        except re.error as e:
            raise ValueError(f"trainable pattern is not a valid regular expression: {e}") from None

    def matches(self, path: str) -> bool:
        return any(r.match(path) for r in self._regexes)

    def __call__(self, path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and self.matches(path_string(path))

    def __repr__(self) -> str:
        return f"TrainableFilter({list(self.patterns)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainableFilter) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)


def unmatched_patterns(state: nnx.State, trainable: TrainableFilter) -> list[str]:
    """The patterns that select no parameter of ``state`` (most likely a typo in the config)."""
    paths = [path_string(p) for p, v in state.flat_state() if isinstance(v, nnx.Param)]
    return [p for p in trainable.patterns if not any(TrainableFilter([p]).matches(x) for x in paths)]


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules = sharding.DEFAULT_RULES) -> Any:
    """A tree like ``state`` with a ``NamedSharding`` per ``nnx.Variable`` (from its ``logical_axes``).

    Works for model states and optimizer states alike (``OptVariable`` inherits the parameter's metadata;
    scalars such as Adam's count are replicated). Arrays that are not Variables are replicated too.
    """

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            value = x.get_value()
            return x.replace(sharding.named_sharding(value.shape, sharding.variable_logical_axes(x), mesh, rules))
        if hasattr(x, "shape"):
            return NamedSharding(mesh, PartitionSpec())
        return x

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, *, leading: int = 0) -> NamedSharding:
    """Batch dim (after ``leading`` unsharded dims, e.g. the micro-batch axis) over ``data x fsdp``."""
    spec = (None,) * leading + (("data", "fsdp"),) + (None,) * (ndim - leading - 1)
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves carrying the given shardings (Orbax / converted-checkpoint targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
