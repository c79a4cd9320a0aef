"""The per-head (``"looped"``) attention computes exactly what XLA's ``jax.nn.dot_product_attention`` does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deemo_jax.models import attention


def _qkv(batch=2, q_len=6, kv_len=6, heads=4, kv_heads=2, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_len, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def _both(q, k, v, mask, is_causal):
    kw = dict(mask=mask, is_causal=is_causal)
    expected = jax.nn.dot_product_attention(q, k, v, **kw)
    looped = attention.dot_product_attention(q, k, v, implementation="looped", **kw)
    return np.asarray(expected), np.asarray(looped)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_causal_with_padding_matches_xla(heads, kv_heads):
    q, k, v = _qkv(heads=heads, kv_heads=kv_heads)
    real = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]], bool)  # left- and right-padded rows
    expected, looped = _both(q, k, v, real[:, None, None, :], is_causal=True)
    assert np.isfinite(looped).all()  # fully masked rows (left padding) stay finite, as in XLA's
    np.testing.assert_allclose(looped, expected, atol=1e-6)


def test_explicit_mask_with_longer_keys_matches_xla():
    # A KV-cache prefill: 3 queries against 7 slots, causal in slot order, some slots empty.
    q, k, v = _qkv(q_len=3, kv_len=7)
    slot = np.arange(7)
    mask = (slot[None, :] <= (2 + np.arange(3))[:, None])[None, None] & (slot < 5)[None, None, None, :]
    expected, looped = _both(q, k, v, jnp.asarray(mask), is_causal=False)
    np.testing.assert_allclose(looped, expected, atol=1e-6)


def test_gradients_match_xla():
    q, k, v = _qkv()
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)[:, None, None, :]

    def loss(impl):
        def f(q, k, v):
            out = attention.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=impl)
            return jnp.sum(out * jnp.cos(out))

        return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

    for looped, xla in zip(loss("looped"), loss("xla"), strict=True):
        np.testing.assert_allclose(np.asarray(looped), np.asarray(xla), atol=1e-5)


def test_bfloat16_close_to_xla():
    q, k, v = (t.astype(jnp.bfloat16) for t in _qkv())
    expected, looped = _both(q, k, v, None, is_causal=True)
    assert looped.dtype == jnp.bfloat16
    np.testing.assert_allclose(looped.astype(np.float32), expected.astype(np.float32), atol=2e-2)


def test_default_is_looped_on_cpu_and_bad_inputs_raise():
    assert attention.resolve_implementation(None) == "looped"  # the test machines are CPU-only
    assert attention.resolve_implementation("cudnn") == "cudnn"
    with pytest.raises(ValueError, match="must be one of"):
        attention.resolve_implementation("flash")
    q, k, v = _qkv()
    per_head_mask = jnp.ones((2, 4, 6, 6), bool)
    with pytest.raises(ValueError, match=r"shared by the heads"):
        attention.dot_product_attention(q, k, v, mask=per_head_mask, is_causal=False, implementation="looped")
