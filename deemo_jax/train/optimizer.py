"""AdamW with the Video-LLaMA/AffectGPT parameter groups and learning-rate schedule (reference_spec §10.4).

- Weight decay applies to trainable tensors with ndim >= 2 whose path names no bias/norm (so query tokens and
  position-embedding tables decay, LayerNorm scales and biases do not), as in ``runner_base.optimizer``.
- ``linear_warmup_cosine``: ``warmup_lr -> init_lr`` linearly over ``warmup_steps``, then
  ``min_lr + (init_lr - min_lr) * 0.5 * (1 + cos(pi * step / total_steps))`` with no re-normalisation for the
  warm-up, exactly like ``linear_warmup_cosine_lr`` (minus AffectGPT's epoch-offset quirk, which skips warm-up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

NO_DECAY_NAMES = ("bias", "scale", "norm", "ln", "bn")


def linear_warmup_cosine(
    init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    if total_steps <= 0:
        raise ValueError(f"optim.total_steps must be > 0, got {total_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1)
        cosine = (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * step / total_steps)) + min_lr
        return jnp.where(step < warmup_steps, jnp.minimum(init_lr, warm), cosine)

    return schedule


def _path_names(path: Sequence) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def decay_mask(params):
    """True for leaves that get weight decay: ndim >= 2 and no bias/norm name in the path."""

    def decide(path, leaf):
        names = [n.lower() for n in _path_names(path)]
        return leaf.ndim >= 2 and not any(part in names for part in NO_DECAY_NAMES) and not any(
            n.endswith(("layernorm", "_norm", "norm1", "norm2")) for n in names
        )

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(
    *,
    init_lr: float,
    min_lr: float,
    warmup_lr: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float,
    b1: float,
    b2: float,
    eps: float,
    grad_clip: float | None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule). Gradient clipping by global norm runs before AdamW."""
    schedule = linear_warmup_cosine(init_lr, min_lr, warmup_lr, warmup_steps, total_steps)
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule
