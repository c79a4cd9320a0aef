"""ImageBind audio tower in NNX vs a torch reference made of torch's own layers, via the checkpoint mapping."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_params import imagebind_audio_params_from_torch

from deemo_jax.convert.torch_reference import ImageBindAudioReference, randomize_
from deemo_jax.models.imagebind_audio import ImageBindAudio, ImageBindAudioConfig
from deemo_jax.models.layers import drop_path

CONFIG = ImageBindAudioConfig.tiny()


@pytest.fixture(scope="module")
def pair():
    c = CONFIG
    ref = randomize_(
        ImageBindAudioReference(width=c.width, depth=c.depth, heads=c.num_heads, mlp_dim=c.mlp_dim, out_dim=c.out_dim),
        seed=4,
    )
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ImageBindAudio(c, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, imagebind_audio_params_from_torch(sd, c)))
    model = nnx.merge(graphdef, state)
    forward = nnx.jit(lambda m, x, rngs=None: m(x, rngs=rngs))
    return ref, model, forward


@pytest.fixture(scope="module")
def fbank():
    return np.random.default_rng(0).normal(size=(3, 1, 128, 204)).astype(np.float32)


def test_matches_torch_reference(pair, fbank):
    ref, model, forward = pair
    with torch.no_grad():
        want = ref(torch.from_numpy(fbank)).numpy()
    got = np.asarray(forward(model, jnp.asarray(fbank)))
    assert got.shape == (3, CONFIG.out_dim) == want.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 20.0, rtol=1e-5)
    diff = float(np.max(np.abs(got - want)))
    print(f"ImageBind audio vs torch reference: max abs diff {diff:.2e} (values up to {np.abs(want).max():.2f})")
    assert diff <= 1e-5
    # The squeezed [N, 128, 204] input is the same computation.
    np.testing.assert_array_equal(np.asarray(forward(model, jnp.asarray(fbank[:, 0]))), got)


def test_drop_path_only_with_rngs(pair, fbank):
    _, model, forward = pair
    x = jnp.asarray(fbank)
    deterministic = np.asarray(forward(model, x))
    rngs = [nnx.Rngs(dropout=jax.random.key(seed, impl="rbg")) for seed in (1, 1)]
    train_a, train_b = (np.asarray(forward(model, x, r)) for r in rngs)
    assert np.abs(train_a - deterministic).max() > 1e-3
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(np.asarray(forward(model, x)), deterministic)
    assert [b.drop_path_rate for b in model.blocks] == [0.0, 0.1]


def test_drop_path_statistics():
    ones = jnp.ones((20000, 1, 1))
    out = np.asarray(drop_path(ones, 0.25, nnx.Rngs(dropout=0)))
    np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float((out == 0).mean()) - 0.25) < 0.02
    np.testing.assert_array_equal(np.asarray(drop_path(ones, 0.25, None)), np.asarray(ones))


def test_attention_impl_reaches_the_attention():
    config = dataclasses.replace(CONFIG, attention_impl="flash")  # an unknown name: the dispatcher must see it
    with pytest.raises(ValueError, match=r"attention implementation must be one of .*got 'flash'"):
        nnx.eval_shape(lambda: ImageBindAudio(config, rngs=nnx.Rngs(0))(jnp.zeros((1, 1, 128, 204))))


@pytest.mark.parametrize("shape", [(2, 1, 128, 200), (2, 2, 128, 204), (128, 204)])
def test_rejects_bad_fbank(shape):
    model = nnx.eval_shape(lambda: ImageBindAudio(CONFIG, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=rf"expected fbank \[N, 1, 128, 204\].*got shape \({shape[0]}, "):
        model(jnp.zeros(shape))


def test_huge_parameter_count_and_logit_scale():
    config = ImageBindAudioConfig.huge()
    abstract = nnx.eval_shape(lambda: ImageBindAudio(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(int(np.prod(x.shape)) for x in leaves) == 86_235_648
    assert not jax.tree.leaves(nnx.state(abstract, nnx.Not(nnx.Param)))  # logit scale is a constant, not state
    assert config.patch_grid == (12, 19) and config.num_tokens == 229
    assert math.isclose(math.log(config.logit_scale), 2.995732, rel_tol=1e-6)
    assert np.allclose(config.drop_path_rates(), np.linspace(0, 0.1, 12))
