"""Small building blocks shared by every model file.

Conventions (see docs/DESIGN.md):
- kernels are ``[in, out]`` (torch ``Linear.weight.T``), every parameter carries ``logical_axes`` metadata;
- ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype;
- normalisation layers always compute in float32 and cast back to the input dtype (like LAVIS' fp32 LayerNorm),
  so bf16 runs of frozen parts stay numerically close to the fp32 reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deemo_jax.models import attention
from deemo_jax.sharding import constrain

Dtype = Any

_BLD = ("activation_batch", "activation_length", "activation_embed")
_BLM = ("activation_batch", "activation_length", "activation_mlp")
_BLHD = ("activation_batch", "activation_length", "activation_heads", None)

DEFAULT_KERNEL_INIT = nnx.initializers.normal(0.02)


def dense(
    in_features: int,
    out_features: int,
    logical_axes: Sequence[str | None],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    kernel_init=DEFAULT_KERNEL_INIT,
) -> nnx.Linear:
    """``nnx.Linear`` whose kernel/bias carry logical axis names (bias takes the output axis)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kernel_init,
        rngs=rngs,
        kernel_metadata={"logical_axes": tuple(logical_axes)},
        bias_metadata={"logical_axes": (logical_axes[-1],)},
    )


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def __init__(self, num_features: int, *, eps: float, param_dtype: Dtype = jnp.float32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype), logical_axes=("norm",))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """[..., L, H*D] -> [..., L, H, D] (torch head-major packing)."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: jax.Array) -> jax.Array:
    """[..., L, H, D] -> [..., L, H*D]."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def drop_path(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Per-sample stochastic depth (timm ``drop_path``): zero the branch of whole samples, rescale the rest.

    A no-op (``x`` itself) when ``rngs`` is None (eval) or ``rate`` is 0.
    """
    if rngs is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rngs.dropout(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def encoder_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, implementation: str | None
) -> jax.Array:
    """Unmasked multi-head attention of the ViT encoders on packed ``[N, L, H*D]`` projections -> ``[N, L, H*D]``."""
    q, k, v = (constrain(split_heads(t, num_heads), _BLHD) for t in (q, k, v))
    out = attention.dot_product_attention(q, k, v, mask=None, is_causal=False, implementation=implementation)
    return merge_heads(out)


class EncoderAttention(nnx.Module):
    """Base of the ViT encoders' attention modules: keeps the head count, compute dtype and attention
    implementation, and runs :func:`encoder_attention` on the subclass' packed q/k/v projections."""

    def __init__(self, num_heads: int, dtype: Dtype, implementation: str | None):
        self.num_heads = num_heads
        self.dtype = dtype
        self.implementation = implementation

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return encoder_attention(q, k, v, self.num_heads, self.implementation)


def patch_conv(
    in_channels: int,
    width: int,
    kernel: int,
    stride: int,
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nnx.Conv:
    """Square unpadded patch-embedding conv (NHWC), kernel ``[k, k, in, width]`` with logical axis names."""
    return nnx.Conv(
        in_channels,
        width,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding="VALID",
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        kernel_metadata={"logical_axes": (None, None, "conv_in", "conv_out")},
        bias_metadata={"logical_axes": ("conv_out",)},
    )


def cls_and_pos_embed(
    width: int, num_tokens: int, *, rngs: nnx.Rngs, param_dtype: Dtype = jnp.float32
) -> tuple[nnx.Param, nnx.Param]:
    """The ViT ``cls_token [1, 1, width]`` and ``pos_embed [1, num_tokens, width]`` parameters (drawn in that order)."""
    init = DEFAULT_KERNEL_INIT
    cls_token = nnx.Param(init(rngs.params(), (1, 1, width), param_dtype), logical_axes=(None, None, "embed"))
    pos_embed = nnx.Param(
        init(rngs.params(), (1, num_tokens, width), param_dtype), logical_axes=(None, "positions", "embed")
    )
    return cls_token, pos_embed


def prepend_cls(x: jax.Array, cls_token: nnx.Param, pos_embed: nnx.Param, dtype: Dtype) -> jax.Array:
    """Patch tokens ``[N, P, width]`` -> ``[N, 1 + P, width]``: CLS first, plus the absolute position embedding."""
    n, _, width = x.shape
    cls = jnp.broadcast_to(cls_token[...].astype(dtype), (n, 1, width))
    return constrain(jnp.concatenate([cls, x], axis=1) + pos_embed[...].astype(dtype), _BLD)


class Mlp(nnx.Module):
    """ViT MLP: ``fc1`` -> exact (erf) GELU -> ``fc2``."""

    def __init__(
        self, width: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.fc1 = dense(width, mlp_dim, ("embed", "mlp"), **kw)
        self.fc2 = dense(mlp_dim, width, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(constrain(jax.nn.gelu(self.fc1(x), approximate=False), _BLM))


class PreNormBlock(nnx.Module):
    """Pre-LN ViT block: ``x + drop_path(attn(norm_a(x)))``, then ``x + drop_path(mlp(norm_b(x)))``.

    ``attn`` is the model's own attention module (``[N, L, width] -> [N, L, width]``; EVA's fused qkv with q/v
    biases, ImageBind's ``add_bias_kv``), built by the caller before this block so that parameter initialisation
    draws in the same order as a block that builds it itself. ``norm_names`` are the attribute names of the two
    LayerNorms, i.e. their parameter paths (the checkpoint converters map onto them: EVA ``norm1``/``norm2``,
    ImageBind ``norm_1``/``norm_2``). ``drop_path_rate`` applies only when call-time ``rngs`` are given.
    """

    def __init__(
        self,
        attn: nnx.Module,
        *,
        width: int,
        mlp_dim: int,
        eps: float,
        rngs: nnx.Rngs,
        norm_names: tuple[str, str] = ("norm1", "norm2"),
        drop_path_rate: float = 0.0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
    ):
        self.norm_names = norm_names
        self.drop_path_rate = drop_path_rate
        setattr(self, norm_names[0], LayerNorm(width, eps=eps, param_dtype=param_dtype))
        self.attn = attn
        setattr(self, norm_names[1], LayerNorm(width, eps=eps, param_dtype=param_dtype))
        self.mlp = Mlp(width, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        norm_a, norm_b = (getattr(self, name) for name in self.norm_names)
        x = constrain(x + drop_path(self.attn(norm_a(x)), self.drop_path_rate, rngs), _BLD)
        return constrain(x + drop_path(self.mlp(norm_b(x)), self.drop_path_rate, rngs), _BLD)
