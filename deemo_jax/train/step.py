"""The jitted training step: split state in, split state out, gradient accumulation as a ``lax.scan``.

State crosses the jit boundary as three ``nnx.State`` trees: ``trainable`` (the parameters selected by the
config rules), ``opt_state`` (``nnx.Optimizer`` state, only for those) and ``frozen`` (everything else). The
step returns new ``trainable`` and ``opt_state`` (both donated, updated in place in device memory); ``frozen``
is an input only, so frozen weights can never change and are never copied.

Loss: the batch of one optimizer step has leading dims ``[accum, micro]``; the loss is the exact mean over
all supervised tokens of the whole step, ``sum(token losses) / count(supervised tokens)``, whatever the
number of micro-batches (each micro-batch's gradient is of its token-loss sum divided by the step's total
count, and those gradients are summed). Dropout keys are ``fold_in(fold_in(key(seed), step), micro)``, so a
resumed run draws exactly the masks of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from deemo_jax.data.pipeline import IGNORE_INDEX

Batch = Mapping[str, jax.Array]


def token_loss_sum(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Sum of the shifted next-token cross-entropies over tokens whose label is not -100 (float32)."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0))


def supervised_count(labels: jax.Array) -> jax.Array:
    """Number of tokens that carry a next-token loss (labels shifted by one, not -100)."""
    return jnp.sum(labels[..., 1:] != IGNORE_INDEX)


def model_logits(model: nnx.Module, batch: Batch, rngs: nnx.Rngs | None) -> jax.Array:
    return model(batch["input_ids"], batch["attention_mask"], batch.get("frames"), batch.get("fbank"), rngs=rngs)


def make_train_step(
    graphdef: nnx.GraphDef,
    opt_graphdef: nnx.GraphDef,
    *,
    seed: int,
    dropout: bool,
    module_names: Sequence[str],
    shardings: tuple[Any, Any, Any, Any] | None = None,
    replicated: Any = None,
) -> Callable:
    """``step_fn(trainable, opt_state, frozen, batch, step) -> (trainable, opt_state, metrics)``, jitted.

    ``batch`` leaves are ``[accum, micro, ...]``. ``module_names`` are the top-level trainable modules whose
    gradient norms are reported (to name the culprit of a non-finite gradient). ``shardings`` =
    (trainable, opt_state, frozen, batch) sharding trees and ``replicated`` a replicated sharding; without
    them the step is jitted without explicit shardings (single device).
    """
    base_key = jax.random.key(seed)

    def micro_loss(trainable: nnx.State, frozen: nnx.State, micro: Batch, key: jax.Array, denom: jax.Array):
        model = nnx.merge(graphdef, trainable, frozen)
        rngs = nnx.Rngs(dropout=key) if dropout else None
        return token_loss_sum(model_logits(model, micro, rngs), micro["labels"]) / denom

    grad_fn = jax.value_and_grad(micro_loss)

    def step_fn(trainable: nnx.State, opt_state: nnx.State, frozen: nnx.State, batch: Batch, step: jax.Array):
        count = supervised_count(batch["labels"])
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        step_key = jax.random.fold_in(base_key, step)
        accum = batch["labels"].shape[0]

        def body(carry, xs):
            grads, loss = carry
            micro, index = xs
            value, g = grad_fn(trainable, frozen, micro, jax.random.fold_in(step_key, index), denom)
            return (jax.tree.map(jnp.add, grads, g), loss + value), None

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        (grads, loss), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (dict(batch), jnp.arange(accum)))

        model = nnx.merge(graphdef, trainable, frozen)
        optimizer = nnx.merge(opt_graphdef, opt_state)
        optimizer.update(model, grads)
        new_trainable = nnx.state(model, optimizer.wrt)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            "module_grad_norms": {name: optax.global_norm(grads[name]) for name in module_names},
            "supervised_tokens": count,
            "tokens": jnp.sum(batch["attention_mask"]),
        }
        return new_trainable, nnx.state(optimizer), metrics

    if shardings is None:
        return jax.jit(step_fn, donate_argnums=(0, 1))
    trainable_sh, opt_sh, frozen_sh, batch_sh = shardings
    return jax.jit(
        step_fn,
        in_shardings=(trainable_sh, opt_sh, frozen_sh, batch_sh, replicated),
        out_shardings=(trainable_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )
