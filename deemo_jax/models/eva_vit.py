"""EVA-CLIP ViT-g/14 as used (frozen) by BLIP-2 / Video-LLaMA: the LAVIS ``eva_vit.py`` variant.

Patch conv (with bias) -> CLS -> absolute position embedding -> pre-norm blocks -> token sequence, with no final
norm (``ln_vision`` lives outside, in ``DeemoLlama``). Attention uses one fused qkv kernel plus separate
``q_bias``/``v_bias`` (the key has no bias), exactly like the checkpoint, so conversion is one tensor per param.
Depth 39: the checkpoint has 40 blocks and BLIP-2 drops the last one (reference_spec §2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deemo_jax.models import layers


@dataclasses.dataclass(frozen=True)
class EvaViTConfig:
    img_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    num_heads: int = 16
    mlp_dim: int = 6144
    layer_norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None  # see deemo_jax.models.attention (None: per-head loop on CPU, XLA elsewhere)

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(
                f"EvaViTConfig: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"EvaViTConfig: width {self.width} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def giant(cls, **overrides: Any) -> EvaViTConfig:
        """EVA-CLIP ViT-g/14 without its last block (BLIP-2's second-to-last-layer features)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> EvaViTConfig:
        """Real input geometry (224 px, patch 14, 257 tokens) with a few-KB trunk, for tests and demos."""
        kwargs = dict(width=32, depth=2, num_heads=4, mlp_dim=64)
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return 1 + self.grid_size**2


class EvaAttention(layers.EncoderAttention):
    def __init__(self, config: EvaViTConfig, *, rngs: nnx.Rngs):
        c = config
        super().__init__(c.num_heads, c.dtype, c.attention_impl)
        init = layers.DEFAULT_KERNEL_INIT
        # Columns [q | k | v], each head-major: torch ``qkv.weight.T``.
        self.qkv = nnx.Param(
            init(rngs.params(), (c.width, 3 * c.width), c.param_dtype), logical_axes=("embed", "heads")
        )
        self.q_bias = nnx.Param(jnp.zeros((c.width,), c.param_dtype), logical_axes=("heads",))
        self.v_bias = nnx.Param(jnp.zeros((c.width,), c.param_dtype), logical_axes=("heads",))
        self.proj = layers.dense(
            c.width, c.width, ("heads", "embed"), rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        qkv = jnp.einsum("nld,de->nle", x, self.qkv[...].astype(self.dtype))
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q = q + self.q_bias[...].astype(self.dtype)
        v = v + self.v_bias[...].astype(self.dtype)
        return self.proj(self.attend(q, k, v))


def eva_block(config: EvaViTConfig, *, rngs: nnx.Rngs) -> layers.PreNormBlock:
    """One pre-LN block: ``norm1``, ``attn`` (:class:`EvaAttention`), ``norm2``, ``mlp`` (``fc1``/``fc2``)."""
    c = config
    return layers.PreNormBlock(
        EvaAttention(c, rngs=rngs), width=c.width, mlp_dim=c.mlp_dim, eps=c.layer_norm_eps, rngs=rngs,
        dtype=c.dtype, param_dtype=c.param_dtype,
    )


class EvaViT(nnx.Module):
    """pixels [N, H, W, 3] (CLIP-normalised) -> tokens [N, 1 + (H/patch)^2, width]."""

    def __init__(self, config: EvaViTConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.patch_embed = layers.patch_conv(
            3, c.width, c.patch_size, c.patch_size, use_bias=True, rngs=rngs, dtype=c.dtype,
            param_dtype=c.param_dtype,
        )
        self.cls_token, self.pos_embed = layers.cls_and_pos_embed(
            c.width, c.num_tokens, rngs=rngs, param_dtype=c.param_dtype
        )
        self.blocks = nnx.List([eva_block(c, rngs=rngs) for _ in range(c.depth)])

    def __call__(self, pixels: jax.Array) -> jax.Array:
        c = self.config
        expected = (c.img_size, c.img_size, 3)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"EvaViT: expected pixels [N, {c.img_size}, {c.img_size}, 3] (channels-last, img_size "
                f"{c.img_size}), got shape {tuple(pixels.shape)}; resize the frames to {c.img_size}x{c.img_size}"
            )
        n = pixels.shape[0]
        x = self.patch_embed(pixels.astype(c.dtype))  # [N, g, g, width], row-major (h, w) like torch flatten(2)
        x = layers.prepend_cls(x.reshape(n, -1, c.width), self.cls_token, self.pos_embed, c.dtype)
        for block in self.blocks:
            x = block(x)
        return x
