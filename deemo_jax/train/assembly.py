"""Model assembly: abstract model -> shardings -> sharded init of the fresh parts -> converted weights.

1. ``nnx.eval_shape`` builds the model without allocating anything; every parameter's ``logical_axes``
   gives its ``NamedSharding`` on the mesh (``partition.state_shardings``).
2. Parts without a checkpoint are initialised by one jitted function whose outputs carry those shardings,
   so each device materialises only its own shards (parts that come from checkpoints are left out of the
   program and never initialised).
3. Frozen parts named in ``config.checkpoints`` are restored from their converted directories straight into
   their shardings and dtypes (``deemo_jax.convert.converted.load_converted``).
4. ``checkpoints.init_trainable`` optionally replaces trainable branches by those of a converted video-llama
   directory or of a previous run (e.g. the caption pre-training workdir: the stage-1 -> stage-2 hand-off).
5. The state is split by the config's trainable rules into ``trainable`` and ``frozen``.
6. With ``model.random_frozen`` (the demo: no pretrained encoders exist), the frozen random parts are
   snapshotted once in ``{workdir}/frozen_random/`` by :func:`snapshot_random_frozen` and read back from there
   on every later assembly (resume, evaluation, inference), so a run's model never depends on the random
   initialisers of the installed JAX version.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from deemo_jax import sharding
from deemo_jax.convert.converted import load_converted, read_manifest
from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.train import checkpointing
from deemo_jax.train.config import FROZEN_CHECKPOINTS, ConfigError
from deemo_jax.train.partition import (
    TrainableFilter,
    abstract_with_shardings,
    state_shardings,
    unmatched_patterns,
)

logger = logging.getLogger(__name__)

RANDOM_FROZEN_DIR = "frozen_random"


@dataclasses.dataclass
class AssembledModel:
    graphdef: nnx.GraphDef
    trainable: nnx.State
    frozen: nnx.State
    trainable_filter: TrainableFilter
    trainable_shardings: Any
    frozen_shardings: Any
    sources: dict[str, str]  # top-level component -> "random init" or the directory it came from

    @property
    def trainable_modules(self) -> list[str]:
        return sorted(str(k) for k in self.trainable.keys())

    def merge(self) -> DeemoLlama:
        return nnx.merge(self.graphdef, self.trainable, self.frozen)


def _pure_subset(pure: dict, names: list[str]) -> dict:
    return {name: pure[name] for name in names}


def _converted_components(directory: str) -> list[str]:
    return list(read_manifest(directory)["components"])


def assemble_model(
    cfg: ConfigDict, model_cfg: DeemoLlamaConfig, mesh: Mesh, rules: sharding.LogicalRules = sharding.DEFAULT_RULES
) -> AssembledModel:
    """Build the sharded model of ``cfg`` (call inside ``jax.set_mesh(mesh)``)."""
    seed = cfg.seed
    abstract = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(seed)))
    full_graphdef, abstract_state = nnx.split(abstract)
    trainable_filter = TrainableFilter(cfg.trainable)
    unmatched = unmatched_patterns(abstract_state, trainable_filter)
    if unmatched:
        top = sorted(str(k) for k in abstract_state.keys())
        raise ConfigError(
            f"config.trainable patterns {unmatched} select no parameter; paths start with one of {top} "
            "(e.g. 'video_qformer' or 'llama/layers/31')"
        )
    shardings = state_shardings(abstract_state, mesh, rules)
    components = sorted(str(k) for k in abstract_state.keys())

    # Which components come from converted checkpoints.
    loaded: dict[str, str] = {}
    for key, (parts, _) in FROZEN_CHECKPOINTS.items():
        directory = cfg.checkpoints[key]
        for part in parts:
            if directory and part in components:
                loaded[part] = directory
    fresh = [c for c in components if c not in loaded]

    def init() -> dict:
        state = nnx.state(DeemoLlama(model_cfg, rngs=nnx.Rngs(seed)))
        return {name: state[name] for name in fresh}

    pure: dict[str, Any] = {}
    if fresh:
        init_out = jax.jit(init, out_shardings={name: shardings[name] for name in fresh})()
        pure.update(nnx.to_pure_dict(nnx.State(init_out)))
    abstract_pure = nnx.to_pure_dict(abstract_with_shardings(abstract_state, shardings))
    by_directory: dict[str, list[str]] = {}
    for part, directory in loaded.items():
        by_directory.setdefault(directory, []).append(part)
    for directory, parts in by_directory.items():
        pure.update(load_converted(directory, _pure_subset(abstract_pure, parts), component=parts, config=model_cfg))
    sources = {c: loaded.get(c, "random init") for c in components}

    if cfg.checkpoints.init_trainable:
        replaced = _init_trainable(cfg.checkpoints.init_trainable, abstract_pure, trainable_filter, model_cfg)
        pure.update(replaced)
        sources.update({c: cfg.checkpoints.init_trainable for c in replaced})

    state = abstract_state
    nnx.replace_by_pure_dict(state, pure)
    model = nnx.merge(full_graphdef, state)
    graphdef, trainable, frozen = nnx.split(model, trainable_filter, ...)
    trainable_sh = state_shardings(trainable, mesh, rules)
    frozen_sh = state_shardings(frozen, mesh, rules)
    asm = AssembledModel(graphdef, trainable, frozen, trainable_filter, trainable_sh, frozen_sh, sources)
    snapshot = _random_frozen_dir(cfg)
    if snapshot is not None and snapshot.is_dir():
        names = _random_frozen_names(asm)
        target = abstract_with_shardings(
            {n: nnx.to_pure_dict(frozen[n]) for n in names}, {n: nnx.to_pure_dict(frozen_sh[n]) for n in names}
        )
        nnx.replace_by_pure_dict(frozen, ocp.StandardCheckpointer().restore(snapshot, target))
        sources.update({n: str(snapshot) for n in names})
    return asm


def _random_frozen_dir(cfg: ConfigDict) -> Path | None:
    if not cfg.model.random_frozen:
        return None
    return Path(os.path.expanduser(cfg.workdir)).absolute() / RANDOM_FROZEN_DIR


def _random_frozen_names(asm: AssembledModel) -> list[str]:
    """Components whose frozen parameters came from the random initialisation."""
    return sorted(n for n, source in asm.sources.items() if source == "random init" and n in asm.frozen)


def snapshot_random_frozen(cfg: ConfigDict, asm: AssembledModel) -> None:
    """Save the randomly initialised frozen parameters once (``model.random_frozen`` runs only).

    Every process must call this (Orbax writes each process's shards).
    """
    snapshot = _random_frozen_dir(cfg)
    names = _random_frozen_names(asm)
    if snapshot is None or snapshot.is_dir() or not names:
        return
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(snapshot, {n: nnx.to_pure_dict(asm.frozen[n]) for n in names})
    checkpointer.wait_until_finished()


def _init_trainable(source: str, abstract_pure: dict, trainable: TrainableFilter, model_cfg: DeemoLlamaConfig) -> dict:
    """Trainable components from a converted video-llama directory or a previous run's latest checkpoint."""
    path = Path(source).expanduser()
    wanted = [c for c in abstract_pure if trainable.matches(c + "/")]
    if (path / "manifest.json").is_file():
        parts = [c for c in _converted_components(str(path)) if c in wanted]
        if not parts:
            raise ConfigError(
                f"config.checkpoints.init_trainable = {source!r} holds {_converted_components(str(path))}, none of "
                f"the trainable components {wanted}"
            )
        return load_converted(path, _pure_subset(abstract_pure, parts), component=parts, config=model_cfg)
    restored = checkpointing.restore_trainable_from_run(path, {c: abstract_pure[c] for c in wanted})
    if not restored:
        raise ConfigError(
            f"config.checkpoints.init_trainable = {source!r}: its latest checkpoint holds none of the trainable "
            f"components {wanted}"
        )
    return restored
