"""BLIP-2 / Video-LLaMA Q-Former, queries-only path (LAVIS ``Qformer.py`` without text inputs).

Learned queries -> embeddings LayerNorm -> post-LN BERT layers: self-attention, cross-attention into the encoder
memory on layers with ``i % cross_attention_freq == 0``, and the query FFN (``intermediate_query`` /
``output_query``). The text FFN, word and position embeddings are not built: with queries only they are never used.
Submodule names follow LAVIS/BERT (``layer[i].attention.query``, ``...crossattention.output.dense``, ...).

Dropout follows BERT (embeddings, attention probabilities, each output block) and is active only when call-time
``rngs`` are given (the trainable video/audio Q-Formers train with dropout 0.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from deemo_jax.models import layers
from deemo_jax.sharding import constrain

_BLD = ("activation_batch", "activation_length", "activation_embed")
_BLM = ("activation_batch", "activation_length", "activation_mlp")
_BLHD = ("activation_batch", "activation_length", "activation_heads", None)


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    encoder_width: int = 1408
    cross_attention_freq: int = 2
    num_queries: int = 32
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"QFormerConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.cross_attention_freq < 1:
            raise ValueError(f"QFormerConfig: cross_attention_freq must be >= 1, got {self.cross_attention_freq}")

    @classmethod
    def image(cls, **overrides: Any) -> QFormerConfig:
        """The frozen BLIP-2 image Q-Former: 12 layers, cross-attention on even layers into EVA ViT-g (1408)."""
        return cls(**overrides)

    @classmethod
    def video(cls, **overrides: Any) -> QFormerConfig:
        """Video-LLaMA's video Q-Former: 2 layers, cross-attention every layer into 768-d frame queries."""
        kwargs = dict(num_layers=2, encoder_width=768, cross_attention_freq=1, num_queries=32)
        return cls(**{**kwargs, **overrides})

    @classmethod
    def audio(cls, **overrides: Any) -> QFormerConfig:
        """Video-LLaMA's audio Q-Former: 2 layers, cross-attention every layer into 1024-d ImageBind embeddings."""
        kwargs = dict(num_layers=2, encoder_width=1024, cross_attention_freq=1, num_queries=8)
        return cls(**{**kwargs, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> QFormerConfig:
        kwargs = dict(
            num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, encoder_width=32,
            cross_attention_freq=1, num_queries=4,
        )
        return cls(**{**kwargs, **overrides})

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_freq == 0


class QFormerOutput(nnx.Module):
    """BERT output block: LayerNorm(dropout(dense(x)) + residual)."""

    def __init__(self, in_features: int, in_axis: str, config: QFormerConfig, *, rngs: nnx.Rngs):
        c = config
        self.dense = layers.dense(
            in_features, c.hidden_size, (in_axis, "embed"), rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype
        )
        self.layernorm = layers.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.dropout = nnx.Dropout(c.hidden_dropout)

    def __call__(self, x: jax.Array, residual: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        h = self.dropout(self.dense(x), deterministic=rngs is None, rngs=rngs)
        return constrain(self.layernorm(h + residual), _BLD)


class QFormerAttention(nnx.Module):
    """Self- or cross-attention (LAVIS ``attention.self`` + ``attention.output``)."""

    def __init__(self, config: QFormerConfig, *, kv_width: int, rngs: nnx.Rngs):
        c = config
        self.num_heads = c.num_heads
        kw = dict(rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype)
        kv_axis = "embed" if kv_width == c.hidden_size else "kv_embed"
        self.query = layers.dense(c.hidden_size, c.hidden_size, ("embed", "heads"), **kw)
        self.key = layers.dense(kv_width, c.hidden_size, (kv_axis, "heads"), **kw)
        self.value = layers.dense(kv_width, c.hidden_size, (kv_axis, "heads"), **kw)
        self.attn_dropout = nnx.Dropout(c.attention_dropout)
        self.output = QFormerOutput(c.hidden_size, "heads", c, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        q = constrain(layers.split_heads(self.query(x), self.num_heads), _BLHD)
        k = constrain(layers.split_heads(self.key(memory), self.num_heads), _BLHD)
        v = constrain(layers.split_heads(self.value(memory), self.num_heads), _BLHD)
        scale = q.shape[-1] ** -0.5
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(logits, axis=-1)
        probs = self.attn_dropout(probs, deterministic=rngs is None, rngs=rngs).astype(v.dtype)
        context = layers.merge_heads(jnp.einsum("nhqk,nkhd->nqhd", probs, v))
        return self.output(context, x, rngs)


class QFormerLayer(nnx.Module):
    def __init__(self, config: QFormerConfig, index: int, *, rngs: nnx.Rngs):
        c = config
        self.attention = QFormerAttention(c, kv_width=c.hidden_size, rngs=rngs)
        self.crossattention = (
            QFormerAttention(c, kv_width=c.encoder_width, rngs=rngs) if c.has_cross_attention(index) else None
        )
        self.intermediate_query = layers.dense(
            c.hidden_size, c.intermediate_size, ("embed", "mlp"), rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype
        )
        self.output_query = QFormerOutput(c.intermediate_size, "mlp", c, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, rngs: nnx.Rngs | None) -> jax.Array:
        x = self.attention(x, x, rngs)
        if self.crossattention is not None:
            x = self.crossattention(x, memory, rngs)
        h = constrain(jax.nn.gelu(self.intermediate_query(x), approximate=False), _BLM)
        return self.output_query(h, x, rngs)


class QFormer(nnx.Module):
    """memory [N, M, encoder_width] -> query outputs [N, num_queries, hidden_size]."""

    def __init__(self, config: QFormerConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.query_tokens = nnx.Param(
            layers.DEFAULT_KERNEL_INIT(rngs.params(), (1, c.num_queries, c.hidden_size), c.param_dtype),
            logical_axes=(None, "queries", "embed"),
        )
        self.embeddings_layernorm = layers.LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=c.param_dtype)
        self.embeddings_dropout = nnx.Dropout(c.hidden_dropout)
        self.layer = nnx.List([QFormerLayer(c, i, rngs=rngs) for i in range(c.num_layers)])

    def __call__(self, encoder_hidden_states: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        c = self.config
        memory = encoder_hidden_states
        if memory.ndim != 3 or memory.shape[-1] != c.encoder_width:
            raise ValueError(
                f"QFormer: expected encoder_hidden_states [N, M, {c.encoder_width}] (encoder_width), "
                f"got shape {tuple(memory.shape)}"
            )
        memory = constrain(memory.astype(c.dtype), _BLD)
        n = memory.shape[0]
        queries = jnp.broadcast_to(self.query_tokens[...], (n, c.num_queries, c.hidden_size)).astype(c.dtype)
        x = self.embeddings_layernorm(queries)
        x = constrain(self.embeddings_dropout(x, deterministic=rngs is None, rngs=rngs), _BLD)
        for layer in self.layer:
            x = layer(x, memory, rngs)
        return x
