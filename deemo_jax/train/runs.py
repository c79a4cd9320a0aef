"""Rebuild the model of a training run from its workdir, for evaluation and inference.

It lives in the training package (below evaluation) because it is training's own assembly run backwards:
evaluation imports it, training never imports evaluation.

A training workdir (``scripts/train.py``) holds ``config.json`` (the full training config) and
``checkpoints/{step}/`` (Orbax; the ``trainable`` item holds only what training changed, see
``deemo_jax.train.checkpointing``). The model is rebuilt exactly as training built it
(``deemo_jax.train.assembly.assemble_model``: frozen parts from the converted checkpoints the config names,
or, for the demo's ``model.random_frozen``, the run's snapshot of its random frozen parts in
``frozen_random/``), then the trainable parameters of the chosen step replace the fresh ones. The prompt
template and LLM the run would use now must be those the checkpoint records (``deemo_jax.train.identity``);
the loaded run carries that template, so evaluation and inference prompt the model as it was trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict
from transformers import PreTrainedTokenizerBase

from deemo_jax import sharding
from deemo_jax.data.pipeline import DataConfig
from deemo_jax.data.templates import PromptTemplate
from deemo_jax.data.tokenizer import load_tokenizer, placeholder_ids
from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.train import checkpointing
from deemo_jax.train.assembly import assemble_model
from deemo_jax.train.config import data_config, model_config, tokenizer_path
from deemo_jax.train.identity import check_trained_with, llm_identity, run_template
from deemo_jax.train.partition import abstract_with_shardings

logger = logging.getLogger(__name__)

DEFAULT_DEMO_WORKDIR = "runs/demo"
CONFIG_FILE = "config.json"
_TUPLE_KEYS = (("trainable",), ("data", "instructions"), ("data", "labels"))


class RunNotFoundError(FileNotFoundError):
    """The workdir is missing, is not a training run, or has no (such) checkpoint; the message says how to fix."""


@dataclasses.dataclass
class LoadedRun:
    """A trained model with what it was trained with."""

    workdir: Path
    step: int
    config: ConfigDict  # the run's training config
    model_config: DeemoLlamaConfig
    tokenizer: PreTrainedTokenizerBase
    model: DeemoLlama
    template: PromptTemplate  # the prompt template it was trained with (checked against the checkpoint)

    def data_config(self, *, batch_size: int, split: str | None = None) -> DataConfig:
        """The run's pipeline settings for ``split`` (placeholder counts matching the model, its template)."""
        data = data_config(self.config, self.model_config, batch_size=batch_size, split=split)
        return dataclasses.replace(data, template=self.template)


def _hint(workdir: Path) -> str:
    if Path(os.path.expanduser(str(workdir))) == Path(DEFAULT_DEMO_WORKDIR).absolute():
        return "run `make demo` first (it trains the demo model into runs/demo), or point --workdir at a training run"
    return "point --workdir at the directory given as --config.workdir to scripts/train.py"


def setup_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache: a restarted run (e.g. after preemption) skips compilation."""
    if not directory:
        return
    path = Path(os.path.expanduser(directory))
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def read_run_config(workdir: str | os.PathLike) -> ConfigDict:
    """The training config saved in ``{workdir}/config.json`` (JSON lists of tuple fields made tuples again; a
    config written before ``data.template`` existed gets ``"vicuna"``, the only template there was then)."""
    workdir = Path(workdir).expanduser().absolute()
    if not workdir.is_dir():
        raise RunNotFoundError(f"training run directory {str(workdir)!r} does not exist; {_hint(workdir)}")
    path = workdir / CONFIG_FILE
    if not path.is_file():
        raise RunNotFoundError(
            f"{str(workdir)!r} has no {CONFIG_FILE}, so it is not a deemo-jax training workdir; {_hint(workdir)}"
        )
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e}); was the training run's first step written?") from e
    for keys in _TUPLE_KEYS:
        node = values
        for key in keys[:-1]:
            node = node.get(key, {})
        if isinstance(node.get(keys[-1]), list):
            node[keys[-1]] = tuple(node[keys[-1]])
    if isinstance(values.get("data"), dict):
        values["data"].setdefault("template", "vicuna")
    return ConfigDict(values)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The finished checkpoint steps of a run, ascending."""
    directory = checkpointing.checkpoint_dir(workdir)
    if not directory.is_dir():
        return []
    with ocp.CheckpointManager(directory, item_names=checkpointing.ITEMS) as manager:
        return sorted(manager.all_steps())


def load_run(
    workdir: str | os.PathLike = DEFAULT_DEMO_WORKDIR,
    *,
    step: int | None = None,
    compilation_cache: bool = False,
    template: str | None = None,
) -> LoadedRun:
    """Rebuild the model of the run in ``workdir`` with the trainable parameters of ``step`` (None = latest).

    ``template`` names the prompt template to use (None or ``""``: the run's ``data.template``); it, and the
    LLM that ``checkpoints.llm`` holds now, must be what the checkpoint records, else
    :class:`~deemo_jax.data.templates.TemplateMismatchError` names both. ``compilation_cache`` turns on JAX's
    persistent compilation cache in the run's ``train.compilation_cache_dir`` (the command-line tools do, so a
    second call skips compiling). Raises :class:`RunNotFoundError` (what is missing and how to fix it), and
    the mismatch error, before building anything.
    """
    workdir = Path(workdir).expanduser().absolute()
    cfg = read_run_config(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise RunNotFoundError(
            f"training run {str(workdir)!r} has no finished checkpoint in checkpoints/ (still in its first "
            f"{cfg.train.checkpoint_every} steps, or stopped before saving); let training reach a checkpoint"
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunNotFoundError(f"training run {str(workdir)!r} has no checkpoint of step {step}; it has {steps}")
    tok_dir = tokenizer_path(cfg)
    if not tok_dir or not Path(os.path.expanduser(tok_dir)).is_dir():
        raise RunNotFoundError(
            f"the tokenizer of training run {str(workdir)!r} ({tok_dir!r}, config data.tokenizer_path) is missing; "
            "restore it (for the demo: python scripts/make_demo_data.py) or pass the tokenizer directory"
        )
    if compilation_cache:
        setup_compilation_cache(cfg.train.compilation_cache_dir)
    tokenizer = load_tokenizer(tok_dir)
    model_cfg = model_config(cfg, tokenizer.vocab_size)
    placeholder_ids(tokenizer, model_cfg.llm.vocab_size)
    prompt_template = run_template(cfg, tokenizer, template or None)
    ckpt_dir = checkpointing.checkpoint_dir(workdir)
    _, meta = checkpointing.read_meta(ckpt_dir, step)
    where = f"checkpoint {ckpt_dir / str(step)}"
    check_trained_with(meta, prompt_template, llm_identity(cfg, model_cfg.llm.vocab_size), where)
    if meta.get("model_config") not in (None, repr(model_cfg)):
        raise ValueError(
            f"{where} was written for another model config than {workdir}/{CONFIG_FILE} builds now:\n"
            f"  stored  {meta['model_config']}\n  rebuilt {model_cfg!r}"
        )

    mesh = sharding.make_mesh(data=-1)
    with jax.set_mesh(mesh), sharding.logical_rules():
        asm = assemble_model(cfg, model_cfg, mesh)
        target = nnx.to_pure_dict(abstract_with_shardings(asm.trainable, asm.trainable_shardings))
        with ocp.CheckpointManager(ckpt_dir, item_names=checkpointing.ITEMS) as manager:
            restored = manager.restore(
                step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore(target))
            )["trainable"]
        nnx.replace_by_pure_dict(asm.trainable, restored)
        model = asm.merge()
    sources = {**asm.sources, **{name: f"checkpoint step {step}" for name in asm.trainable_modules}}
    logger.info("loaded %s step %d with prompt template %s (%s)", workdir, step, prompt_template.describe(),
                ", ".join(f"{k}: {v}" for k, v in sorted(sources.items())))
    return LoadedRun(workdir, step, cfg, model_cfg, tokenizer, model, prompt_template)


def describe(run: LoadedRun) -> dict[str, Any]:
    """What to record next to results: the workdir, step and training-config identity."""
    return {"workdir": str(run.workdir), "step": run.step, "model_preset": run.config.model.preset,
            "task": run.config.data.task}
