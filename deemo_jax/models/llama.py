"""LLaMA / Vicuna decoder (HF ``LlamaForCausalLM`` numerics) in Flax NNX, with a functional KV cache.

Numerics follow transformers' LLaMA: RMSNorm variance in float32, cast back to the input dtype, then times the
weight; rotary embeddings in the "rotate half" (non-interleaved) convention with ``rope_theta`` and optional
``linear`` or ``llama3`` scaling of the inverse frequencies; grouped-query attention with a ``head_dim`` that may
differ from ``hidden_size / num_attention_heads``; SwiGLU MLP; optional biases on the q/k/v projections, on
``o_proj`` and on the MLP (HF ``attention_bias`` = all four attention projections, Qwen2 = q/k/v only,
``mlp_bias``); an ``lm_head`` or, with ``tie_word_embeddings``, logits ``hidden @ embed_tokens.T`` (then there is
no ``lm_head`` parameter). Softmax always runs in float32; logits are returned in float32.

Positions and padding
---------------------
``attention_mask`` ([B, L], 1 = real token) may pad on the left or on the right. Padding keys are never
attended to; the outputs at padding positions are meaningless. Unless ``positions`` is given, each row counts
its own real tokens: ``positions = cumsum(mask) - 1`` (clipped at 0), continued from the cache when one is
used. A left-padded row therefore starts at position 0 exactly like the unpadded sequence.

KV cache (for a jitted generation loop)
---------------------------------------
:class:`KVCache` is a pytree (``flax.struct`` dataclass) with static shapes, so it can be carried through
``jax.jit`` / ``jax.lax.while_loop``::

    cache = model.init_cache(batch_size=B, max_length=P + max_new_tokens)
    # prefill: the whole (preferably left-padded) prompt, with its mask
    logits, cache = model(input_ids=prompt_ids, attention_mask=prompt_mask, cache=cache)
    next_ids = pick(logits[:, -1])                      # left padding: the last column is real for every row
    for _ in range(max_new_tokens - 1):                 # or lax.while_loop / fori_loop over (cache, ids)
        logits, cache = model(input_ids=next_ids[:, None], cache=cache)
        next_ids = pick(logits[:, -1])

Each call writes its L new keys/values into slots ``[cache.index, cache.index + L)`` of every row
(``index`` is shared by the rows), records their validity in ``cache.mask`` and advances ``cache.positions``
([B], the next RoPE position of each row) by the number of real tokens of that row. A decode step without
``attention_mask`` counts its token as real. Rows of different prompt lengths are handled by the mask, so
right-padded prompts work as well (take the prefill logits at ``sum(mask) - 1`` then). Slots are attended in
write order (causal in slot order) and only where ``cache.mask`` is set. ``inputs_embeds`` may replace
``input_ids`` in any call (e.g. a prefill with spliced multimodal embeddings).

Overflow (``index + L > max_length``) raises ``ValueError`` when ``index`` is concrete; inside ``jax.jit``
it cannot raise, so the returned logits are set to NaN instead of silently overwriting the last slots. Size
the cache for prompt + new tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from deemo_jax import sharding
from deemo_jax.models import attention, layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    # Per-head width; None: hidden_size // num_attention_heads (read it as ``head_dim``).
    head_dim_override: int | None = None
    # RoPE scaling of the inverse frequencies (transformers' rope_type): "default" (none), "linear"
    # (inv_freq / rope_factor, i.e. positions / factor) or "llama3" (frequency-dependent, Llama 3.1).
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    qkv_bias: bool = False  # biases on q_proj, k_proj, v_proj (HF attention_bias; Qwen2)
    o_proj_bias: bool = False  # bias on o_proj (HF attention_bias)
    mlp_bias: bool = False  # biases on gate_proj, up_proj, down_proj
    tie_word_embeddings: bool = False  # logits = hidden @ embed_tokens.T, no lm_head
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    # See deemo_jax.models.attention: None (per-head loop on CPU, XLA's elsewhere), "xla", "looped", or
    # "cudnn" (GPU, fp16/bf16 only).
    attention_impl: str | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rope_original_max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive int, got {value!r}")
        if self.head_dim_override is not None:
            if not isinstance(self.head_dim_override, int | np.integer) or self.head_dim_override <= 0:
                raise ValueError(
                    f"LlamaConfig.head_dim_override must be a positive int or None, got {self.head_dim_override!r}"
                )
        elif self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LlamaConfig: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads} (set head_dim_override for a decoupled head width)"
            )
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"LlamaConfig.rope_type {self.rope_type!r} is not one of {ROPE_TYPES}")
        if self.rope_type == "default" and self.rope_factor != 1.0:
            raise ValueError(
                f"LlamaConfig: rope_factor {self.rope_factor} needs rope_type 'linear' or 'llama3', not 'default'"
            )
        if not self.rope_factor > 0:
            raise ValueError(f"LlamaConfig.rope_factor must be positive, got {self.rope_factor!r}")
        if self.rope_type == "llama3" and not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
            raise ValueError(
                f"LlamaConfig: llama3 RoPE needs 0 < rope_low_freq_factor < rope_high_freq_factor, got "
                f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        """Per-head width: ``head_dim_override``, else ``hidden_size // num_attention_heads``."""
        if self.head_dim_override is not None:
            return int(self.head_dim_override)
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def vicuna_7b(cls, **overrides: Any) -> LlamaConfig:
        """Vicuna-7B v0 / LLaMA-1-7B (the LLM of Video-LLaMA and AffectGPT)."""
        return cls(**{**_PRESETS["vicuna_7b"], **overrides})

    @classmethod
    def llama2_7b(cls, **overrides: Any) -> LlamaConfig:
        """LLaMA-2-7B(-chat) as in the official HF config (eps 1e-5, 4096 positions)."""
        return cls.vicuna_7b(**{"rms_norm_eps": 1e-5, "max_position_embeddings": 4096, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> LlamaConfig:
        """A test-size model with grouped-query attention (4 query heads sharing 2 key/value heads)."""
        return cls(**{**_PRESETS["tiny"], **overrides})


ROPE_TYPES = ("default", "linear", "llama3")

# Sizes of the named configurations (the LlamaConfig classmethods).
_PRESETS: dict[str, dict[str, Any]] = {
    "vicuna_7b": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
    ),
    "tiny": dict(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=128,
    ),
}


@struct.dataclass
class KVCache:
    """Per-layer keys/values ``[B, max_length, kv_heads, head_dim]`` plus bookkeeping (see module docstring).

    ``mask`` [B, max_length] bool: which slots hold real tokens; ``index`` int32 scalar: next slot to write
    (shared by all rows); ``positions`` int32 [B]: next RoPE position of each row.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    positions: jax.Array

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]


class RMSNorm(nnx.Module):
    """HF LlamaRMSNorm: ``weight * (x * rsqrt(mean(x^2) + eps)).astype(x.dtype)``, statistics in float32."""

    def __init__(
        self, num_features: int, *, eps: float, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(self.dtype)


def rope_inv_freq(config: LlamaConfig) -> jax.Array:
    """The ``head_dim // 2`` RoPE inverse frequencies (float32) of ``config``, scaled per ``rope_type``.

    ``default``: ``1 / theta ** (2i / head_dim)``. ``linear``: those divided by ``rope_factor`` (the same as
    dividing the positions by it). ``llama3`` (Llama 3.1): with ``wavelen = 2 pi / inv_freq`` and the pretraining
    context ``N = rope_original_max_position_embeddings``, wavelengths above ``N / low_freq_factor`` are divided by
    ``factor``, those below ``N / high_freq_factor`` kept, and the band in between interpolated with
    ``s = (N / wavelen - low) / (high - low)``: ``(1 - s) * inv_freq / factor + s * inv_freq``.
    """
    c = config
    hd = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    if c.rope_type == "linear":
        return inv_freq / c.rope_factor
    if c.rope_type == "llama3":
        old_context = float(c.rope_original_max_position_embeddings)
        low, high, factor = c.rope_low_freq_factor, c.rope_high_freq_factor, c.rope_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return jnp.where(medium, smoothed, scaled)
    return inv_freq


def rotary_cos_sin(
    positions: jax.Array, head_dim: int, theta: float, dtype: Dtype, *, inv_freq: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """cos/sin ``[B, L, head_dim]`` for integer positions [B, L] (frequencies, angles in float32 like HF).

    ``inv_freq`` (from :func:`rope_inv_freq`) replaces the unscaled frequencies of ``head_dim`` and ``theta``.
    """
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on ``x`` [B, L, heads, head_dim] with cos/sin [B, L, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class LlamaAttention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        kw = dict(rngs=rngs, dtype=c.dtype, param_dtype=c.param_dtype)
        # A bias takes the logical axis of its kernel's output dim (layers.dense).
        self.q_proj = layers.dense(c.hidden_size, q_dim, ("embed", "heads"), use_bias=c.qkv_bias, **kw)
        self.k_proj = layers.dense(c.hidden_size, kv_dim, ("embed", "kv_heads"), use_bias=c.qkv_bias, **kw)
        self.v_proj = layers.dense(c.hidden_size, kv_dim, ("embed", "kv_heads"), use_bias=c.qkv_bias, **kw)
        self.o_proj = layers.dense(q_dim, c.hidden_size, ("heads", "embed"), use_bias=c.o_proj_bias, **kw)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array | None,
        is_causal: bool,
        kv: tuple[jax.Array, jax.Array] | None,
        write_index: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        q = layers.split_heads(self.q_proj(x), c.num_attention_heads)
        k = layers.split_heads(self.k_proj(x), c.num_key_value_heads)
        v = layers.split_heads(self.v_proj(x), c.num_key_value_heads)
        q = sharding.constrain(
            apply_rotary(q, cos, sin), ("activation_batch", "activation_length", "activation_heads", None)
        )
        k = sharding.constrain(
            apply_rotary(k, cos, sin), ("activation_batch", "activation_length", "activation_kv_heads", None)
        )
        v = sharding.constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
        if kv is not None:
            start = (0, write_index, 0, 0)
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), start)
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), start)
            kv = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        out = attention.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, implementation=c.attention_impl
        )
        out = sharding.constrain(out, ("activation_batch", "activation_length", "activation_heads", None))
        return self.o_proj(layers.merge_heads(out)), kv


class LlamaMLP(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        kw = dict(rngs=rngs, use_bias=c.mlp_bias, dtype=c.dtype, param_dtype=c.param_dtype)
        self.gate_proj = layers.dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = layers.dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = layers.dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        h = sharding.constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
        return self.down_proj(h)


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        c = config
        norm_kw = dict(eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        self.input_layernorm = RMSNorm(c.hidden_size, **norm_kw)
        self.self_attn = LlamaAttention(c, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, **norm_kw)
        self.mlp = LlamaMLP(c, rngs=rngs)

    def __call__(self, x, cos, sin, mask, is_causal, kv, write_index):
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, is_causal, kv, write_index)
        x = sharding.constrain(x + h, ("activation_batch", "activation_length", "activation_embed"))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed")), kv


def _run_layer(layer, x, cos, sin, mask, is_causal, kv, write_index):
    return layer(x, cos, sin, mask, is_causal, kv, write_index)


def _run_split_layer(graphdef, state, x, cos, sin, mask, is_causal, kv, write_index):
    return _run_layer(nnx.merge(graphdef, state), x, cos, sin, mask, is_causal, kv, write_index)


# jax.checkpoint of the split layer, not nnx.remat: nnx.remat writes the layer's variables back after the call,
# which raises TraceContextError when they hold an outer trace's values - a frozen LLM closed over by the train
# step's jax.value_and_grad. ``is_causal`` (argument 6) is a Python bool.
_checkpointed_layer = jax.checkpoint(_run_split_layer, static_argnums=(0, 6))


def _run_layer_remat(layer, x, cos, sin, mask, is_causal, kv, write_index):
    return _checkpointed_layer(*nnx.split(layer), x, cos, sin, mask, is_causal, kv, write_index)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Llama(nnx.Module):
    """``LlamaForCausalLM``: ``model.embed_tokens``, ``model.layers``, ``model.norm`` and ``lm_head``.

    With ``config.tie_word_embeddings`` there is no ``lm_head``: the logits are ``hidden @ embed_tokens.T``.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, LlamaConfig):
            raise ValueError(f"Llama expects a LlamaConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.embed_tokens = nnx.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            embedding_init=layers.DEFAULT_KERNEL_INIT,
            rngs=rngs,
            embedding_metadata={"logical_axes": ("vocab", "embed")},
        )
        self.layers = nnx.List([LlamaDecoderLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=c.dtype, param_dtype=c.param_dtype)
        if not c.tie_word_embeddings:  # tied: the logits use embed_tokens, and there is no lm_head at all
            self.lm_head = layers.dense(
                c.hidden_size,
                c.vocab_size,
                ("embed", "vocab"),
                rngs=rngs,
                use_bias=False,
                dtype=c.dtype,
                param_dtype=c.param_dtype,
            )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings ``[B, L, D]`` in the compute dtype (ids must lie in ``[0, vocab_size)``)."""
        if np.ndim(input_ids) != 2:
            raise ValueError(
                f"Llama.embed: input_ids must be [batch, length], got shape {np.shape(input_ids)}"
            )
        if not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
            raise ValueError(
                f"Llama.embed: input_ids must be integers, got dtype {jnp.result_type(input_ids)}"
            )
        if _is_concrete(input_ids) and np.size(input_ids):
            # Host-side check (outside jit): out-of-range ids would silently embed as NaN.
            host = np.asarray(input_ids)
            lo, hi = int(host.min()), int(host.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"Llama.embed: token ids must lie in [0, {self.config.vocab_size}), got range "
                    f"[{lo}, {hi}] (map placeholder ids to 0 before embedding)"
                )
        x = self.embed_tokens(jnp.asarray(input_ids)).astype(self.config.dtype)
        return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))

    def init_cache(self, batch_size: int, max_length: int, dtype: Dtype | None = None) -> KVCache:
        """An empty cache of ``batch_size`` rows, ``max_length`` slots (dtype None: the compute dtype)."""
        c = self.config
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(
                f"init_cache: batch_size and max_length must be positive, got {batch_size} and {max_length}"
            )
        dtype = c.dtype if dtype is None else dtype
        shape = (batch_size, max_length, c.num_key_value_heads, c.head_dim)
        return KVCache(
            keys=tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers)),
            values=tuple(jnp.zeros(shape, dtype) for _ in range(c.num_hidden_layers)),
            mask=jnp.zeros((batch_size, max_length), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
            positions=jnp.zeros((batch_size,), jnp.int32),
        )

    def tied_head(self) -> jax.Array | None:
        """``embed_tokens.T`` as its own array for a tied model's decode loop (see ``head``), else None."""
        if not self.config.tie_word_embeddings:
            return None
        return jnp.transpose(self.embed_tokens.embedding.get_value())

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
        head: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits ``[B, L, vocab]`` (float32) and the updated cache (None without a cache).

        Args:
          input_ids: int ``[B, L]``; or ``inputs_embeds`` ``[B, L, hidden_size]`` (exactly one of them).
          attention_mask: int/bool ``[B, L]``, 1 on real tokens (left or right padding); None = all real.
          positions: int ``[B, L]`` RoPE positions; None = each row's count of real tokens so far (see the
            module docstring). Explicit positions do not change how ``cache.positions`` advances.
          cache: a :class:`KVCache` from :meth:`init_cache`; the new tokens are appended to it.
          logits_to_keep: > 0: only the logits of the last ``logits_to_keep`` positions ``[B, n, vocab]`` are
            computed (a generation prefill needs one column; the full ``lm_head`` is a quarter of the FLOPs).
          head: ``[hidden_size, vocab]`` logits weight of a tied model, i.e. ``embed_tokens.T`` made once by the
            caller (:meth:`tied_head`): a decode loop that passes it in multiplies a plain matrix, where
            ``attend``'s transposed operand inside the loop body is ~10x slower on XLA:CPU.
        """
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Llama: pass exactly one of input_ids [B, L] or inputs_embeds [B, L, D]")
        # Validate every shape before computing anything.
        if inputs_embeds is not None:
            shape = np.shape(inputs_embeds)
            if len(shape) != 3 or shape[-1] != c.hidden_size:
                raise ValueError(
                    f"Llama: inputs_embeds must be [batch, length, {c.hidden_size}], got shape {shape}"
                )
        else:
            shape = np.shape(input_ids)
            if len(shape) != 2:
                raise ValueError(f"Llama: input_ids must be [batch, length], got shape {shape}")
        batch, length = shape[:2]
        if length == 0:
            raise ValueError("Llama: the input sequence is empty (length 0)")
        for name, value in (("attention_mask", attention_mask), ("positions", positions)):
            if value is not None and np.shape(value) != (batch, length):
                raise ValueError(
                    f"Llama: {name} must have the input shape {(batch, length)}, got {np.shape(value)}"
                )
        if cache is not None:
            self._check_cache(cache, batch, length)
        if not isinstance(logits_to_keep, int) or not 0 <= logits_to_keep <= length:
            raise ValueError(f"Llama: logits_to_keep must be an int in [0, {length}], got {logits_to_keep!r}")

        if input_ids is not None:
            x = self.embed(input_ids)
        else:
            x = sharding.constrain(
                jnp.asarray(inputs_embeds, c.dtype),
                ("activation_batch", "activation_length", "activation_embed"),
            )
        if attention_mask is not None:
            real = jnp.asarray(attention_mask).astype(jnp.bool_)
        else:
            real = jnp.ones((batch, length), jnp.bool_)
        if positions is not None:
            positions = jnp.asarray(positions)

        if cache is None:
            if positions is None:
                positions = jnp.maximum(jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1, 0)
            # Causal masking by the implementation, padding keys masked here ([B, 1, 1, L]).
            mask = None if attention_mask is None else real[:, None, None, :]
            is_causal, write_index, kvs = True, None, [None] * c.num_hidden_layers
        else:
            write_index = cache.index
            if positions is None:
                positions = cache.positions[:, None] + jnp.maximum(
                    jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1, 0
                )
            key_mask = jax.lax.dynamic_update_slice(cache.mask, real, (0, write_index))
            query_slot = write_index + jnp.arange(length, dtype=jnp.int32)
            causal = jnp.arange(cache.max_length, dtype=jnp.int32)[None, :] <= query_slot[:, None]
            mask = causal[None, None, :, :] & key_mask[:, None, None, :]  # [B, 1, L, max_length]
            is_causal, kvs = False, list(zip(cache.keys, cache.values, strict=True))

        cos, sin = rotary_cos_sin(positions, c.head_dim, c.rope_theta, c.dtype, inv_freq=rope_inv_freq(c))
        run = _run_layer_remat if c.remat else _run_layer
        new_kvs = []
        for layer, kv in zip(self.layers, kvs, strict=True):
            x, kv = run(layer, x, cos, sin, mask, is_causal, kv, write_index)
            new_kvs.append(kv)
        if logits_to_keep:
            x = x[:, length - logits_to_keep :]
        x = self.norm(x)
        if head is not None:
            if not c.tie_word_embeddings or np.shape(head) != (c.hidden_size, c.vocab_size):
                raise ValueError(f"Llama: head is for tied models, [{c.hidden_size}, {c.vocab_size}]; got "
                                 f"{np.shape(head)} (tie_word_embeddings={c.tie_word_embeddings})")
            logits = jnp.dot(x, head.astype(x.dtype)).astype(jnp.float32)
        elif c.tie_word_embeddings:
            logits = self.embed_tokens.attend(x).astype(jnp.float32)
        else:
            logits = self.lm_head(x).astype(jnp.float32)
        logits = sharding.constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))

        if cache is None:
            return logits, None
        new_index = write_index + length
        # Inside jit an overflow cannot raise: poison the logits rather than return wrong numbers.
        logits = jnp.where(new_index > cache.max_length, jnp.nan, logits)
        new_cache = KVCache(
            keys=tuple(k for k, _ in new_kvs),
            values=tuple(v for _, v in new_kvs),
            mask=key_mask,
            index=new_index,
            positions=cache.positions + jnp.sum(real, axis=1, dtype=jnp.int32),
        )
        return logits, new_cache

    def _check_cache(self, cache: KVCache, batch: int, length: int) -> None:
        c = self.config
        if not isinstance(cache, KVCache):
            raise ValueError(f"Llama: cache must be a KVCache from init_cache, got {type(cache).__name__}")
        if len(cache.keys) != c.num_hidden_layers:
            raise ValueError(f"Llama: cache has {len(cache.keys)} layers, the model {c.num_hidden_layers}")
        expected = (batch, cache.max_length, c.num_key_value_heads, c.head_dim)
        if cache.batch_size != batch or tuple(cache.keys[0].shape) != expected:
            raise ValueError(
                f"Llama: cache keys have shape {tuple(cache.keys[0].shape)}, expected {expected} for batch "
                f"{batch}; create the cache with init_cache(batch_size, max_length)"
            )
        if length > cache.max_length:
            raise ValueError(
                f"Llama: cache overflow: {length} new tokens do not fit a cache of max_length "
                f"{cache.max_length}"
            )
        if _is_concrete(cache.index):
            end = int(cache.index) + length
            if end > cache.max_length:
                raise ValueError(
                    f"Llama: cache overflow: writing {length} tokens at slot {int(cache.index)} needs {end} "
                    f"slots, the cache has max_length {cache.max_length}; create a larger cache"
                )


def count_params(model_or_state: Any) -> int:
    """Number of parameters (works on abstract state from ``nnx.eval_shape`` too)."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
