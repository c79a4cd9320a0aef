"""HF ``LlamaForCausalLM`` state dict -> pure dict for :class:`deemo_jax.models.llama.Llama`.

Two levels, so a large checkpoint can be streamed one tensor at a time:

* :func:`llama_key_to_target` tells, for one torch key, where it goes in the NNX pure dict (a path tuple such
  as ``('layers', 3, 'self_attn', 'q_proj', 'kernel')``; ``nnx.List`` indices are ints), its expected torch
  shape and how the array is transformed (Linear weights transposed to ``[in, out]``);
  :func:`convert_llama_tensor` applies it to one array after checking the shape.
* :func:`llama_params_from_torch` checks a whole state dict with ``check_keys`` and builds the nested dict
  for ``nnx.replace_by_pure_dict(state, params)`` (the benchmarks build their models with it).

:func:`llama_config_from_hf` reads a Hugging Face ``config.json`` into a ``LlamaConfig``.

Arrays keep the dtype they come in with (the caller casts). Never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from deemo_jax.convert.common import CheckpointKeyError, check_keys, linear_kernel
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
}
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
    d, kv, inter = c.hidden_size, c.num_key_value_heads * c.head_dim, c.intermediate_size
    return {
        "model.embed_tokens.weight": (c.vocab_size, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (c.vocab_size, d),
        "self_attn.q_proj.weight": (d, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d),
        "mlp.gate_proj.weight": (inter, d),
        "mlp.up_proj.weight": (inter, d),
        "mlp.down_proj.weight": (d, inter),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
    }[name]


def llama_config_from_hf(d: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """Read a Hugging Face LLaMA ``config.json`` dict; ``overrides`` set dtype, param_dtype, remat, ...

    Rejects what this implementation does not compute (RoPE scaling, biases, tied embeddings, another
    activation, a head_dim other than hidden/heads) instead of silently producing different numbers.
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
    if model_type != "llama":
        raise ValueError(f"config.json: model_type {model_type!r} is not supported (expected 'llama')")
    rope_theta = d.get("rope_theta")
    # transformers >= 5 writes {"rope_type": ..., "rope_theta": ...} under rope_parameters.
    for field in ("rope_scaling", "rope_parameters"):
        rope = d.get(field)
        if rope is None:
            continue
        if not isinstance(rope, Mapping):
            raise ValueError(f"config.json: {field} must be a dict or null, got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(
                f"config.json: {field} with rope_type {rope_type!r} ({dict(rope)}) is not supported; "
                "only plain RoPE (rope_type 'default' or no rope_scaling) is implemented"
            )
        if "rope_theta" in rope:
            if rope_theta is not None and float(rope["rope_theta"]) != float(rope_theta):
                raise ValueError(
                    f"config.json: rope_theta {rope_theta} disagrees with {field}.rope_theta "
                    f"{rope['rope_theta']}"
                )
            rope_theta = rope["rope_theta"]
    for flag in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
        if d.get(flag, False):
            raise ValueError(f"config.json: {flag}=true is not supported by this LLaMA implementation")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"config.json: hidden_act {act!r} is not supported (expected 'silu')")
    heads = int(d["num_attention_heads"])
    head_dim = d.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != int(d["hidden_size"]):
        raise ValueError(
            f"config.json: head_dim {head_dim} * num_attention_heads {heads} != hidden_size "
            f"{d['hidden_size']}; a decoupled head_dim is not supported"
        )
    kv_heads = d.get("num_key_value_heads")
    kwargs = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_hidden_layers=int(d["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=heads if kv_heads is None else int(kv_heads),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=10000.0 if rope_theta is None else float(rope_theta),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
    )
    return LlamaConfig(**{**kwargs, **overrides})


def llama_ignorable_patterns(prefix: str = "") -> tuple[str, ...]:
    """Regular expressions (full match) of keys that may be present and are skipped on purpose."""
    return tuple(re.escape(prefix) + p for p in _IGNORABLE_SUFFIXES)


def expected_llama_keys(config: LlamaConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every torch key the mapping reads, with its torch shape."""
    keys = {f"{prefix}model.embed_tokens.weight": _torch_shape("model.embed_tokens.weight", config)}
    for i in range(config.num_hidden_layers):
        keys.update({f"{prefix}model.layers.{i}.{name}": _torch_shape(name, config) for name in _PER_LAYER})
    for name in ("model.norm.weight", "lm_head.weight"):
        keys[prefix + name] = _torch_shape(name, config)
    return keys


def llama_key_to_target(key: str, config: LlamaConfig, prefix: str = "") -> LlamaTarget | None:
    """Where one torch key goes; None for an ignorable key.

    Raises CheckpointKeyError (listing the key as unexpected) for anything else, including layer indices
    beyond ``num_hidden_layers`` and keys without ``prefix``.
    """
    if any(re.fullmatch(p, key) for p in llama_ignorable_patterns(prefix)):
        return None
    name = key[len(prefix) :] if key.startswith(prefix) else None
    if name in _TOP:
        path, transform = _TOP[name]
        return LlamaTarget(path, _torch_shape(name, config), _TRANSFORMS[transform])
    match = _LAYER_KEY.fullmatch(name) if name is not None else None
    if match is not None and int(match.group(1)) < config.num_hidden_layers and match.group(2) in _PER_LAYER:
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
    reported at once.
    """
    expected = expected_llama_keys(config, prefix)
    available = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    check_keys(
        available,
        expected,
        llama_ignorable_patterns(prefix),
        allow_unexpected=allow_unexpected,
        context=f"LLaMA mapping (prefix {prefix!r})",
    )
    params: dict = {}
    for key in expected:
        target = llama_key_to_target(key, config, prefix)
        node = params
        for part in target.path[:-1]:
            node = node.setdefault(part, {})
        node[target.path[-1]] = target.transform(state_dict[key])
    return params
