"""AdamW with the Video-LLaMA/AffectGPT parameter groups and learning-rate schedule (reference_spec §10.4).

- Weight decay applies to trainable tensors with ndim >= 2 that are neither biases nor inside a norm layer (so
  query tokens and position-embedding tables decay, LayerNorm scales and biases do not), as in
  ``runner_base.optimizer`` (ndim >= 2 and no "bias"/"ln"/"bn" in the torch name).
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


def linear_warmup_cosine(
    init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1)
        cosine = (init_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * step / total_steps)) + min_lr
        return jnp.where(step < warmup_steps, jnp.minimum(init_lr, warm), cosine)

    return schedule


def _path_names(path: Sequence) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))).lower() for k in path]


def decays(path: Sequence, leaf) -> bool:
    """Whether a parameter gets weight decay: ndim >= 2, not a bias, not inside a norm layer."""
    names = _path_names(path)
    return leaf.ndim >= 2 and "bias" not in names and not any("norm" in n or n == "ln_vision" for n in names)


def decay_mask(params):
    """Tree of booleans like ``params``: True where :func:`decays`."""
    return jax.tree_util.tree_map_with_path(decays, params)


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
    """(transformation, schedule). Gradient clipping by global norm (``grad_clip`` > 0) runs before AdamW.

    The schedule is evaluated at the optimizer's step count (0 for the first update).
    """
    schedule = linear_warmup_cosine(init_lr, min_lr, warmup_lr, warmup_steps, total_steps)
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule
