"""ImageBind-Huge audio tower (frozen audio encoder of Video-LLaMA / AffectGPT / DEEMO-LLaMA).

fbank [N, 1, 128 mel, 204 frames] -> Conv 16x16 stride 10 (no bias) -> 12x19 = 228 patches (mel-major, time-minor)
-> stem LayerNorm (eps 1e-5) -> CLS + position embedding -> 12 pre-LN blocks whose attention appends the learned
``bias_k``/``bias_v`` as one extra key/value token (torch ``MultiheadAttention(add_bias_kv=True)``) -> head LayerNorm
-> CLS -> Linear (no bias) -> L2-normalise -> x logit scale (reference_spec §5).

The logit scale is ImageBind's non-learnable buffer ``log_logit_scale = ln 20``. It is kept as the config constant
``logit_scale`` (not a Variable), so the module state stays parameters only; the checkpoint mapping checks the
buffer against it. DropPath (linspace(0, drop_path_rate) over the blocks) runs only when call-time ``rngs`` are
given: AffectGPT trains with the frozen tower in train mode (reference_spec §10.5), plain inference passes none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deemo_jax.models import layers


@dataclasses.dataclass(frozen=True)
class ImageBindAudioConfig:
    num_mel_bins: int = 128
    target_len: int = 204
    kernel_size: int = 16
    stride: int = 10
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    out_dim: int = 1024
    stem_norm_eps: float = 1e-5
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.1
    logit_scale: float = 20.0  # exp(log_logit_scale), clipped at 100 in ImageBind; not learnable
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_impl: str | None = None  # see deemo_jax.models.attention (None: per-head loop on CPU, XLA elsewhere)

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(
                f"ImageBindAudioConfig: width {self.width} is not divisible by num_heads {self.num_heads}"
            )
        if min(self.num_mel_bins, self.target_len) < self.kernel_size:
            raise ValueError(
                f"ImageBindAudioConfig: input {self.num_mel_bins}x{self.target_len} is smaller than the "
                f"{self.kernel_size}x{self.kernel_size} stem kernel"
            )

    @classmethod
    def huge(cls, **overrides: Any) -> ImageBindAudioConfig:
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> ImageBindAudioConfig:
        """Real input geometry (128 x 204 fbank, 229 tokens) with a small trunk, for tests and demos."""
        kwargs = dict(width=32, depth=2, num_heads=4, mlp_dim=128, out_dim=24)
        return cls(**{**kwargs, **overrides})

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(mel, time) patch counts: floor((L - k) / s) + 1, like torch Conv2d without padding."""
        return tuple((n - self.kernel_size) // self.stride + 1 for n in (self.num_mel_bins, self.target_len))

    @property
    def num_tokens(self) -> int:
        mel, time = self.patch_grid
        return 1 + mel * time

    def drop_path_rates(self) -> list[float]:
        return [float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth)]


class ImageBindAttention(layers.EncoderAttention):
    """torch ``nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=True)`` on batch-first input."""

    def __init__(self, config: ImageBindAudioConfig, *, rngs: nnx.Rngs):
        c = config
        super().__init__(c.num_heads, c.dtype, c.attention_impl)
        kw = dict(rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype)
        # Columns [q | k | v], head-major within each: torch ``in_proj_weight.T``.
        self.in_proj = layers.dense(c.width, 3 * c.width, ("embed", "heads"), **kw)
        init = layers.DEFAULT_KERNEL_INIT
        self.bias_k = nnx.Param(init(rngs.params(), (c.width,), c.param_dtype), logical_axes=("heads",))
        self.bias_v = nnx.Param(init(rngs.params(), (c.width,), c.param_dtype), logical_axes=("heads",))
        self.out_proj = layers.dense(c.width, c.width, ("heads", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, _, d = x.shape
        q, k, v = jnp.split(self.in_proj(x), 3, axis=-1)
        extra_k = jnp.broadcast_to(self.bias_k[...].astype(self.dtype), (n, 1, d))
        extra_v = jnp.broadcast_to(self.bias_v[...].astype(self.dtype), (n, 1, d))
        k = jnp.concatenate([k, extra_k], axis=1)
        v = jnp.concatenate([v, extra_v], axis=1)
        return self.out_proj(self.attend(q, k, v))


def imagebind_block(config: ImageBindAudioConfig, drop_path_rate: float, *, rngs: nnx.Rngs) -> layers.PreNormBlock:
    """One pre-LN block: ``norm_1``, ``attn`` (:class:`ImageBindAttention`), ``norm_2``, ``mlp`` (``fc1``/``fc2``)."""
    c = config
    return layers.PreNormBlock(
        ImageBindAttention(c, rngs=rngs), width=c.width, mlp_dim=c.mlp_dim, eps=c.layer_norm_eps, rngs=rngs,
        norm_names=("norm_1", "norm_2"), drop_path_rate=drop_path_rate, dtype=c.dtype, param_dtype=c.param_dtype,
    )


class ImageBindAudio(nnx.Module):
    """fbank [N, 1, mel, frames] or [N, mel, frames] -> L2-normalised embedding x logit_scale [N, out_dim]."""

    def __init__(self, config: ImageBindAudioConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.stem = layers.patch_conv(
            1, c.width, c.kernel_size, c.stride, use_bias=False, rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype
        )
        self.stem_norm = layers.LayerNorm(c.width, eps=c.stem_norm_eps, param_dtype=c.param_dtype)
        self.cls_token, self.pos_embed = layers.cls_and_pos_embed(
            c.width, c.num_tokens, rngs=rngs, param_dtype=c.param_dtype
        )
        self.blocks = nnx.List([imagebind_block(c, rate, rngs=rngs) for rate in c.drop_path_rates()])
        self.head_norm = layers.LayerNorm(c.width, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.head_proj = layers.dense(
            c.width, c.out_dim, ("embed", "kv_embed"), rngs=rngs, use_bias=False, dtype=c.dtype,
            param_dtype=c.param_dtype,
        )

    def __call__(self, fbank: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        c = self.config
        mel_time = (c.num_mel_bins, c.target_len)
        if fbank.ndim == 4 and fbank.shape[1] == 1 and tuple(fbank.shape[2:]) == mel_time:
            fbank = fbank[:, 0]
        elif not (fbank.ndim == 3 and tuple(fbank.shape[1:]) == mel_time):
            raise ValueError(
                f"ImageBindAudio: expected fbank [N, 1, {c.num_mel_bins}, {c.target_len}] or "
                f"[N, {c.num_mel_bins}, {c.target_len}] (mel bins x frames), got shape {tuple(fbank.shape)}"
            )
        n = fbank.shape[0]
        # NHWC with mel on H and time on W: the [N, 12, 19, C] output flattens mel-major like torch's flatten(2).
        x = self.stem(fbank[..., None].astype(c.dtype)).reshape(n, -1, c.width)
        x = layers.prepend_cls(self.stem_norm(x), self.cls_token, self.pos_embed, c.dtype)
        for block in self.blocks:
            x = block(x, rngs)
        emb = self.head_proj(self.head_norm(x)[:, 0])
        emb32 = emb.astype(jnp.float32)
        # torch F.normalize: x / max(||x||, 1e-12)
        norm = jnp.maximum(jnp.linalg.norm(emb32, axis=-1, keepdims=True), 1e-12)
        scale = min(c.logit_scale, 100.0)
        return (emb32 / norm * scale).astype(c.dtype)
