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

Dtype = Any

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
