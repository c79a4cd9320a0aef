"""Small checkpoints with the exact key names of the released files (reference_spec §2.4, §3.3, §4-§8).

Key names are written out here from the spec (EVA, LAVIS Q-Formers, Video-LLaMA branches) or taken from the
torch modules that define them (``transformers.LlamaForCausalLM``, the ImageBind reference), never generated
from the mappings under test, so a wrong name in a mapping shows up as a missing/unexpected key. Files carry
what the real ones carry besides the weights: ``blocks.39``-style extra EVA block (and, on request, EVA-CLIP's
final ``norm``/``head``), BLIP-2's text FFN, word embeddings, ``cls`` head and ``t5_proj``, ImageBind's other
modalities, buffers (``position_ids``, ``log_logit_scale``, ``rotary_emb.inv_freq``, the text ``mask``), and the
``["model"]`` training wrapper.

Sizes follow ``DeemoLlamaConfig.tiny()`` so converted outputs restore into a tiny ``DeemoLlama``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from deemo_jax.convert.torch_reference import ImageBindAudioReference, randomize_
from deemo_jax.models.deemo_llama import DeemoLlamaConfig

TINY = DeemoLlamaConfig.tiny()
QFORMER_HEADS = TINY.image_qformer.num_heads  # 4: not in the shapes, passed with --override


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _fill(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Random float32 values; LayerNorm weights around 1, matrices scaled by 1/sqrt(fan-in)."""
    rng = _rng(seed)
    out = {}
    for key, shape in shapes.items():
        noise = rng.normal(size=shape).astype(np.float32)
        if ("norm" in key.lower() or "LayerNorm" in key or "ln_vision" in key) and key.endswith("weight"):
            out[key] = 1.0 + 0.2 * noise
        elif len(shape) >= 2 and key.endswith("weight"):
            out[key] = noise / math.sqrt(int(np.prod(shape[1:])))
        else:
            out[key] = 0.2 * noise
    return out


# -------------------------------------------------------------------------------------------------- EVA
def eva_state_dict(
    seed: int = 0, *, blocks: int | None = None, final_layers: int | None = None
) -> dict[str, np.ndarray]:
    """``eva_vit_g.pth`` layout: ``blocks`` blocks (default depth + 1: the last is dropped, like ``blocks.39``).

    ``final_layers``: also EVA-CLIP's final ``norm.*`` and ``head.*`` (width -> ``final_layers``; 1408 -> 1024 in
    the released file), which LAVIS ignores.
    """
    c = TINY.vit
    w, m, p = c.width, c.mlp_dim, c.patch_size
    shapes = {
        "cls_token": (1, 1, w),
        "pos_embed": (1, c.num_tokens, w),
        "patch_embed.proj.weight": (w, 3, p, p),
        "patch_embed.proj.bias": (w,),
    }
    for i in range(c.depth + 1 if blocks is None else blocks):
        b = f"blocks.{i}."
        shapes.update({
            f"{b}norm1.weight": (w,), f"{b}norm1.bias": (w,),
            f"{b}attn.q_bias": (w,), f"{b}attn.v_bias": (w,),
            f"{b}attn.qkv.weight": (3 * w, w),
            f"{b}attn.proj.weight": (w, w), f"{b}attn.proj.bias": (w,),
            f"{b}norm2.weight": (w,), f"{b}norm2.bias": (w,),
            f"{b}mlp.fc1.weight": (m, w), f"{b}mlp.fc1.bias": (m,),
            f"{b}mlp.fc2.weight": (w, m), f"{b}mlp.fc2.bias": (w,),
        })
    if final_layers is not None:
        shapes.update({
            "norm.weight": (w,), "norm.bias": (w,),
            "head.weight": (final_layers, w), "head.bias": (final_layers,),
        })
    return _fill(shapes, seed)


# ------------------------------------------------------------------------------------------- Q-Formers
def lavis_qformer_shapes(config, prefix: str, query_tokens_key: str, *, text_parts: bool) -> dict:
    """LAVIS ``BertModel`` keys; ``text_parts``: the BLIP-2 file's word/position embeddings, text FFN, MLM head."""
    h, i_size, e = config.hidden_size, config.intermediate_size, config.encoder_width
    shapes = {query_tokens_key: (1, config.num_queries, h)}
    shapes[f"{prefix}embeddings.LayerNorm.weight"] = (h,)
    shapes[f"{prefix}embeddings.LayerNorm.bias"] = (h,)
    if text_parts:
        shapes[f"{prefix}embeddings.word_embeddings.weight"] = (50, h)
        shapes[f"{prefix}embeddings.position_embeddings.weight"] = (64, h)
    for layer in range(config.num_layers):
        b = f"{prefix}encoder.layer.{layer}."
        blocks = [("attention", h)]
        if layer % config.cross_attention_freq == 0:
            blocks.append(("crossattention", e))
        for name, kv_width in blocks:
            shapes[f"{b}{name}.self.query.weight"] = (h, h)
            shapes[f"{b}{name}.self.query.bias"] = (h,)
            for kv in ("key", "value"):
                shapes[f"{b}{name}.self.{kv}.weight"] = (h, kv_width)
                shapes[f"{b}{name}.self.{kv}.bias"] = (h,)
            shapes[f"{b}{name}.output.dense.weight"] = (h, h)
            shapes[f"{b}{name}.output.dense.bias"] = (h,)
            shapes[f"{b}{name}.output.LayerNorm.weight"] = (h,)
            shapes[f"{b}{name}.output.LayerNorm.bias"] = (h,)
        ffns = [("intermediate_query", "output_query")] + ([("intermediate", "output")] if text_parts else [])
        for inter, out in ffns:
            shapes[f"{b}{inter}.dense.weight"] = (i_size, h)
            shapes[f"{b}{inter}.dense.bias"] = (i_size,)
            shapes[f"{b}{out}.dense.weight"] = (h, i_size)
            shapes[f"{b}{out}.dense.bias"] = (h,)
            shapes[f"{b}{out}.LayerNorm.weight"] = (h,)
            shapes[f"{b}{out}.LayerNorm.bias"] = (h,)
    if text_parts:
        root = prefix.removesuffix("bert.")
        shapes[f"{root}cls.predictions.bias"] = (50,)
        shapes[f"{root}cls.predictions.transform.dense.weight"] = (h, h)
        shapes[f"{root}cls.predictions.transform.dense.bias"] = (h,)
        shapes[f"{root}cls.predictions.transform.LayerNorm.weight"] = (h,)
        shapes[f"{root}cls.predictions.transform.LayerNorm.bias"] = (h,)
        shapes[f"{root}cls.predictions.decoder.weight"] = (50, h)
    return shapes


def position_ids(n: int = 64) -> np.ndarray:
    return np.arange(n, dtype=np.int64)[None]


def blip2_state_dict(seed: int = 1) -> dict[str, np.ndarray]:
    """``blip2_pretrained_flant5xxl.pth``['model'] layout (image Q-Former + ln_vision + text side + t5_proj)."""
    c = TINY.image_qformer
    shapes = lavis_qformer_shapes(c, "Qformer.bert.", "query_tokens", text_parts=True)
    shapes["ln_vision.weight"] = (c.encoder_width,)
    shapes["ln_vision.bias"] = (c.encoder_width,)
    shapes["t5_proj.weight"] = (48, c.hidden_size)
    shapes["t5_proj.bias"] = (48,)
    sd = _fill(shapes, seed)
    sd["Qformer.bert.embeddings.position_ids"] = position_ids()
    return sd


# --------------------------------------------------------------------------------------------- ImageBind
def imagebind_state_dict(seed: int = 2) -> dict[str, np.ndarray]:
    """``imagebind_huge.pth`` layout: the audio tower plus keys of the other modalities."""
    c = TINY.audio_encoder
    ref = ImageBindAudioReference(width=c.width, depth=c.depth, heads=c.num_heads, mlp_dim=c.mlp_dim, out_dim=c.out_dim)
    randomize_(ref, seed)
    sd = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    others = _fill(
        {
            "modality_preprocessors.vision.cls_token": (1, 1, 16),
            "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (16, 3, 2, 4, 4),
            "modality_trunks.vision.blocks.0.attn.in_proj_weight": (48, 16),
            "modality_trunks.text.blocks.0.mlp.fc1.weight": (64, 16),
            "modality_heads.vision.2.weight": (24, 16),
            "modality_heads.text.proj.1.weight": (24, 16),
        },
        seed + 1,
    )
    sd.update(others)
    sd["modality_preprocessors.text.mask"] = np.triu(np.full((77, 77), -np.inf, np.float32), 1)
    sd["modality_postprocessors.text.1.log_logit_scale"] = np.array(math.log(100.0), np.float32)
    return sd


# -------------------------------------------------------------------------------------------- HF LLaMA
def llama_state_dict(seed: int = 3) -> dict[str, np.ndarray]:
    """``LlamaForCausalLM(tiny).state_dict()`` names, random values, plus an old-style rotary buffer."""
    import transformers

    c = TINY.llm
    hf = transformers.LlamaForCausalLM(llama_hf_config(c))
    randomize_(hf, seed)
    sd = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(c.head_dim // 2, np.float32)
    return sd


def llama_hf_config(c):
    import transformers

    return transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=False,
    )


# Vicuna v0's tokenizer_config.json (transformers 4.28): no "legacy" key, so the converter sets legacy=true.
VICUNA_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                           "unk_token": "<unk>"}
TOKENIZER_WORDS = ("the athlete said we played well today but I am disappointed with the result he smiles and "
                   "folds his arms her voice is low she laughs quietly because nothing surprised them").split()


def write_sentencepiece_model(path: Path, vocab_size: int = TINY.llm.vocab_size) -> Path:
    """A SentencePiece BPE model normalised like LLaMA's (whitespace kept, dummy prefix), ``<unk>``/``<s>``/``</s>``
    at 0/1/2, whose vocabulary is the tiny LLM's, so the placeholders get the ids V and V + 1."""
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    texts = [" ".join(rng.choice(TOKENIZER_WORDS) for _ in range(10)) + "." for _ in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def write_hf_llama_dir(directory: Path, sd: dict[str, np.ndarray], *, fmt: str = "safetensors") -> Path:
    """A HF model directory: config.json, two fp16 shards (+ index), Vicuna-v0-like tokenizer files."""
    directory.mkdir(parents=True)
    config = llama_hf_config(TINY.llm).to_dict()
    (directory / "config.json").write_text(json.dumps(config))
    write_sentencepiece_model(directory / "tokenizer.model")
    (directory / "tokenizer_config.json").write_text(json.dumps(VICUNA_TOKENIZER_CONFIG))
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    keys = list(sd)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for n, shard_keys in enumerate(shards, 1):
        if fmt == "safetensors":
            name = f"model-{n:05d}-of-00002.safetensors"
            save_file({k: sd[k].astype(np.float16) for k in shard_keys}, str(directory / name),
                      metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{n:05d}-of-00002.bin"
            torch.save({k: torch.from_numpy(sd[k].astype(np.float16)) for k in shard_keys}, directory / name)
        weight_map.update({k: name for k in shard_keys})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


# ---------------------------------------------------------------------------------------- Video-LLaMA
def branch_state_dict(name: str, seed: int) -> dict[str, np.ndarray]:
    """Trainable keys of one branch as Video-LLaMA saves them (Q-Former without text parts)."""
    if name == "video":
        c, prefix, tokens, pos_key, positions, proj = (
            TINY.video_qformer, "video_Qformer.bert.", "video_query_tokens",
            "video_frame_position_embedding.weight", TINY.max_frame_positions, "llama_proj",
        )
    else:
        c, prefix, tokens, pos_key, positions, proj = (
            TINY.audio_qformer, "audio_Qformer.bert.", "audio_query_tokens",
            "audio_position_embedding.weight", TINY.max_audio_clips, "audio_llama_proj",
        )
    shapes = lavis_qformer_shapes(c, prefix, tokens, text_parts=False)
    shapes[pos_key] = (positions, c.encoder_width)
    shapes[f"{proj}.weight"] = (TINY.llm.hidden_size, c.hidden_size)
    shapes[f"{proj}.bias"] = (TINY.llm.hidden_size,)
    sd = _fill(shapes, seed)
    sd[f"{prefix}embeddings.position_ids"] = position_ids()
    return sd


def video_llama_state_dict(branches=("video", "audio"), seed: int = 4) -> dict[str, np.ndarray]:
    """``_save_checkpoint``'s ``model``: trainable branch keys plus the buffers every such file keeps."""
    sd = {}
    for n, name in enumerate(branches):
        sd.update(branch_state_dict(name, seed + n))
    sd["Qformer.bert.embeddings.position_ids"] = position_ids()
    sd["audio_encoder.modality_postprocessors.audio.1.log_logit_scale"] = np.array(math.log(20.0), np.float32)
    sd["audio_encoder.modality_postprocessors.text.1.log_logit_scale"] = np.array(math.log(100.0), np.float32)
    sd["audio_encoder.modality_preprocessors.text.mask"] = np.triu(np.full((77, 77), -np.inf, np.float32), 1)
    sd["llama_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    return sd


# -------------------------------------------------------------------------------------------- writers
def save_pth(path: Path, sd: dict[str, np.ndarray], *, wrap: bool = False, legacy: bool = False) -> Path:
    """``torch.save`` a state dict, optionally as a Video-LLaMA training checkpoint ``{"model": ..., ...}``.

    ``legacy``: torch's pre-1.6 (non-zip) format, ``_use_new_zipfile_serialization=False``.
    """
    tensors = {k: torch.from_numpy(np.asarray(v, order="C")) for k, v in sd.items()}
    if wrap:
        first = next(iter(tensors.values()))
        obj = {
            "model": tensors,
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros_like(first)}},
                          "param_groups": [{"lr": 1e-4, "params": [0]}]},
            "config": {"run": {"task": "video_text_pretrain"}},
            "scaler": {"scale": 65536.0},
            "epoch": 3,
        }
    else:
        obj = tensors
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path
