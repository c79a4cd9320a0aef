"""The exact program a training run compiles, built from the config alone: nothing is read or allocated.

The trainer (trainer.py) builds these pieces concretely from data and checkpoints; the fit planner (plan.py)
lowers them from abstract values (``jax.ShapeDtypeStruct`` leaves carrying their shardings). Both go through
the same functions here - the optimizer of ``cfg.optim``, the trainable/frozen split of assembly.py, the
optimizer state of ``nnx.Optimizer(..., wrt=trainable)``, the ``data x fsdp`` batch shardings and
``step.make_train_step`` - so a plan is of the program the run compiles, not of a look-alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from deemo_jax.data.pipeline import FBANK_SHAPE, IMAGE_SIZE
from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.train.config import ConfigError
from deemo_jax.train.optimizer import make_optimizer
from deemo_jax.train.partition import (
    TrainableFilter,
    abstract_with_shardings,
    batch_sharding,
    replicated,
    state_shardings,
    unmatched_patterns,
)
from deemo_jax.train.step import make_train_step

TOKEN_KEYS = ("input_ids", "attention_mask", "labels")
MEDIA_KEYS = ("frames", "fbank")


def make_tx(cfg: ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The AdamW transformation and schedule of ``cfg.optim`` over ``cfg.train.total_steps``."""
    o = cfg.optim
    return make_optimizer(
        init_lr=o.init_lr, min_lr=o.min_lr, warmup_lr=o.warmup_lr, warmup_steps=o.warmup_steps,
        total_steps=cfg.train.total_steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        grad_clip=o.grad_clip,
    )


def abstract_split(
    cfg: ConfigDict, model_cfg: DeemoLlamaConfig
) -> tuple[nnx.GraphDef, nnx.State, nnx.State, TrainableFilter]:
    """(graphdef, trainable, frozen, filter) of the config's model, shapes only (assembly.py's split)."""
    abstract = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(cfg.seed)))
    trainable_filter = TrainableFilter(cfg.trainable)
    unmatched = unmatched_patterns(nnx.state(abstract), trainable_filter)
    if unmatched:
        raise ConfigError(f"config.trainable patterns {unmatched} select no parameter; fix them (docs/training.md)")
    graphdef, trainable, frozen = nnx.split(abstract, trainable_filter, ...)
    return graphdef, trainable, frozen, trainable_filter


def abstract_optimizer(
    graphdef: nnx.GraphDef, trainable_filter: TrainableFilter, trainable: nnx.State, frozen: nnx.State,
    tx: optax.GradientTransformation, mesh: Mesh,
) -> tuple[nnx.GraphDef, nnx.State, Any, Callable[[nnx.State, nnx.State], nnx.Optimizer]]:
    """(graphdef, abstract state, shardings, builder) of the ``nnx.Optimizer`` over the trainable parameters.

    ``builder(trainable, frozen)`` is the optimizer the trainer creates (jit it with ``out_shardings`` to
    materialise the state sharded).
    """

    def build(t: nnx.State, f: nnx.State) -> nnx.Optimizer:
        return nnx.Optimizer(nnx.merge(graphdef, t, f), tx, wrt=trainable_filter)

    opt_graphdef, opt_state = nnx.split(nnx.eval_shape(build, trainable, frozen))
    return opt_graphdef, opt_state, state_shardings(opt_state, mesh), build


def example_keys(use_video: bool, use_audio: bool) -> tuple[str, ...]:
    """The batch keys the model consumes for a run reading these modalities."""
    media = [k for k, used in zip(MEDIA_KEYS, (use_video, use_audio), strict=True) if used]
    return (*TOKEN_KEYS, *media)


def batch_shardings(mesh: Mesh, keys: tuple[str, ...]) -> dict[str, Any]:
    """``[accum, micro, ...]`` step batches: the micro-batch dim over ``data x fsdp``."""
    return {k: batch_sharding(mesh, 6 if k in MEDIA_KEYS else 3, leading=1) for k in keys}


def batch_shapes(
    keys: tuple[str, ...], *, accum: int, micro: int, max_length: int, num_frames: int, num_clips: int
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one step's global batch as the input pipeline delivers it (padded to max_length)."""
    shapes = {
        "input_ids": ((accum, micro, max_length), jnp.int32),
        "attention_mask": ((accum, micro, max_length), jnp.int32),
        "labels": ((accum, micro, max_length), jnp.int32),
        "frames": ((accum, micro, num_frames, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.uint8),
        "fbank": ((accum, micro, num_clips, 1, *FBANK_SHAPE), jnp.float32),
    }
    return {k: jax.ShapeDtypeStruct(*shapes[k]) for k in keys}


@dataclasses.dataclass
class TrainProgram:
    """A run's jitted step with abstract arguments that carry the run's shardings and dtypes."""

    step_fn: Callable
    trainable: Any  # nnx.State of ShapeDtypeStruct leaves (with shardings), like the three below
    opt_state: Any
    frozen: Any
    batch: dict[str, jax.ShapeDtypeStruct]
    module_names: list[str]

    def lower(self) -> jax.stages.Lowered:
        step = jax.ShapeDtypeStruct((), jnp.int32)
        return self.step_fn.lower(self.trainable, self.opt_state, self.frozen, self.batch, step)


def build_program(
    cfg: ConfigDict, model_cfg: DeemoLlamaConfig, mesh: Mesh, *, max_length: int, num_frames: int, num_clips: int,
) -> TrainProgram:
    """The step ``cfg`` trains with on ``mesh`` (call inside ``jax.set_mesh(mesh)`` and ``logical_rules``)."""
    graphdef, trainable, frozen, trainable_filter = abstract_split(cfg, model_cfg)
    trainable_sh, frozen_sh = state_shardings(trainable, mesh), state_shardings(frozen, mesh)
    tx, _ = make_tx(cfg)
    opt_graphdef, opt_state, opt_sh, _ = abstract_optimizer(graphdef, trainable_filter, trainable, frozen, tx, mesh)
    keys = example_keys(cfg.data.use_video, cfg.data.use_audio)
    batch_sh = batch_shardings(mesh, keys)
    accum = cfg.train.grad_accum_steps
    batch = batch_shapes(keys, accum=accum, micro=cfg.train.global_batch_size // accum, max_length=max_length,
                         num_frames=num_frames, num_clips=num_clips)
    module_names = sorted(str(k) for k in trainable.keys())
    step_fn = make_train_step(
        graphdef, opt_graphdef, seed=cfg.seed, dropout=cfg.train.dropout, module_names=module_names,
        shardings=(trainable_sh, opt_sh, frozen_sh, batch_sh), replicated=replicated(mesh),
    )
    return TrainProgram(
        step_fn=step_fn,
        trainable=abstract_with_shardings(trainable, trainable_sh),
        opt_state=abstract_with_shardings(opt_state, opt_sh),
        frozen=abstract_with_shardings(frozen, frozen_sh),
        batch={k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k]) for k, v in batch.items()},
        module_names=module_names,
    )


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of ``ShapeDtypeStruct`` leaves with shardings (its own shards)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        count = 1
        for dim in shape:
            count *= dim
        total += count * jnp.dtype(leaf.dtype).itemsize
    return total

