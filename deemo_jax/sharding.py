"""Mesh construction and the one place where logical axis names meet mesh axes.

Every parameter carries a ``logical_axes`` tuple in its NNX metadata (e.g. ``('embed', 'mlp')``) and every
large activation is annotated with :func:`constrain`. The rules below translate those names to the physical
mesh axes ``('data', 'fsdp', 'tensor')``. Models never name mesh axes themselves.

We keep our own metadata key instead of Flax's ``sharding`` annotation because Flax 0.12 shards annotated
variables eagerly at creation, which would require a mesh for every unit test and every ``eval_shape``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated).
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: LogicalRules = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv_embed", None),  # input width of cross-attention keys/values (encoder width)
    ("norm", None),
    ("queries", None),
    ("positions", None),
    ("conv_in", None),
    ("conv_out", None),
    # Activations.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

_ACTIVE_RULES: contextvars.ContextVar[LogicalRules | None] = contextvars.ContextVar(
    "deemo_logical_rules", default=None
)


def mesh_sizes(data: int, fsdp: int, tensor: int, device_count: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes for ``device_count`` devices; one size may be -1 (filled in).

    The one check of mesh sizes: a ``ValueError`` whose message says what to set.
    """
    sizes = [data, fsdp, tensor]
    for axis, value in zip(MESH_AXES, sizes, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
            raise ValueError(f"mesh.{axis} = {value!r}: must be a positive integer or -1 (fill from the device count)")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if device_count % known:
            raise ValueError(
                f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): the fixed axes (product {known}) do not divide "
                f"the {device_count} devices; pick sizes whose product divides the device count"
            )
        sizes[sizes.index(-1)] = device_count // known
    if math.prod(sizes) != device_count:
        raise ValueError(
            f"mesh data*fsdp*tensor = {'*'.join(map(str, sizes))} = {math.prod(sizes)} but there are "
            f"{device_count} devices; set the mesh sizes so the product is {device_count} (or use -1 for one axis)"
        )
    return sizes[0], sizes[1], sizes[2]


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD-style propagation); sizes as :func:`mesh_sizes`."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(data, fsdp, tensor, len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@contextlib.contextmanager
def logical_rules(rules: LogicalRules = DEFAULT_RULES) -> Iterator[None]:
    """Activate logical->mesh rules for :func:`constrain` (use together with ``jax.set_mesh``)."""
    token = _ACTIVE_RULES.set(tuple(rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules: LogicalRules = DEFAULT_RULES) -> PartitionSpec:
    """Map a tuple of logical axis names to a PartitionSpec; unknown names or None are replicated.

    A mesh axis is used at most once per spec (later dimensions that would reuse it stay replicated).
    """
    if logical_axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical_axes:
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _spec_fits(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (keeps tiny test configs shardable)."""
    fitted = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
        size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        fitted.append(entry if axes and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def named_sharding(
    shape: Sequence[int], logical_axes: Sequence[str | None] | None, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> NamedSharding:
    return NamedSharding(mesh, _spec_fits(shape, logical_to_spec(logical_axes, rules), mesh))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op unless rules and a mesh are active."""
    rules = _ACTIVE_RULES.get()
    if rules is None:
        return x
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = _spec_fits(x.shape, logical_to_spec(logical_axes, rules), mesh)
    return jax.lax.with_sharding_constraint(x, spec)


def variable_logical_axes(variable) -> tuple[str | None, ...] | None:
    """The ``logical_axes`` metadata of an NNX variable (None when absent)."""
    return variable.get_metadata().get("logical_axes")
