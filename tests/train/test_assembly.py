"""Model assembly: the demo's random frozen parts are snapshotted once and read back on re-assembly."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from train_helpers import load_config

from deemo_jax import sharding
from deemo_jax.train.assembly import RANDOM_FROZEN_DIR, assemble_model, snapshot_random_frozen
from deemo_jax.train.config import model_config


def _assemble(cfg):
    mesh = sharding.make_mesh(1, 1, 1)
    with jax.set_mesh(mesh), sharding.logical_rules():
        return assemble_model(cfg, model_config(cfg, vocab_size=64), mesh)


def test_random_frozen_parts_come_back_from_the_snapshot(tmp_path):
    cfg = load_config("instruct.py", "demo")
    with cfg.unlocked():
        cfg.workdir = str(tmp_path / "run")
        cfg.model.overrides = {"llm": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}}
    first = _assemble(cfg)
    snapshot_random_frozen(cfg, first)
    assert (tmp_path / "run" / RANDOM_FROZEN_DIR).is_dir()

    # Another seed initialises everything differently; the frozen encoders must still be the snapshot's.
    with cfg.unlocked():
        cfg.seed = cfg.seed + 1
    second = _assemble(cfg)
    assert "visual_encoder" in second.frozen and second.sources["visual_encoder"].endswith(RANDOM_FROZEN_DIR)
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(first.frozen)), jax.tree.leaves(nnx.to_pure_dict(second.frozen)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Trainable parts are not in the snapshot: they follow the new seed.
    first_q = np.asarray(nnx.to_pure_dict(first.trainable)["video_qformer"]["query_tokens"])
    second_q = np.asarray(nnx.to_pure_dict(second.trainable)["video_qformer"]["query_tokens"])
    assert not np.array_equal(first_q, second_q)
