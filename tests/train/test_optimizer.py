"""AdamW groups and the warm-up + cosine schedule (reference_spec §10.4)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deemo_jax.models.deemo_llama import PAPER_TRAINABLE, DeemoLlama, DeemoLlamaConfig
from deemo_jax.train.optimizer import decay_mask, linear_warmup_cosine, make_optimizer
from deemo_jax.train.partition import TrainableFilter


def test_schedule_values():
    schedule = linear_warmup_cosine(3e-5, 1e-5, 1e-6, warmup_steps=1000, total_steps=10_000)
    assert float(schedule(0)) == pytest.approx(1e-6)
    assert float(schedule(500)) == pytest.approx(1e-6 + (3e-5 - 1e-6) * 0.5)
    assert float(schedule(999)) == pytest.approx(1e-6 + (3e-5 - 1e-6) * 0.999)
    # After warm-up: the cosine of the *total* step (no re-normalisation), as in linear_warmup_cosine_lr.
    assert float(schedule(1000)) == pytest.approx(1e-5 + 2e-5 * 0.5 * (1 + math.cos(math.pi * 0.1)), rel=1e-6)
    assert float(schedule(5000)) == pytest.approx(2e-5, rel=1e-6)
    assert float(schedule(10_000)) == pytest.approx(1e-5, rel=1e-6)
    with pytest.raises(ValueError, match="total_steps"):
        linear_warmup_cosine(3e-5, 1e-5, 1e-6, 10, 0)


@pytest.fixture(scope="module")
def trainable_params():
    cfg = DeemoLlamaConfig.tiny()
    abstract = nnx.eval_shape(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(abstract, TrainableFilter(PAPER_TRAINABLE), ...)
    return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), nnx.to_pure_dict(params))


def test_decay_mask_groups(trainable_params):
    mask = decay_mask(trainable_params)
    assert mask["video_qformer"]["query_tokens"] and mask["audio_qformer"]["query_tokens"]
    assert mask["video_frame_position_embedding"]["embedding"] and mask["audio_position_embedding"]["embedding"]
    assert mask["llama_proj"]["kernel"] and not mask["llama_proj"]["bias"]
    layer = mask["video_qformer"]["layer"][0]
    assert layer["attention"]["query"]["kernel"] and not layer["attention"]["query"]["bias"]
    assert not layer["attention"]["output"]["layernorm"]["scale"]
    assert not layer["attention"]["output"]["layernorm"]["bias"]
    assert not mask["video_qformer"]["embeddings_layernorm"]["scale"]


def test_weight_decay_applies_only_to_the_decay_group(trainable_params):
    tx, schedule = make_optimizer(init_lr=0.1, min_lr=0.1, warmup_lr=0.1, warmup_steps=0, total_steps=10,
                                  weight_decay=0.5, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    state = jax.jit(tx.init)(trainable_params)
    zeros = jax.tree.map(jnp.zeros_like, trainable_params)
    updates, _ = jax.jit(tx.update)(zeros, state, trainable_params)
    new = optax.apply_updates(trainable_params, updates)
    # Zero gradients: only decoupled weight decay moves parameters, by -lr * wd * p.
    np.testing.assert_allclose(new["video_qformer"]["query_tokens"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new["audio_position_embedding"]["embedding"], 0.95, rtol=1e-6)
    np.testing.assert_array_equal(new["video_qformer"]["embeddings_layernorm"]["scale"], 1.0)
    np.testing.assert_array_equal(new["llama_proj"]["bias"], 1.0)


def test_gradient_clipping_by_global_norm():
    params = {"w": jnp.zeros((2, 2))}
    # b1 = b2 = 0 and eps = 1: Adam's step is g / (|g| + 1), so it shows the gradient's size.
    kw = dict(init_lr=1.0, min_lr=1.0, warmup_lr=1.0, warmup_steps=0, total_steps=10, weight_decay=0.0,
              b1=0.0, b2=0.0, eps=1.0)
    grads = {"w": jnp.full((2, 2), 10.0)}  # global norm 20
    clipped, _ = make_optimizer(**kw, grad_clip=1.0)
    plain, _ = make_optimizer(**kw, grad_clip=0.0)
    update, _ = clipped.update(grads, clipped.init(params), params)
    np.testing.assert_allclose(update["w"], -0.5 / 1.5, rtol=1e-6)  # each entry clipped to 10 / 20 = 0.5
    update, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(update["w"], -10 / 11, rtol=1e-6)
