"""The training config schema (``ml_collections``) and its translation into model / data / mesh settings.

``base_config()`` defines every key, with the paper's recipe as the values (DEEMO-LLaMA instruction tuning:
AffectGPT stage 3, reference_spec §10.4); ``configs/*.py`` state only what differs and lock the dict, so an
unknown key on the command line is an error. :func:`check_config` validates values and files *before* JAX
builds anything and raises :class:`ConfigError` with one line saying what is wrong and how to fix it.

Batch terms: ``train.global_batch_size`` examples per optimizer step, split into ``train.grad_accum_steps``
micro-batches; each micro-batch is spread over the processes (``micro_batch / process_count`` rows each) and
over the ``data x fsdp`` mesh axes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from ml_collections import ConfigDict

from deemo_jax import sharding
from deemo_jax.convert.converted import ConvertedCheckpointError, llm_record, read_manifest
from deemo_jax.data.pipeline import OVERLONG_POLICIES, DataConfig
from deemo_jax.data.prompts import TASKS, PromptConfig
from deemo_jax.data.shards import with_shard_facts
from deemo_jax.data.templates import BUILTIN, NAMES, PromptTemplate
from deemo_jax.models import attention
from deemo_jax.models.deemo_llama import PAPER_TRAINABLE, PRESETS, DeemoLlamaConfig
from deemo_jax.models.llama import LlamaConfig
from deemo_jax.train.evaluators import evaluator_exists

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config key under ``checkpoints`` -> (DeemoLlama components it restores, converter --source kinds it accepts).
FROZEN_CHECKPOINTS = {
    "eva_vit": (("visual_encoder",), ("eva-vit-g",)),
    "blip2": (("image_qformer", "ln_vision"), ("blip2-qformer",)),
    "imagebind": (("audio_encoder",), ("imagebind-audio",)),
    "llm": (("llama",), ("hf-llama", "gguf")),
}
VIDEO_COMPONENTS = ("visual_encoder", "ln_vision", "image_qformer", "video_frame_position_embedding",
                    "video_qformer", "llama_proj")
AUDIO_COMPONENTS = ("audio_encoder", "audio_position_embedding", "audio_qformer", "audio_llama_proj")


class ConfigError(ValueError):
    """A bad training config; the message is one line: what is wrong and how to fix it."""


def base_config() -> ConfigDict:
    """Every key a training config has; the values are the paper's recipe (the one place it is stated)."""
    c = ConfigDict()
    c.workdir = ""
    c.seed = 0
    # Plan the exact run (deemo_jax/train/plan.py: memory per device, FLOPs, step time), print it and exit.
    c.dry_run = False
    c.model = ConfigDict(
        dict(
            preset="deemo_7b",
            frozen_dtype="bfloat16",
            use_video=True,
            use_audio=True,
            remat=False,
            # Attention of the ViT, ImageBind and the LLM: "" (auto: per-head loop on CPU, XLA on GPU), "xla",
            # "looped", "cudnn" (GPU, bf16).
            attention_impl="",
            # Frozen parts without a checkpoint are randomly initialised only when this is True (demo, tests).
            random_frozen=False,
            # Field overrides on the preset (deemo_jax.models.deemo_llama.PRESETS), nested like DeemoLlamaConfig,
            # e.g. {"llm": {"num_hidden_layers": 1}}.
            overrides=ConfigDict(),
        )
    )
    c.checkpoints = ConfigDict(dict(eva_vit="", blip2="", imagebind="", llm="", init_trainable=""))
    # The paper's freezing: only these modules train (patterns over parameter paths, deemo_jax/train/partition.py).
    c.trainable = tuple(PAPER_TRAINABLE)
    c.data = ConfigDict(
        dict(shard_dir="", split="train", tokenizer_path="", max_length=512, seed=0, use_audio=True,
             use_video=True, use_transcription=True, nfbl_as_text=False, task="reasoning", instructions=(),
             labels=(), num_frames=0, num_audio_clips=0, overlong_policy="truncate_transcription",
             worker_count=0, worker_buffer_size=2, read_threads=4, read_buffer_size=32,
             # Prompt template (deemo_jax/data/templates.py): "" = the converted LLM's (its manifest), else the
             # tokenizer's chat template, else "vicuna"; or a name: vicuna, affectgpt, llama2, chatml, chat_template.
             template="",
             # Stop on a corrupt shard record (exit 3, naming file and index), or skip and count it.
             skip_corrupt_records=False,
             # The reference's train-time crop of the frames (RandomResizedCropVideo, deemo_jax/data/augment.py).
             augment=True)
    )
    # Paper: batch size 2 on one A100; 10k steps are ~12 epochs of DEEMO-MER's ~1.6k training clips (our choice).
    # dropout: Q-Former dropout 0.1 (reference_spec §10.5).
    c.train = ConfigDict(
        dict(global_batch_size=2, grad_accum_steps=1, total_steps=10_000, log_every=10, checkpoint_every=500,
             keep_checkpoints=3, async_checkpointing=True, dropout=True, progress_bar=True,
             compilation_cache_dir="~/.cache/deemo-jax/xla",
             # On a GPU/TPU, compile the step and check it fits before allocating anything (refuses with a fix).
             fit_check=True)
    )
    # AffectGPT stage 3: 1000 warm-up steps, cosine 3e-5 -> 1e-5. The reference does not clip gradients (0 = off).
    c.optim = ConfigDict(
        dict(init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=1000, weight_decay=0.05, b1=0.9,
             b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    # Frozen LLM and encoders sharded over fsdp (all devices by default), the batch over data x fsdp.
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.distributed = ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0))
    # ``type`` names the evaluator module run at the end (deemo_jax/eval/evaluators/<type>.py).
    c.eval = ConfigDict(dict(at_end=False, type="recognition", split="test", batch_size=8, max_new_tokens=16))
    return c


# ------------------------------------------------------------------------------------------- validation
def _fail(message: str) -> None:
    raise ConfigError(message)


def _positive_int(cfg: ConfigDict, key: str) -> None:
    value = _get(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(f"config.{key} = {value!r}: must be a positive integer; set --config.{key}=N")


def _get(cfg: ConfigDict, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _path(value: str) -> Path:
    return Path(os.path.expanduser(value))


def tokenizer_path(cfg: ConfigDict) -> str:
    """``data.tokenizer_path``, defaulting to the tokenizer shipped in the converted LLM directory."""
    if cfg.data.tokenizer_path:
        return cfg.data.tokenizer_path
    if cfg.checkpoints.llm:
        return str(_path(cfg.checkpoints.llm) / "tokenizer")
    return ""


def built_components(cfg: ConfigDict) -> tuple[str, ...]:
    """The DeemoLlama attributes the config builds (branches switched off are not built at all)."""
    names = []
    if cfg.model.use_video:
        names += VIDEO_COMPONENTS
    if cfg.model.use_audio:
        names += AUDIO_COMPONENTS
    return (*names, "llama")


def _check_converted(key: str, value: str, kinds: tuple[str, ...]) -> None:
    fix = f"convert it with scripts/convert_checkpoint.py --source {kinds[0]} --output DIR and pass --config.{key}=DIR"
    if not _path(value).exists():
        _fail(f"config.{key} = {value!r} does not exist; {fix}")
    try:
        found = read_manifest(_path(value)).get("kind")
    except ConvertedCheckpointError as e:
        _fail(f"config.{key}: {e} ({fix})")
    if found not in kinds:
        _fail(f"config.{key} = {value!r} holds a {found!r} checkpoint, expected {' or '.join(map(repr, kinds))}; {fix}")


def check_config(cfg: ConfigDict) -> None:
    """Validate values and referenced files (no JAX device use). Raises :class:`ConfigError`."""
    if not cfg.workdir:
        _fail("config.workdir is empty; set --config.workdir=DIR (checkpoints, logs and plots go there)")
    m = cfg.model
    if m.preset not in PRESETS:
        _fail(f"config.model.preset = {m.preset!r}: use one of {sorted(PRESETS)} (deemo_jax/models/deemo_llama.py)")
    try:
        DeemoLlamaConfig.preset(m.preset, m.overrides.to_dict())
    except (TypeError, ValueError) as e:
        _fail(f"config.model.overrides: {' '.join(str(e).split())}; fix the field names (see DeemoLlamaConfig)")
    if m.frozen_dtype not in DTYPES:
        _fail(f"config.model.frozen_dtype = {m.frozen_dtype!r}: must be one of {sorted(DTYPES)}")
    named = [impl for impl in attention.IMPLEMENTATIONS if impl]
    if m.attention_impl and m.attention_impl not in named:
        _fail(
            f"config.model.attention_impl = {m.attention_impl!r}: must be '' (auto) or one of {named} "
            "(see deemo_jax/models/attention.py)"
        )
    if not (m.use_video or m.use_audio):
        _fail("config.model.use_video and config.model.use_audio are both False; build at least one branch")
    for key in ("data.use_video", "data.use_audio"):
        branch = "model." + key.split(".")[1]
        if _get(cfg, key) and not _get(cfg, branch):
            _fail(f"config.{key} is True but config.{branch} is False; the model has no branch for that input")
    for key in ("seed", "data.seed"):
        value = _get(cfg, key)
        if not isinstance(value, int) or not 0 <= value < 2**32:
            _fail(f"config.{key} = {value!r}: must be an integer in [0, 2**32)")
    for key in ("train.global_batch_size", "train.grad_accum_steps", "train.total_steps", "train.log_every",
                "train.checkpoint_every", "train.keep_checkpoints", "data.max_length", "eval.batch_size",
                "eval.max_new_tokens", "distributed.num_processes"):
        _positive_int(cfg, key)
    t = cfg.train
    if t.global_batch_size % t.grad_accum_steps:
        _fail(
            f"config.train.global_batch_size = {t.global_batch_size} is not divisible by train.grad_accum_steps "
            f"= {t.grad_accum_steps}; choose a batch that is a multiple of the accumulation steps"
        )
    o = cfg.optim
    for key in ("init_lr", "min_lr", "warmup_lr", "weight_decay", "eps", "grad_clip"):
        value = o[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or not math.isfinite(value):
            _fail(f"config.optim.{key} = {value!r}: must be a finite number >= 0")
    if not isinstance(o.warmup_steps, int) or o.warmup_steps < 0:
        _fail(f"config.optim.warmup_steps = {o.warmup_steps!r}: must be an integer >= 0")
    for key in ("b1", "b2"):
        if not 0 <= o[key] < 1:
            _fail(f"config.optim.{key} = {o[key]!r}: must be in [0, 1)")
    fixed = [v for v in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if isinstance(v, int) and v > 0]
    try:  # the device count is not known yet: any count the fixed axes divide checks the values and the -1 rule
        sharding.mesh_sizes(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, math.prod(fixed))
    except ValueError as e:
        _fail(f"config.{e}")
    d = cfg.data
    if d.task not in TASKS:
        _fail(f"config.data.task = {d.task!r}: must be one of {TASKS}")
    if d.overlong_policy not in OVERLONG_POLICIES:
        _fail(f"config.data.overlong_policy = {d.overlong_policy!r}: must be one of {OVERLONG_POLICIES}")
    if d.template not in ("", *NAMES):
        _fail(f"config.data.template = {d.template!r}: use one of {NAMES} or '' (the converted LLM's template, "
              "else the tokenizer's chat template, else vicuna)")
    if cfg.eval.at_end and not evaluator_exists(cfg.eval.type):
        _fail(f"config.eval.type = {cfg.eval.type!r}: no module deemo_jax/eval/evaluators/{cfg.eval.type}.py; "
              "use 'recognition' or add that evaluator module")
    if not cfg.trainable:
        _fail("config.trainable is empty; list the parameter path patterns to train (e.g. ('video_qformer',))")
    if not isinstance(cfg.trainable, tuple | list) or not all(isinstance(p, str) for p in cfg.trainable):
        _fail(f"config.trainable = {cfg.trainable!r}: must be a tuple of regular expressions")

    # Files.
    if not d.shard_dir:
        _fail("config.data.shard_dir is empty; point it to a shard directory from scripts/build_shards.py")
    shards = _path(d.shard_dir)
    if not shards.is_dir():
        _fail(f"config.data.shard_dir = {d.shard_dir!r} does not exist; build shards with scripts/build_shards.py")
    for split in [d.split] + ([cfg.eval.split] if cfg.eval.at_end else []):
        if not any(p.name.startswith(split) and p.name.endswith(".array_record") for p in shards.iterdir()):
            _fail(f"config.data.shard_dir = {d.shard_dir!r} has no {split!r} shards ({split}*.array_record)")
    for key in ("num_frames", "num_audio_clips"):
        value = d[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(f"config.data.{key} = {value!r}: set it to 0 (read from the shards' metadata.json) or to the count")
    try:
        with_shard_facts(DataConfig(shard_dir=str(shards), num_frames=d.num_frames, num_audio_clips=d.num_audio_clips,
                                    use_video=d.use_video, use_audio=d.use_audio))
    except ValueError as e:
        _fail(str(e))
    tok = tokenizer_path(cfg)
    if not tok:
        _fail("config.data.tokenizer_path is empty and config.checkpoints.llm is not set; pass the tokenizer dir")
    if not _path(tok).is_dir():
        _fail(f"tokenizer directory {tok!r} does not exist; set --config.data.tokenizer_path=DIR")
    components = built_components(cfg)
    for key, (parts, kinds) in FROZEN_CHECKPOINTS.items():
        value = cfg.checkpoints[key]
        needed = any(p in components for p in parts)
        if value:
            _check_converted(f"checkpoints.{key}", value, kinds)
        elif needed and not m.random_frozen:
            built = ", ".join(p for p in parts if p in components)
            _fail(
                f"config.checkpoints.{key} is empty but the model builds {built}; "
                f"convert it (scripts/convert_checkpoint.py --source {kinds[0]}) and pass "
                f"--config.checkpoints.{key}=DIR"
            )
    if cfg.checkpoints.init_trainable and not _path(cfg.checkpoints.init_trainable).exists():
        _fail(
            f"config.checkpoints.init_trainable = {cfg.checkpoints.init_trainable!r} does not exist; pass a converted "
            "video-llama directory or the workdir of a previous run"
        )
    _check_template(cfg)


def _check_template(cfg: ConfigDict) -> None:
    """A template known without the tokenizer (a built-in name, or the converted LLM's record) must fit the
    prompt's inputs (the 'affectgpt' body needs audio, video and the transcription)."""
    d = cfg.data
    try:
        template = configured_template(cfg)
    except ValueError as e:
        _fail(f"config.checkpoints.llm: {' '.join(str(e).split())}")
    if isinstance(template, str):
        template = BUILTIN.get(template)
    if template is None:  # resolved with the tokenizer when training starts
        return
    try:
        PromptConfig(use_audio=d.use_audio, use_video=d.use_video, use_transcription=d.use_transcription,
                     nfbl_as_text=d.nfbl_as_text, template=template)
    except ValueError as e:
        _fail(f"config.data with prompt template {template.name!r}: {' '.join(str(e).split())}")


def check_mesh(cfg: ConfigDict, device_count: int, process_count: int) -> tuple[int, int, int]:
    """Mesh sizes (data, fsdp, tensor) for ``device_count`` devices, and batch divisibility checks."""
    try:
        sizes = sharding.mesh_sizes(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, device_count)
    except ValueError as e:
        _fail(f"config.{e}")
    micro = cfg.train.global_batch_size // cfg.train.grad_accum_steps
    batch_shards = sizes[0] * sizes[1]
    if micro % batch_shards or micro % process_count:
        _fail(
            f"micro-batch {micro} (train.global_batch_size / train.grad_accum_steps) must be divisible by "
            f"data*fsdp = {batch_shards} and by the {process_count} processes; change the batch or the mesh"
        )
    return sizes[0], sizes[1], sizes[2]


# ---------------------------------------------------------------------------------------- translation
def llm_config_from_manifest(directory: str) -> LlamaConfig:
    """The LLaMA config stored in a converted hf-llama directory's manifest (structural fields)."""
    stored = read_manifest(_path(directory))["components"]["llama"]["config"]
    fields = {f.name for f in dataclasses.fields(LlamaConfig)} - {"dtype", "param_dtype", "remat", "attention_impl"}
    return LlamaConfig(**{k: v for k, v in stored.items() if k in fields})


def model_config(cfg: ConfigDict, vocab_size: int) -> DeemoLlamaConfig:
    """The ``DeemoLlamaConfig`` of a (validated) config; ``vocab_size`` is the tokenizer's base vocabulary."""
    m = cfg.model
    runtime: dict[str, Any] = {"frozen_dtype": DTYPES[m.frozen_dtype]}
    if cfg.checkpoints.llm:  # a converted LLM is the LLM, whatever the preset's encoders
        runtime["llm"] = llm_config_from_manifest(cfg.checkpoints.llm)
    elif m.preset != "deemo_7b":  # the small presets: the tokenizer's vocabulary, positions covering data.max_length
        runtime["llm"] = {"vocab_size": vocab_size, "max_position_embeddings": max(cfg.data.max_length, 128)}
    config = DeemoLlamaConfig.preset(m.preset, runtime).with_overrides(m.overrides.to_dict())
    config = config.with_overrides({"llm": {"remat": m.remat}}).with_attention_impl(m.attention_impl or None)
    if not m.use_video:
        config = config.with_overrides({"vit": None, "image_qformer": None, "video_qformer": None})
    if not m.use_audio:
        config = config.with_overrides({"audio_encoder": None, "audio_qformer": None})
    return config


def llm_manifest(cfg: ConfigDict) -> tuple[dict, dict | None] | None:
    """The converted LLM's manifest and its checked ``llm`` section (family, template, tokenizer; None when
    converted before it existed); None for a randomly initialised LLM (no ``checkpoints.llm``)."""
    if not cfg.checkpoints.llm:
        return None
    return read_manifest(_path(cfg.checkpoints.llm)), llm_record(_path(cfg.checkpoints.llm))


def configured_template(cfg: ConfigDict, name: str | None = None) -> str | PromptTemplate:
    """``name`` (default ``data.template``), or for ``""`` the converted LLM's stored template when it has one;
    a name is resolved with the tokenizer by ``DataConfig.prompt_config`` (``templates.resolve``)."""
    name = cfg.data.template if name is None else name
    if not name:
        converted = llm_manifest(cfg)
        stored = converted[1]["template"] if converted and converted[1] else None
        if stored is not None:
            return PromptTemplate.from_record(stored)
    return name


def data_config(cfg: ConfigDict, model: DeemoLlamaConfig, *, batch_size: int, split: str | None = None) -> DataConfig:
    """The pipeline settings; placeholder run lengths come from the model's query counts."""
    fields = cfg.data.to_dict()
    fields["tokenizer_path"] = tokenizer_path(cfg)
    fields["shard_dir"] = str(_path(fields["shard_dir"]))
    if split is not None:
        fields["split"] = split
    fields["template"] = configured_template(cfg)
    data = with_shard_facts(DataConfig.from_mapping(fields))
    return dataclasses.replace(
        data,
        batch_size=batch_size,
        num_video_query_tokens=model.num_video_tokens if model.video_qformer is not None else 32,
        num_audio_query_tokens=model.num_audio_tokens if model.audio_qformer is not None else 8,
    )
