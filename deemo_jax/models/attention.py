"""Scaled dot-product attention of every model here: XLA's, cuDNN's, or a per-head loop for CPUs.

``jax.nn.dot_product_attention`` without a fused kernel (XLA:CPU) materialises the scores of every batch row
and head at once, ``[B, N, T, S]``, and streams them through memory three times (scores, softmax, weighted
sum): at B=4, N=16, T=S=512 that is 64 MiB per layer and ran 3x slower than PyTorch's flash-style CPU SDPA
(BENCHMARKS.md). The ``"looped"`` implementation computes the same function one key/value head at a time under
``lax.map``: each iteration's scores ``[B, R, T, S]`` (R query heads per key/value head) are small enough to
stay in cache, and the loop adds no work. It is the default on CPU; on GPUs XLA's fused path or cuDNN
(``"cudnn"``) is used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The valid ``implementation`` names, checked only here; train/config.py validates a run's choice against them.
IMPLEMENTATIONS = (None, "xla", "cudnn", "looped")


def resolve_implementation(implementation: str | None) -> str | None:
    """``None`` means: ``"looped"`` on the CPU backend, XLA's default elsewhere."""
    if implementation is None:
        return "looped" if jax.default_backend() == "cpu" else "xla"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    is_causal: bool,
    implementation: str | None = None,
) -> jax.Array:
    """Softmax attention of ``q`` [B, T, N, H] over ``k``/``v`` [B, S, K, H] (N a multiple of K: grouped query).

    ``mask``: bool, broadcastable to ``[B, 1, T, S]`` (True = may attend); ``is_causal``: query t attends to
    keys s <= t. Scale ``H ** -0.5``, softmax in float32, output [B, T, N, H] in ``q.dtype``. Rows whose keys
    are all masked get a uniform softmax (finite output), as in ``jax.nn.dot_product_attention``.
    """
    implementation = resolve_implementation(implementation)
    if implementation != "looped" or q.shape[1] == 1:  # one query (a decode step): nothing to gain
        xla_impl = None if implementation in ("xla", "looped") else implementation
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, implementation=xla_impl)
    if mask is not None and mask.ndim == 4 and mask.shape[1] != 1:
        raise ValueError(f"looped attention takes a mask shared by the heads ([B, 1, T, S]), got {mask.shape}")
    return _looped_attention(q, k, v, mask, is_causal)


def _looped_attention(q, k, v, mask, is_causal):
    batch, length, num_heads, head_dim = q.shape
    num_kv_heads, key_length = k.shape[2], k.shape[1]
    per_kv = num_heads // num_kv_heads
    allowed = None  # [B or 1, R*T, S] where keys may be attended; None: everywhere (the encoders)
    if is_causal or mask is not None:
        allowed = jnp.ones((1, length, key_length), jnp.bool_)
        if is_causal:
            allowed = jnp.tril(allowed)
        if mask is not None:
            allowed = allowed & jnp.broadcast_to(mask, (mask.shape[0], 1, length, key_length))[:, 0]
        allowed = jnp.tile(allowed, (1, per_kv, 1))
    # The R query heads sharing a key/value head are stacked along the query axis, so that each iteration is
    # a plain batched matmul (a 5-D layout made the backward pass 1.7x slower): q [K, B, R*T, H], k/v [K, B, S, H].
    q_groups = q.reshape(batch, length, num_kv_heads, per_kv, head_dim).transpose(2, 0, 3, 1, 4)
    q_groups = q_groups.reshape(num_kv_heads, batch, per_kv * length, head_dim)
    k_heads, v_heads = k.transpose(2, 0, 1, 3), v.transpose(2, 0, 1, 3)
    scale = head_dim**-0.5

    def one_kv_head(qkv):
        qh, kh, vh = qkv
        scores = jnp.einsum("bth,bsh->bts", qh, kh, preferred_element_type=jnp.float32) * scale
        if allowed is not None:
            scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(vh.dtype)
        return jnp.einsum("bts,bsh->bth", probs, vh)

    out = jax.lax.map(one_kv_head, (q_groups, k_heads, v_heads))  # [K, B, R*T, H]
    out = out.reshape(num_kv_heads, batch, per_kv, length, head_dim)
    return out.transpose(1, 3, 0, 2, 4).reshape(batch, length, num_heads, head_dim)
