"""HF ``LlamaForCausalLM`` state dict -> pure dict for :class:`deemo_jax.models.llama.Llama`.

Two levels, so a large checkpoint can be streamed one tensor at a time:

* :func:`llama_key_to_target` tells, for one torch key, where it goes in the NNX pure dict (a path tuple such
  as ``('layers', 3, 'self_attn', 'q_proj', 'kernel')``; ``nnx.List`` indices are ints), its expected torch
  shape and how the array is transformed (Linear weights transposed to ``[in, out]``);
  :func:`convert_llama_tensor` applies it to one array after checking the shape.
* :func:`llama_params_from_torch` checks a whole state dict with ``check_keys`` and builds the nested dict
  for ``nnx.replace_by_pure_dict(state, params)`` (the benchmarks build their models with it).
* :func:`llama_key_table` is the whole mapping as ``{torch key: TensorRule}`` for the streaming converter; it
  also knows the one key that is read and checked but not stored: the ``lm_head.weight`` a tied checkpoint may
  carry (it must equal ``model.embed_tokens.weight``).

:func:`llama_config_from_hf` reads a Hugging Face ``config.json`` (``model_type`` llama, qwen2 or mistral) into
a ``LlamaConfig``, and refuses, naming the field, whatever would make HF compute something this implementation
does not; :func:`llama_config_to_hf` is the inverse (the ``config.json`` fields of the same model, for the
transformers reference of ``--verify``).

Arrays keep the dtype they come in with (the caller casts). Never imports torch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from deemo_jax.convert.common import CheckpointKeyError, TensorRule, check_keys, linear_kernel
from deemo_jax.models.llama import LlamaConfig

Path = tuple[str | int, ...]
Transform = Callable[[np.ndarray], np.ndarray]

# Old HF LLaMA modeling files saved the RoPE inverse frequencies as a persistent buffer; they are recomputed.
_IGNORABLE_SUFFIXES = (r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",)

_TOP = {  # torch name -> (path, transform)
    "model.embed_tokens.weight": (("embed_tokens", "embedding"), "identity"),
    "model.norm.weight": (("norm", "scale"), "identity"),
    "lm_head.weight": (("lm_head", "kernel"), "linear"),
}
_PER_LAYER = {  # torch name inside model.layers.{i} -> (path inside layers[i], transform)
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), "linear"),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), "linear"),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), "linear"),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), "linear"),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), "linear"),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), "linear"),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), "linear"),
    "input_layernorm.weight": (("input_layernorm", "scale"), "identity"),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), "identity"),
    # Present only when the config has the bias (LlamaConfig.qkv_bias / o_proj_bias / mlp_bias).
    "self_attn.q_proj.bias": (("self_attn", "q_proj", "bias"), "identity"),
    "self_attn.k_proj.bias": (("self_attn", "k_proj", "bias"), "identity"),
    "self_attn.v_proj.bias": (("self_attn", "v_proj", "bias"), "identity"),
    "self_attn.o_proj.bias": (("self_attn", "o_proj", "bias"), "identity"),
    "mlp.gate_proj.bias": (("mlp", "gate_proj", "bias"), "identity"),
    "mlp.up_proj.bias": (("mlp", "up_proj", "bias"), "identity"),
    "mlp.down_proj.bias": (("mlp", "down_proj", "bias"), "identity"),
}
_BIAS_FLAG = {  # bias key inside a layer -> the LlamaConfig flag that creates it
    "self_attn.q_proj.bias": "qkv_bias",
    "self_attn.k_proj.bias": "qkv_bias",
    "self_attn.v_proj.bias": "qkv_bias",
    "self_attn.o_proj.bias": "o_proj_bias",
    "mlp.gate_proj.bias": "mlp_bias",
    "mlp.up_proj.bias": "mlp_bias",
    "mlp.down_proj.bias": "mlp_bias",
}
TIED_LM_HEAD_KEY = "lm_head.weight"
EMBED_KEY = "model.embed_tokens.weight"
_LAYER_KEY = re.compile(r"model\.layers\.(0|[1-9]\d*)\.(.+)")


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x)


_TRANSFORMS: dict[str, Transform] = {"identity": _identity, "linear": linear_kernel}


class LlamaTarget(NamedTuple):
    """Where one torch tensor goes: pure-dict path, expected torch shape, and the array transform."""

    path: Path
    torch_shape: tuple[int, ...]
    transform: Transform


def _torch_shape(name: str, config: LlamaConfig) -> tuple[int, ...]:
    c = config
    d, inter = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return {
        "model.embed_tokens.weight": (c.vocab_size, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (c.vocab_size, d),
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "mlp.gate_proj.weight": (inter, d),
        "mlp.up_proj.weight": (inter, d),
        "mlp.down_proj.weight": (d, inter),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.bias": (d,),
        "mlp.gate_proj.bias": (inter,),
        "mlp.up_proj.bias": (inter,),
        "mlp.down_proj.bias": (d,),
    }[name]


def _top_names(config: LlamaConfig) -> list[str]:
    """The top-level torch names this config reads (no ``lm_head.weight`` when the embeddings are tied)."""
    return [n for n in _TOP if not (n == TIED_LM_HEAD_KEY and config.tie_word_embeddings)]


def _layer_names(config: LlamaConfig) -> list[str]:
    """The per-layer torch names this config reads (biases only where the config has them)."""
    return [n for n in _PER_LAYER if n not in _BIAS_FLAG or getattr(config, _BIAS_FLAG[n])]


# model_type -> what transformers' config class assumes for a field config.json leaves out.
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "num_key_value_heads": None},
    "qwen2": {"max_position_embeddings": 32768, "num_key_value_heads": 32},
    "mistral": {"max_position_embeddings": 131072, "num_key_value_heads": 8},
}
# rope_type -> the keys its dict may hold (besides rope_type/type, rope_theta, partial_rotary_factor 1.0).
_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def _fail(what: str) -> ValueError:
    return ValueError(f"config.json: {what}")


def _flag(d: Mapping[str, Any], name: str) -> bool:
    value = d.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(f"{name} must be true or false, got {value!r}")
    return value


def _rope_kwargs(d: Mapping[str, Any], max_positions: int) -> dict[str, Any]:
    """The LlamaConfig RoPE fields from ``rope_theta`` and ``rope_scaling`` / ``rope_parameters``.

    transformers 4.x writes ``rope_theta`` and ``rope_scaling`` ({"type" or "rope_type", factor, ...} or null);
    5.x writes ``rope_parameters`` ({"rope_type", "rope_theta", ...}); ``rope_scaling`` wins when both are set.
    """
    for field in ("rope_scaling", "rope_parameters"):
        if d.get(field) is not None and not isinstance(d[field], Mapping):
            raise _fail(f"{field} must be a dict or null, got {d[field]!r}")
    field = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    rope = dict(d.get(field) or {})
    for key, value in rope.items():
        if isinstance(value, Mapping):
            raise _fail(f"{field}.{key} is a per-layer-type RoPE table ({dict(value)}); not supported")
    if "type" in rope and "rope_type" in rope and rope["type"] != rope["rope_type"]:
        raise _fail(f"{field} has type {rope['type']!r} and rope_type {rope['rope_type']!r}; which one?")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if field == "rope_scaling" and d.get("rope_parameters"):
        other = dict(d["rope_parameters"])
        other_type = other.get("rope_type", other.get("type", "default"))
        if other_type != rope_type:
            raise _fail(
                f"rope_scaling (rope_type {rope_type!r}) and rope_parameters (rope_type {other_type!r}) disagree"
            )
    if rope_type not in _ROPE_KEYS:
        raise _fail(
            f"{field}.rope_type {rope_type!r} is not supported ({dict(rope)}); this LLaMA implements "
            f"{list(_ROPE_KEYS)}"
        )
    for name, source in (("partial_rotary_factor", d), (f"{field}.partial_rotary_factor", rope)):
        value = source.get("partial_rotary_factor")
        if value is not None and float(value) != 1.0:
            raise _fail(f"{name} {value} is not supported (RoPE on the whole head only)")
    allowed = {"rope_type", "type", "rope_theta", "partial_rotary_factor", *_ROPE_KEYS[rope_type]}
    extra = sorted(set(rope) - allowed)
    if extra:
        raise _fail(
            f"{field}.{extra[0]} is not understood for rope_type {rope_type!r} (it takes {list(_ROPE_KEYS[rope_type])})"
        )

    theta = d.get("rope_theta")
    if rope.get("rope_theta") is not None:
        if theta is not None and float(rope["rope_theta"]) != float(theta):
            raise _fail(f"rope_theta {theta} disagrees with {field}.rope_theta {rope['rope_theta']}")
        theta = rope["rope_theta"]
    out: dict[str, Any] = {"rope_theta": 10000.0 if theta is None else float(theta), "rope_type": rope_type}
    if rope_type == "default":
        return out
    needed = [k for k in _ROPE_KEYS[rope_type] if k != "original_max_position_embeddings" and rope.get(k) is None]
    if needed:
        raise _fail(f"{field} with rope_type {rope_type!r} lacks {field}.{needed[0]}")
    out["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
        out["rope_low_freq_factor"] = float(rope["low_freq_factor"])
        out["rope_high_freq_factor"] = float(rope["high_freq_factor"])
        # transformers: a top-level original_max_position_embeddings wins, then the dict's, then the context.
        original = d.get("original_max_position_embeddings", rope.get("original_max_position_embeddings"))
        out["rope_original_max_position_embeddings"] = int(max_positions if original is None else original)
    return out


def llama_config_from_hf(d: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """Read a Hugging Face ``config.json`` dict; ``overrides`` set dtype, param_dtype, remat, ...

    Understands ``model_type`` ``llama`` (LLaMA 1-3, Vicuna, SmolLM, TinyLlama, ...), ``qwen2`` (q/k/v biases,
    no sliding window) and ``mistral`` (no sliding window), with ``tie_word_embeddings``, an explicit
    ``head_dim``, ``attention_bias`` / ``mlp_bias`` (llama), and RoPE scaling of type ``linear`` or ``llama3``
    (``rope_scaling`` or ``rope_parameters``, ``type`` or ``rope_type``). Everything else transformers would
    compute differently (another ``model_type``, ``hidden_act`` or RoPE type, a sliding window, per-layer RoPE,
    partial rotary, quantization) raises a one-line ``ValueError`` naming the field, never silently different
    numbers. Fields transformers itself ignores for these models are ignored.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"llama_config_from_hf expects the parsed config.json dict, got {type(d).__name__}")
    required = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"config.json lacks {missing}; is this a LLaMA config?")
    model_type = d.get("model_type", "llama")
    if model_type not in _HF_DEFAULTS:
        raise _fail(f"model_type {model_type!r} is not supported (expected one of {list(_HF_DEFAULTS)})")
    defaults = _HF_DEFAULTS[model_type]
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise _fail(f"hidden_act {act!r} is not supported (expected 'silu')")
    if d.get("quantization_config") is not None:
        raise _fail("quantization_config is set: quantized checkpoints are not supported; use the unquantized weights")
    if model_type == "qwen2":
        if _flag(d, "use_sliding_window"):
            raise _fail("use_sliding_window=true (sliding-window attention) is not supported")
        layer_types = d.get("layer_types") or []
        other = sorted({t for t in layer_types if t != "full_attention"})
        if other:
            raise _fail(f"layer_types has {other}; only 'full_attention' layers are supported")
    if model_type == "mistral":
        window = d.get("sliding_window", 4096)  # MistralConfig's default when the field is absent
        if window is not None:
            raise _fail(f"sliding_window {window} (sliding-window attention) is not supported; only null")

    heads, hidden = int(d["num_attention_heads"]), int(d["hidden_size"])
    head_dim = d.get("head_dim")
    if head_dim is not None and hidden % heads == 0 and int(head_dim) == hidden // heads:
        head_dim = None  # the derived width: keep the config equal to one written without head_dim
    kv_heads = d.get("num_key_value_heads", defaults["num_key_value_heads"])
    max_positions = int(d.get("max_position_embeddings", defaults["max_position_embeddings"]))
    if model_type == "llama":
        qkv_bias = o_proj_bias = _flag(d, "attention_bias")
        mlp_bias = _flag(d, "mlp_bias")
    else:  # transformers hard-codes these (and ignores attention_bias / mlp_bias) for qwen2 and mistral
        qkv_bias, o_proj_bias, mlp_bias = model_type == "qwen2", False, False
    kwargs = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]),
        num_hidden_layers=int(d["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else int(kv_heads),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=max_positions,
        head_dim_override=None if head_dim is None else int(head_dim),
        qkv_bias=qkv_bias,
        o_proj_bias=o_proj_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=_flag(d, "tie_word_embeddings"),
        **_rope_kwargs(d, max_positions),
    )
    return LlamaConfig(**{**kwargs, **overrides})


def llama_config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """The ``config.json`` fields (transformers 5) of the HF model that computes what ``config`` computes.

    ``model_type`` is ``llama``, or ``qwen2`` for q/k/v biases without an ``o_proj`` bias. The inverse of
    :func:`llama_config_from_hf`; raises ``ValueError`` for a bias combination no HF LLaMA-family class has.
    """
    c = config
    if c.qkv_bias == c.o_proj_bias:
        model_type = "llama"
        extra: dict[str, Any] = {"attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias}
    elif c.qkv_bias and not c.mlp_bias:
        model_type, extra = "qwen2", {"use_sliding_window": False}
    else:
        raise ValueError(
            f"LlamaConfig with qkv_bias={c.qkv_bias}, o_proj_bias={c.o_proj_bias}, mlp_bias={c.mlp_bias} has no "
            "Hugging Face LLaMA-family equivalent"
        )
    rope: dict[str, Any] = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
    if c.rope_type != "default":
        rope["factor"] = c.rope_factor
    if c.rope_type == "llama3":
        rope.update(
            low_freq_factor=c.rope_low_freq_factor,
            high_freq_factor=c.rope_high_freq_factor,
            original_max_position_embeddings=c.rope_original_max_position_embeddings,
        )
    return {
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_parameters": rope,
        "tie_word_embeddings": c.tie_word_embeddings,
        **extra,
    }


def llama_ignorable_patterns(prefix: str = "") -> tuple[str, ...]:
    """Regular expressions (full match) of keys that may be present and are skipped on purpose."""
    return tuple(re.escape(prefix) + p for p in _IGNORABLE_SUFFIXES)


def expected_llama_keys(config: LlamaConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every torch key the mapping reads, with its torch shape.

    Biases only where the config has them; no ``lm_head.weight`` with ``tie_word_embeddings`` (a tied checkpoint
    may still carry one: see :func:`llama_key_table` and :func:`llama_optional_keys`).
    """
    keys = {f"{prefix}{EMBED_KEY}": _torch_shape(EMBED_KEY, config)}
    names = _layer_names(config)
    for i in range(config.num_hidden_layers):
        keys.update({f"{prefix}model.layers.{i}.{name}": _torch_shape(name, config) for name in names})
    for name in _top_names(config):
        if name != EMBED_KEY:
            keys[prefix + name] = _torch_shape(name, config)
    return keys


def llama_optional_keys(config: LlamaConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Keys that may be present and are read, checked and not stored: a tied model's ``lm_head.weight``.

    transformers' ``save_pretrained`` leaves the tied ``lm_head.weight`` out; a ``torch.save`` of the state dict
    (or another writer) keeps it, equal to ``model.embed_tokens.weight``.
    """
    if not config.tie_word_embeddings:
        return {}
    return {f"{prefix}{TIED_LM_HEAD_KEY}": _torch_shape(TIED_LM_HEAD_KEY, config)}


class _TiedCheck:
    """Checks, one tensor at a time and in either order, that ``lm_head.weight`` equals the embedding."""

    def __init__(self, embed_key: str, lm_head_key: str):
        self.keys = (embed_key, lm_head_key)
        self.digests: dict[str, tuple] = {}

    def _digest(self, x: np.ndarray) -> tuple:
        x = np.ascontiguousarray(x)
        return x.dtype.str, x.shape, hashlib.blake2b(x.reshape(-1).view(np.uint8), digest_size=32).digest()

    def _record(self, key: str, x: np.ndarray) -> None:
        self.digests[key] = self._digest(x)
        if len(self.digests) == 2 and self.digests[self.keys[0]] != self.digests[self.keys[1]]:
            raise ValueError(
                f"{self.keys[1]} differs from {self.keys[0]}, but config.json has tie_word_embeddings=true (the "
                "model computes the logits with the embedding and ignores lm_head); fix tie_word_embeddings in "
                "config.json or remove the stale lm_head.weight"
            )

    def embedding(self, x: np.ndarray) -> np.ndarray:
        self._record(self.keys[0], x)
        return np.asarray(x)

    def lm_head(self, x: np.ndarray) -> np.ndarray:
        self._record(self.keys[1], x)
        return np.asarray(x)


def llama_key_table(
    config: LlamaConfig, prefix: str = "", available: Iterable[str] = ()
) -> dict[str, TensorRule]:
    """``{torch key: TensorRule}`` of the whole mapping; targets are paths inside the ``Llama`` pure dict.

    ``available`` (the checkpoint's keys) matters only for a tied model: when it holds ``lm_head.weight``, the
    table reads it too, with no target, and the conversion fails unless it equals the embedding. A table holds
    state for that check: build one per conversion.
    """
    table = {}
    for key in expected_llama_keys(config, prefix):
        target = llama_key_to_target(key, config, prefix)
        table[key] = TensorRule(target.path, target.torch_shape, target.transform)
    optional = [k for k in llama_optional_keys(config, prefix) if k in set(available)]
    if optional:
        (lm_head,) = optional
        embed = f"{prefix}{EMBED_KEY}"
        check = _TiedCheck(embed, lm_head)
        table[embed] = TensorRule(table[embed].target, table[embed].shape, check.embedding)
        table[lm_head] = TensorRule(None, _torch_shape(TIED_LM_HEAD_KEY, config), check.lm_head)
    return table


def llama_key_to_target(key: str, config: LlamaConfig, prefix: str = "") -> LlamaTarget | None:
    """Where one torch key goes; None for an ignorable key.

    Raises CheckpointKeyError (listing the key as unexpected) for anything else, including layer indices
    beyond ``num_hidden_layers``, keys without ``prefix``, biases the config does not have, and a tied model's
    ``lm_head.weight`` (:func:`llama_key_table` checks that one against the embedding).
    """
    if any(re.fullmatch(p, key) for p in llama_ignorable_patterns(prefix)):
        return None
    name = key[len(prefix) :] if key.startswith(prefix) else None
    if name in _top_names(config):
        path, transform = _TOP[name]
        return LlamaTarget(path, _torch_shape(name, config), _TRANSFORMS[transform])
    match = _LAYER_KEY.fullmatch(name) if name is not None else None
    if (
        match is not None
        and int(match.group(1)) < config.num_hidden_layers
        and match.group(2) in _layer_names(config)
    ):
        path, transform = _PER_LAYER[match.group(2)]
        return LlamaTarget(
            ("layers", int(match.group(1)), *path),
            _torch_shape(match.group(2), config),
            _TRANSFORMS[transform],
        )
    raise CheckpointKeyError(unexpected=[key], context=f"LLaMA mapping (prefix {prefix!r})")


def convert_llama_tensor(
    key: str, value: np.ndarray, config: LlamaConfig, prefix: str = ""
) -> tuple[Path, np.ndarray] | None:
    """Check the shape of one tensor and return ``(path, converted array)``; None for an ignorable key."""
    target = llama_key_to_target(key, config, prefix)
    if target is None:
        return None
    actual = tuple(np.shape(value))
    if actual != target.torch_shape:
        raise CheckpointKeyError(
            shape_mismatches=[(key, target.torch_shape, actual)], context="LLaMA mapping"
        )
    return target.path, target.transform(value)


def llama_params_from_torch(
    state_dict: Mapping[str, np.ndarray],
    config: LlamaConfig,
    prefix: str = "",
    *,
    allow_unexpected: bool = False,
) -> dict:
    """Nested pure dict for ``nnx.replace_by_pure_dict(nnx.state(Llama(config, ...)), params)``.

    Only keys starting with ``prefix`` are considered (so a whole Video-LLaMA state dict can be passed with
    ``prefix="llama_model."`` and ``allow_unexpected=True``); all missing/unexpected/mis-shaped keys are
    reported at once. A tied model's ``lm_head.weight`` may be present if it equals the embedding (else
    ``ValueError``).
    """
    table = llama_key_table(config, prefix, state_dict)
    available = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    check_keys(
        available,
        {k: rule.shape for k, rule in table.items()},
        llama_ignorable_patterns(prefix),
        allow_unexpected=allow_unexpected,
        context=f"LLaMA mapping (prefix {prefix!r})",
    )
    params: dict = {}
    for key, rule in table.items():
        value = rule.transform(state_dict[key])
        if rule.target is None:
            continue
        node = params
        for part in rule.target[:-1]:
            node = node.setdefault(part, {})
        node[rule.target[-1]] = value
    return params
