"""The source kinds the converter knows: which files, which mapping, how the model config is obtained.

Each kind builds a :class:`Plan` from the checkpoint's key -> shape view (no tensor data is read): a table
``torch key -> TensorRule`` whose target paths start with the ``DeemoLlama`` attribute the tensor belongs to
(``visual_encoder``, ``ln_vision``, ``image_qformer``, ``audio_encoder``, ``llama``, ``video_qformer``, ...),
the regular expressions of keys that are skipped on purpose, and the config of every component.

Configs are inferred from tensor shapes where the shapes determine them (widths, depths, query counts,
cross-attention layers), start from the real-size preset otherwise (head counts, epsilons), and can be
overridden with ``component.field=value`` (e.g. ``image_qformer.num_heads=4``). ``hf-llama`` reads
``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deemo_jax.convert import deemo
from deemo_jax.convert.common import CheckpointKeyError, TensorRule
from deemo_jax.convert.eva_vit import eva_vit_ignorable_keys, eva_vit_key_table
from deemo_jax.convert.gguf import (
    GGUFShapes,
    GGUFTensorReader,
    check_tensor_types,
    gguf_key_table,
    gguf_source_info,
    hf_config_from_gguf,
    save_gguf_tokenizer,
)
from deemo_jax.convert.imagebind_audio import (
    LOG_LOGIT_SCALE_KEY,
    imagebind_audio_ignorable_keys,
    imagebind_audio_key_table,
)
from deemo_jax.convert.llama import llama_config_from_hf, llama_ignorable_patterns, llama_key_table
from deemo_jax.convert.qformer import ln_vision_key_table, qformer_ignorable_keys, qformer_key_table
from deemo_jax.models.eva_vit import EvaViTConfig
from deemo_jax.models.imagebind_audio import ImageBindAudioConfig
from deemo_jax.models.qformer import QFormerConfig

Shapes = Mapping[str, tuple[int, ...]]
Overrides = Mapping[str, Mapping[str, str]]  # component -> field -> value (as typed on the command line)

# Config fields that do not change the checkpoint or the function it computes at inference.
RUNTIME_FIELDS = frozenset(
    {"dtype", "param_dtype", "remat", "attention_impl", "hidden_dropout", "attention_dropout", "drop_path_rate"}
)


@dataclass(frozen=True)
class Component:
    """One top-level entry of the converted tree: a DeemoLlama attribute, its module and its config."""

    module: str  # class name: EvaViT, QFormer, LayerNorm, ImageBindAudio, Llama, Embed, Linear
    config: Any  # a model config dataclass, or a dict of sizes for plain layers

    def config_dict(self) -> dict:
        return config_to_dict(self.config)


@dataclass
class Plan:
    kind: str
    table: dict[str, TensorRule]
    ignorable: dict[str, str]  # regex (full match) of keys skipped on purpose -> why (printed, in the manifest)
    components: dict[str, Component]
    notes: list[str] = field(default_factory=list)
    hf_config: dict | None = None  # hf-llama: the config.json as read
    tokenizer_dir: Path | None = None  # hf-llama: where the tokenizer files are
    # gguf: writes the tokenizer into the given folder (instead of copying files), returns the file names
    tokenizer_writer: Callable[[Path], list[str]] | None = None
    source_info: dict | None = None  # gguf: architecture, tensor types, metadata (manifest "source_info")


def config_to_dict(config: Any) -> dict:
    """JSON-friendly dict of a config dataclass (dtypes as names) or a plain dict."""
    if dataclasses.is_dataclass(config):
        out = {"class": type(config).__name__}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if f.name in ("dtype", "param_dtype"):
                value = np.dtype(value).name
            out[f.name] = value
        return out
    return dict(config)


def structural_config(config: Mapping[str, Any]) -> dict:
    """The fields that must agree between a converted checkpoint and the model it is restored into."""
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS and k != "class"}


# ------------------------------------------------------------------------------------------- overrides
def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["image_qformer.num_heads=4", ...]`` -> ``{"image_qformer": {"num_heads": "4"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        component, dot, fld = name.partition(".")
        if not sep or not dot or not component or not fld:
            raise ValueError(f"--override {item!r}: expected COMPONENT.FIELD=VALUE, e.g. image_qformer.num_heads=4")
        out.setdefault(component, {})[fld] = value
    return out


def _apply_overrides(config: Any, component: str, overrides: Overrides) -> Any:
    given = dict(overrides.get(component, {}))
    if not given:
        return config
    names = {f.name for f in dataclasses.fields(config)} - {"dtype", "param_dtype"}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"--override {component}.{unknown[0]}: no such field; {component} has {sorted(names)}")
    typed = {}
    for name, text in given.items():
        current = getattr(config, name)
        try:
            if isinstance(current, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                typed[name] = text.lower() in ("true", "1")
            elif current is None:
                typed[name] = None if text.lower() == "none" else text
            else:
                typed[name] = type(current)(text)
        except ValueError:
            raise ValueError(
                f"--override {component}.{name}={text}: expected a {type(current).__name__}"
            ) from None
    return dataclasses.replace(config, **typed)


def _check_overrides_used(overrides: Overrides, components: Sequence[str], kind: str) -> None:
    unused = sorted(set(overrides) - set(components))
    if unused:
        raise ValueError(f"--override {unused[0]}.*: {kind} has no component {unused[0]!r}; it has {list(components)}")


# ----------------------------------------------------------------------------------- config inference
def _shape(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointKeyError(missing=[key], context=f"cannot infer {what}")
    return tuple(shapes[key])


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := regex.fullmatch(k))})


def _count(indices: Sequence[int], key: str, what: str) -> int:
    """How many numbered blocks/layers there are (max index + 1), after checking they are 0..n-1 without gaps.

    ``key`` is the key pattern with ``{}`` for the index, used to name the first absent one.
    """
    if not indices:
        raise CheckpointKeyError(missing=[key.format(0)], context=f"cannot infer {what}")
    absent = sorted(set(range(indices[-1] + 1)) - set(indices))
    if absent:
        raise CheckpointKeyError(
            missing=[key.format(i) for i in absent],
            context=f"{what}: the file numbers them up to {indices[-1]} with gaps",
            hint="the file is incomplete or was edited: replace it with a fresh download",
        )
    return indices[-1] + 1


def _reasons(patterns: Sequence[str], reason: str) -> dict[str, str]:
    return dict.fromkeys(patterns, reason)


def _heads(preset_heads: int, preset_width: int, width: int, component: str, overrides: Overrides) -> int:
    """Head counts are not in the shapes: the preset's when the width is the preset's, else an override."""
    given = overrides.get(component, {}).get("num_heads")
    if given is not None:
        try:
            return int(given)
        except ValueError:
            raise ValueError(f"--override {component}.num_heads={given}: expected an int") from None
    if width == preset_width:
        return preset_heads
    raise ValueError(
        f"{component}: width {width} differs from the real model's {preset_width}, so the head count cannot be "
        f"taken from the preset; pass --override {component}.num_heads=N"
    )


def infer_qformer_config(
    shapes: Shapes,
    prefix: str,
    query_tokens_key: str,
    preset: QFormerConfig,
    component: str,
    overrides: Overrides,
) -> QFormerConfig:
    what = f"the {component} config"
    _, num_queries, hidden = _shape(shapes, query_tokens_key, what)
    layer_ids = _indices(shapes, rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.attention\.self\.query\.weight")
    num_layers = _count(layer_ids, f"{prefix}encoder.layer.{{}}.attention.self.query.weight", f"the {component} layers")
    cross = _indices(shapes, rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.crossattention\.self\.key\.weight")
    if not cross:
        raise CheckpointKeyError(missing=[f"{prefix}encoder.layer.0.crossattention.self.key.weight"], context=what)
    encoder_width = _shape(shapes, f"{prefix}encoder.layer.{cross[0]}.crossattention.self.key.weight", what)[1]
    # Cross-attention on layers i % freq == 0; with one such layer any freq >= num_layers fits (keep the preset's).
    if len(cross) == 1:
        freq = preset.cross_attention_freq if preset.cross_attention_freq >= num_layers else num_layers
    else:
        freq = cross[1] - cross[0]
    if cross != [i for i in range(num_layers) if i % freq == 0]:
        raise ValueError(
            f"{component}: cross-attention on layers {cross} of {num_layers} is not every {freq}th layer from 0"
        )
    intermediate = _shape(shapes, f"{prefix}encoder.layer.0.intermediate_query.dense.weight", what)[0]
    config = dataclasses.replace(
        preset,
        num_layers=num_layers,
        hidden_size=hidden,
        num_heads=_heads(preset.num_heads, preset.hidden_size, hidden, component, overrides),
        intermediate_size=intermediate,
        encoder_width=encoder_width,
        cross_attention_freq=freq,
        num_queries=num_queries,
    )
    return _apply_overrides(config, component, overrides)


def infer_eva_vit_config(shapes: Shapes, overrides: Overrides) -> EvaViTConfig:
    preset, what = EvaViTConfig.giant(), "the EVA ViT config"
    width = _shape(shapes, "cls_token", what)[-1]
    patch = _shape(shapes, "patch_embed.proj.weight", what)[-1]
    tokens = _shape(shapes, "pos_embed", what)[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"pos_embed has {tokens} tokens, not 1 + a square number of patches")
    blocks = _count(_indices(shapes, r"blocks\.(\d+)\.attn\.qkv\.weight"), "blocks.{}.attn.qkv.weight", "EVA blocks")
    config = EvaViTConfig(
        img_size=grid * patch,
        patch_size=patch,
        width=width,
        # LAVIS builds 39 blocks: the 40th of eva_vit_g.pth (blocks.39) is skipped, a 39-block file is used whole.
        depth=min(blocks, preset.depth),
        num_heads=_heads(preset.num_heads, preset.width, width, "visual_encoder", overrides),
        mlp_dim=_shape(shapes, "blocks.0.mlp.fc1.weight", what)[0],
        layer_norm_eps=preset.layer_norm_eps,
    )
    return _apply_overrides(config, "visual_encoder", overrides)


def infer_imagebind_audio_config(shapes: Shapes, overrides: Overrides) -> ImageBindAudioConfig:
    preset, what = ImageBindAudioConfig.huge(), "the ImageBind audio config"
    pre, trunk = "modality_preprocessors.audio.", "modality_trunks.audio."
    width = _shape(shapes, f"{pre}cls_token", what)[-1]
    blocks = _indices(shapes, rf"{re.escape(trunk)}blocks\.(\d+)\.attn\.in_proj_weight")
    config = dataclasses.replace(
        preset,
        width=width,
        kernel_size=_shape(shapes, f"{pre}rgbt_stem.proj.weight", what)[-1],
        depth=_count(blocks, f"{trunk}blocks.{{}}.attn.in_proj_weight", "the ImageBind audio blocks"),
        num_heads=_heads(preset.num_heads, preset.width, width, "audio_encoder", overrides),
        mlp_dim=_shape(shapes, f"{trunk}blocks.0.mlp.fc1.weight", what)[0],
        out_dim=_shape(shapes, "modality_heads.audio.2.weight", what)[0],
    )
    return _apply_overrides(config, "audio_encoder", overrides)


# ------------------------------------------------------------------------------------------------ kinds
def _rooted(table: Mapping[str, TensorRule], component: str) -> dict[str, TensorRule]:
    return {
        k: TensorRule(None if r.target is None else (component, *r.target), r.shape, r.transform)
        for k, r in table.items()
    }


def _one_component_plan(
    kind: str,
    component: str,
    module: str,
    config: Any,
    table: Mapping[str, TensorRule],
    ignorable: dict[str, str],
    notes: Sequence[str] = (),
) -> Plan:
    """The plan of a kind that converts into the single ``component`` (the ``module`` built from ``config``)."""
    return Plan(kind, _rooted(table, component), ignorable, {component: Component(module, config)}, notes=list(notes))


def _plan_eva(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    _check_overrides_used(overrides, ["visual_encoder"], "eva-vit-g")
    config = infer_eva_vit_config(shapes, overrides)
    return _one_component_plan(
        "eva-vit-g", "visual_encoder", "EvaViT", config, eva_vit_key_table(config), eva_vit_ignorable_keys(config)
    )


def _plan_blip2(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    _check_overrides_used(overrides, ["image_qformer", "ln_vision"], "blip2-qformer")
    config = infer_qformer_config(
        shapes, "Qformer.bert.", "query_tokens", QFormerConfig.image(), "image_qformer", overrides
    )
    width = _shape(shapes, "ln_vision.weight", "the ln_vision width")[0]
    ln_overrides = dict(overrides.get("ln_vision", {}))
    extra = sorted(set(ln_overrides) - {"eps"})
    if extra:
        raise ValueError(f"--override ln_vision.{extra[0]}: only ln_vision.eps can be set")
    try:
        ln_eps = float(ln_overrides.get("eps", 1e-5))
    except ValueError:
        raise ValueError(f"--override ln_vision.eps={ln_overrides['eps']}: expected a float") from None
    table = _rooted(qformer_key_table(config, "Qformer.bert.", "query_tokens"), "image_qformer")
    table.update(_rooted(ln_vision_key_table(width), "ln_vision"))
    # A BLIP-2 training checkpoint also holds the text side and the T5 projection: not used with queries only.
    ignorable = _reasons(
        qformer_ignorable_keys("Qformer.bert."),
        "BLIP-2 text side (word/position embeddings, text FFN, MLM head): unused with queries only",
    )
    ignorable.update(_reasons([r"t5_proj\..+", r"opt_proj\..+", r"llm_proj\..+"], "BLIP-2's projection to its LLM"))
    return Plan(
        "blip2-qformer",
        table,
        ignorable,
        {
            "image_qformer": Component("QFormer", config),
            "ln_vision": Component("LayerNorm", {"num_features": width, "eps": ln_eps}),
        },
    )


def _plan_imagebind(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    _check_overrides_used(overrides, ["audio_encoder"], "imagebind-audio")
    config = infer_imagebind_audio_config(shapes, overrides)
    return _one_component_plan(
        "imagebind-audio",
        "audio_encoder",
        "ImageBindAudio",
        config,
        imagebind_audio_key_table(config),
        _reasons(imagebind_audio_ignorable_keys(), "another ImageBind modality (vision, text, depth, thermal, IMU)"),
        notes=[f"{LOG_LOGIT_SCALE_KEY} is checked against logit_scale={config.logit_scale} and not stored"],
    )


TOKENIZER_MODEL_FILES = ("tokenizer.model", "tokenizer.json")  # a tokenizer needs one of them
TOKENIZER_FILES = (
    *TOKENIZER_MODEL_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise ValueError(f"{directory} has no config.json: hf-llama expects a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _plan_llama(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    _check_overrides_used(overrides, ["llama"], "hf-llama")
    hf_config = read_hf_config(source)
    config = _apply_overrides(llama_config_from_hf(hf_config), "llama", overrides)
    # A tied model's lm_head.weight, when the file has one, is read and checked against the embedding.
    table = _rooted(llama_key_table(config, available=shapes), "llama")
    tokenizer = [name for name in TOKENIZER_FILES if (source / name).exists()]
    notes = [] if tokenizer else [f"no tokenizer files in {source} (looked for {list(TOKENIZER_FILES)})"]
    return Plan(
        "hf-llama",
        table,
        _reasons(llama_ignorable_patterns(), "RoPE inverse frequencies (a buffer of old HF files; recomputed)"),
        {"llama": Component("Llama", config)},
        notes=notes,
        hf_config=hf_config,
        tokenizer_dir=source if tokenizer else None,
    )


def _plan_video_llama(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    branches = deemo.branches_in(shapes)
    _check_overrides_used(overrides, [b.qformer_attr for b in branches], "this video-llama file")
    table: dict[str, TensorRule] = {}
    components: dict[str, Component] = {}
    presets = {"video": QFormerConfig.video(), "audio": QFormerConfig.audio()}
    for b in branches:
        config = infer_qformer_config(
            shapes, b.qformer_prefix, b.query_tokens_key, presets[b.name], b.qformer_attr, overrides
        )
        positions = _shape(shapes, b.position_key, f"the {b.name} position table")[0]
        llm_hidden = _shape(shapes, f"{b.proj_key}.weight", f"the {b.name} projection")[0]
        table.update(deemo.branch_key_table(b, config, positions, llm_hidden))
        components[b.qformer_attr] = Component("QFormer", config)
        components[b.position_attr] = Component(
            "Embed", {"num_embeddings": positions, "features": config.encoder_width}
        )
        components[b.proj_attr] = Component(
            "Linear", {"in_features": config.hidden_size, "out_features": llm_hidden}
        )
    missing_branches = [name for name in ("video", "audio") if deemo.BRANCHES[name] not in branches]
    notes = [f"the file holds no {name} branch; only {[b.name for b in branches]} converted" for name in
             missing_branches]
    ignorable = _reasons(
        deemo.deemo_ignorable_keys(branches), "a buffer, or a Q-Former text part unused with queries only"
    )
    return Plan("video-llama", table, ignorable, components, notes=notes)


def _plan_gguf(shapes: Shapes, overrides: Overrides, source: Path) -> Plan:
    if not isinstance(shapes, GGUFShapes):
        raise ValueError(f"--source gguf reads .gguf files; {source} was not opened as one")
    _check_overrides_used(overrides, ["llama"], "gguf")
    hf_config = hf_config_from_gguf(shapes, source.name)
    config = _apply_overrides(llama_config_from_hf(hf_config), "llama", overrides)
    table = gguf_key_table(config)
    check_tensor_types(shapes, table, source.name)
    template = shapes.metadata.get("tokenizer.chat_template")
    return Plan(
        "gguf",
        table,
        {},
        {"llama": Component("Llama", config)},
        notes=[] if template else [f"{source.name} has no tokenizer.chat_template"],
        hf_config=hf_config,
        tokenizer_writer=lambda target: save_gguf_tokenizer(source, target, template),
        source_info=gguf_source_info(shapes, source),
    )


@dataclass(frozen=True)
class Kind:
    name: str
    summary: str
    input: str  # what --input is
    container_key: str | None  # unwrapped from a .pth when present
    default_dtype: str
    signature: Callable[[set[str]], bool]  # does a key set look like this kind?
    build: Callable[[Shapes, Overrides, Path], Plan]
    input_is_dir: bool = False
    open_reader: Callable[[Path], Any] | None = None  # a TensorReader for --input (default: readers.open_checkpoint)
    llm: bool = False  # converts an LLM and its tokenizer: the manifest gets an "llm" section, --template applies


def _has(*keys: str) -> Callable[[set[str]], bool]:
    return lambda available: all(k in available for k in keys)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "eva-vit-g",
            "EVA-CLIP ViT-g/14 (LAVIS eva_vit_g.pth; blocks.39 dropped)",
            "eva_vit_g.pth (raw state dict)",
            None,
            "float32",
            _has("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"),
            _plan_eva,
        ),
        Kind(
            "blip2-qformer",
            "BLIP-2 image Q-Former + query tokens + ln_vision",
            "blip2_pretrained_flant5xxl.pth (['model'])",
            "model",
            "float32",
            _has("query_tokens", "Qformer.bert.encoder.layer.0.attention.self.query.weight"),
            _plan_blip2,
        ),
        Kind(
            "imagebind-audio",
            "ImageBind-Huge audio tower",
            "imagebind_huge.pth (raw state dict, all modalities)",
            None,
            "float32",
            _has("modality_trunks.audio.blocks.0.attn.in_proj_weight"),
            _plan_imagebind,
        ),
        Kind(
            "hf-llama",
            "Hugging Face LLaMA / Vicuna / Qwen2 / Mistral (LlamaForCausalLM family) + tokenizer",
            "a Hugging Face model directory (config.json, *.safetensors or pytorch_model-*.bin, tokenizer)",
            None,
            "bfloat16",
            _has("model.layers.0.self_attn.q_proj.weight"),
            _plan_llama,
            input_is_dir=True,
            llm=True,
        ),
        Kind(
            "video-llama",
            "trainable video and/or audio branch of a Video-LLaMA / AffectGPT / DEEMO fine-tuned checkpoint",
            "a fine-tuned .pth (['model'])",
            "model",
            "float32",
            lambda available: bool(deemo.branches_in(available)),
            _plan_video_llama,
        ),
        Kind(
            "gguf",
            "llama.cpp GGUF of a LLaMA-architecture model (dequantised) + tokenizer and chat template",
            "a .gguf file (general.architecture llama; F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K)",
            None,
            "float32",
            _has("token_embd.weight", "blk.0.attn_q.weight"),
            _plan_gguf,
            open_reader=GGUFTensorReader,
            llm=True,
        ),
    )
}


def detect_kinds(keys: set[str]) -> list[str]:
    """Kinds whose signature keys the checkpoint holds."""
    return [name for name, kind in KINDS.items() if kind.signature(keys)]


def check_kind(kind: Kind, keys: set[str], source: Path) -> None:
    """Raise a one-line ``ValueError`` when the file is not a ``kind`` checkpoint (naming what it looks like)."""
    if kind.signature(keys):
        return
    others = [k for k in detect_kinds(keys) if k != kind.name]
    if others:
        raise ValueError(
            f"wrong kind: {source} looks like {_article(others[0])} {others[0]} checkpoint "
            f"({KINDS[others[0]].summary}), not {kind.name}; use --source {others[0]}"
        )
    sample = sorted(keys)[:6]
    raise ValueError(
        f"wrong kind: {source} has none of the keys of {_article(kind.name)} {kind.name} checkpoint ({kind.input}); "
        f"its {len(keys)} keys start with {sample}"
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeio" else "a"
