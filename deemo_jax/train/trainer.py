"""The training loop: assemble, resume, step, log, checkpoint, evaluate.

One call of :func:`train` runs a config from its latest checkpoint (or from scratch) to ``train.total_steps``.
Every process runs the same code (SPMD); process 0 writes metrics, TensorBoard and the plot, every process
writes its example-id record and its part of each checkpoint.

Order of work per step ``s`` (0-based; records and checkpoints count completed steps ``s + 1``): read
``grad_accum_steps`` local micro-batches, place them as global arrays sharded over ``data x fsdp``, dispatch
the jitted step, then fetch the *previous* step's metrics while this one runs. A step that ends a checkpoint
interval is fetched at once and checked before its checkpoint is saved, so a checkpoint never holds state
produced by a non-finite step: on a NaN/Inf loss or gradient the run stops with :class:`NonFiniteError`
(naming the step and the modules whose gradients are not finite) and the last good checkpoint stays as it was.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from deemo_jax import sharding
from deemo_jax.data.pipeline import DataIterator, make_iterator
from deemo_jax.data.shards import CorruptRecordError
from deemo_jax.data.tokenizer import load_tokenizer, placeholder_ids
from deemo_jax.files import write_atomic
from deemo_jax.models.deemo_llama import check_inputs
from deemo_jax.train import records
from deemo_jax.train.assembly import AssembledModel, assemble_model, snapshot_random_frozen
from deemo_jax.train.checkpointing import TrainCheckpointer, checkpoint_dir, read_meta
from deemo_jax.train.config import ConfigError, check_mesh, data_config, model_config, tokenizer_path
from deemo_jax.train.evaluators import get_evaluator
from deemo_jax.train.flops import example_flops, peak_flops_per_device
from deemo_jax.train.identity import check_trained_with, describe_llm, llm_identity, meta_record, run_template
from deemo_jax.train.partition import replicated
from deemo_jax.train.program import MEDIA_KEYS, TOKEN_KEYS, abstract_optimizer, batch_shardings, example_keys, make_tx
from deemo_jax.train.runs import setup_compilation_cache
from deemo_jax.train.step import make_train_step

logger = logging.getLogger(__name__)

MODEL_KEYS = (*TOKEN_KEYS, *MEDIA_KEYS)


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN/Inf; the message names the step and the modules."""


@dataclasses.dataclass
class TrainResult:
    workdir: Path
    step: int  # completed optimizer steps
    final_loss: float | None  # loss of the last step run by this call (None if none ran)
    wall_s: float
    eval_metrics: dict | None
    corrupt_records: list[str] = dataclasses.field(default_factory=list)  # skipped (data.skip_corrupt_records)


def _step_batch(iterator: DataIterator, accum: int) -> tuple[dict[str, np.ndarray], list, list]:
    """``accum`` local micro-batches stacked to ``[accum, micro_local, ...]``, their ids and dropped ids."""
    micro, ids = [], []
    dropped_before = len(iterator.dropped_ids)
    for _ in range(accum):
        batch, batch_ids = next(iterator)
        micro.append(batch)
        ids.extend(batch_ids)
    stacked = {k: np.stack([m[k] for m in micro]) for k in MODEL_KEYS if k in micro[0]}
    return stacked, ids, list(iterator.dropped_ids[dropped_before:])


def _global_batch(host: dict[str, np.ndarray], shardings: dict, process_count: int) -> dict[str, jax.Array]:
    out = {}
    for key, local in host.items():
        shape = (local.shape[0], local.shape[1] * process_count, *local.shape[2:])
        out[key] = jax.make_array_from_process_local_data(shardings[key], local, shape)
    return out


def _non_finite_message(step: int, metrics: dict, last_good: int | None, ckpt_dir: Path) -> str:
    bad = sorted(name for name, v in metrics["module_grad_norms"].items() if not math.isfinite(float(v)))
    where = f"non-finite gradients in {', '.join(bad)}" if bad else "gradients finite"
    kept = f"the last good checkpoint is step {last_good} in {ckpt_dir}" if last_good else "no checkpoint was written"
    return (
        f"step {step}: loss {float(metrics['loss'])}, grad norm {float(metrics['grad_norm'])} ({where}); training "
        f"stopped, nothing saved after the last finite step; {kept}. Lower optim.init_lr or enable optim.grad_clip, "
        "check the inputs of that step (examples/process_*.jsonl), then restart to resume from the checkpoint"
    )


class _StepTimer:
    """Step time and token rate averaged over the last ``window`` steps.

    Steps are dispatched one ahead of reading their metrics, and a CPU backend may run a small step inline in
    the dispatching call, so the wall time between two metric reads is one step's time only on average: it can
    read ~0 s for the step after a checkpoint and twice the step time for the one before. A short moving
    window reports the rate a user can rely on. The first step (compilation) is reported alone.
    """

    def __init__(self, window: int = 10) -> None:
        self.last = 0.0  # set by start()
        self.first = True
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)

    def start(self) -> None:
        self.last = time.perf_counter()

    def lap(self, tokens: float) -> tuple[float, float]:
        """(mean seconds per step, tokens per second) over the window, after a step that processed ``tokens``."""
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        if self.first:
            self.first = False
            return elapsed, tokens / elapsed if elapsed > 0 else 0.0
        self.recent.append((elapsed, tokens))
        seconds = sum(e for e, _ in self.recent)
        return seconds / len(self.recent), sum(t for _, t in self.recent) / seconds if seconds > 0 else 0.0


def _init_optimizer(asm: AssembledModel, tx, mesh) -> tuple[nnx.GraphDef, nnx.State, Any]:
    """``nnx.Optimizer`` state for the trainable parameters only, created sharded under jit."""
    opt_graphdef, _, opt_shardings, build = abstract_optimizer(
        asm.graphdef, asm.trainable_filter, asm.trainable, asm.frozen, tx, mesh
    )
    opt_state = jax.jit(lambda t, f: nnx.state(build(t, f)), out_shardings=opt_shardings)(asm.trainable, asm.frozen)
    return opt_graphdef, opt_state, opt_shardings


def train(cfg: ConfigDict) -> TrainResult:
    """Run ``cfg`` (validated by ``config.check_config``) to ``train.total_steps``; resumes automatically."""
    started = time.perf_counter()
    workdir = Path(os.path.expanduser(cfg.workdir)).absolute()
    process, num_processes = jax.process_index(), jax.process_count()
    mesh_sizes = check_mesh(cfg, jax.device_count(), num_processes)
    setup_compilation_cache(cfg.train.compilation_cache_dir)

    accum = cfg.train.grad_accum_steps
    micro_global = cfg.train.global_batch_size // accum
    # Tokenizer, model config, prompt template and input pipeline first: their errors are config errors, found
    # before compiling; so is resuming a run with another template or LLM than its checkpoints record.
    try:
        tokenizer = load_tokenizer(tokenizer_path(cfg))
        model_cfg = model_config(cfg, tokenizer.vocab_size)
        placeholder_ids(tokenizer, model_cfg.llm.vocab_size)
        template = run_template(cfg, tokenizer)
        llm = llm_identity(cfg, model_cfg.llm.vocab_size)
        latest = read_meta(checkpoint_dir(workdir))
        if latest is not None:
            check_trained_with(latest[1], template, llm, where=f"checkpoint {checkpoint_dir(workdir) / str(latest[0])}")
        data_cfg = dataclasses.replace(data_config(cfg, model_cfg, batch_size=micro_global // num_processes),
                                       template=template)
        iterator = make_iterator(data_cfg, mode="train", tokenizer=tokenizer, shard_index=process,
                                 shard_count=num_processes)
    except CorruptRecordError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    total_steps = cfg.train.total_steps
    mesh = sharding.make_mesh(*mesh_sizes)

    with jax.set_mesh(mesh), sharding.logical_rules():
        asm = assemble_model(cfg, model_cfg, mesh)
        # The workdir is created only once the config, the data and the model's trainable rules are found good.
        workdir.mkdir(parents=True, exist_ok=True)
        if process == 0:
            write_atomic(workdir / "config.json", cfg.to_json_best_effort(indent=2, sort_keys=True) + "\n")
        snapshot_random_frozen(cfg, asm)
        for name, source in sorted(asm.sources.items()):
            logger.info("%-32s %s, %s", name, "trainable" if name in asm.trainable_modules else "frozen", source)
        logger.info("prompt template %s; LLM: %s", template.describe(), describe_llm(llm))
        tx, schedule = make_tx(cfg)
        opt_graphdef, opt_state, opt_shardings = _init_optimizer(asm, tx, mesh)
        trainable = asm.trainable
        ckpt = TrainCheckpointer(checkpoint_dir(workdir), keep=cfg.train.keep_checkpoints,
                                 async_save=cfg.train.async_checkpointing)
        start = ckpt.latest_step() or 0
        if start:
            trainable, opt_state, _ = ckpt.restore(
                start, trainable, opt_state, (asm.trainable_shardings, opt_shardings), iterator
            )
            logger.info("resumed from %s/%d", ckpt.directory, start)

        step_shardings = batch_shardings(mesh, example_keys(data_cfg.use_video, data_cfg.use_audio))
        step_fn = make_train_step(
            asm.graphdef, opt_graphdef, seed=cfg.seed, dropout=cfg.train.dropout,
            module_names=asm.trainable_modules,
            shardings=(asm.trainable_shardings, opt_shardings, asm.frozen_shardings, step_shardings),
            replicated=replicated(mesh),
        )
        meta = {
            "model_config": repr(model_cfg), "trainable": list(cfg.trainable), "process_count": num_processes,
            "global_batch_size": cfg.train.global_batch_size, **meta_record(template, llm),
        }
        flops = example_flops(
            model_cfg, data_cfg.max_length, data_cfg.num_frames if data_cfg.use_video else 0,
            data_cfg.num_audio_clips if data_cfg.use_audio else 0,
            llm_trainable="llama" in asm.trainable_modules,
        ).total * cfg.train.global_batch_size
        peak = peak_flops_per_device(jax.devices()[0].device_kind)
        writer = records.MetricsWriter(workdir, enabled=process == 0, start_step=start, total_steps=total_steps,
                                       progress_bar=cfg.train.progress_bar)
        example_log = records.ExampleLog(workdir, process_index=process, start_step=start)
        timer = _StepTimer()
        last_good = start or None
        final_loss = None
        pending: tuple[int, Any, list, list] | None = None

        def finish(done: int, metrics: Any, ids: list, dropped: list) -> None:
            nonlocal final_loss
            host = jax.device_get(metrics)
            step_time, tokens_per_s = timer.lap(float(host["tokens"]))
            loss, grad_norm = float(host["loss"]), float(host["grad_norm"])
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteError(_non_finite_message(done, host, last_good, ckpt.directory))
            example_log.write(done, ids, dropped)
            record = {
                "step": done, "loss": loss, "lr": float(schedule(done - 1)), "grad_norm": grad_norm,
                "step_time_s": step_time, "supervised_tokens": int(host["supervised_tokens"]),
                "corrupt_records_skipped": len(iterator.corrupt_records),
            }
            if step_time > 0:
                record["tokens_per_s"] = tokens_per_s
                record["examples_per_s"] = cfg.train.global_batch_size / step_time
                achieved = flops / step_time / jax.device_count()
                record["tflops_per_s_per_device"] = achieved / 1e12
                if peak:
                    record["mfu"] = achieved / peak
            writer.write(record)
            if done % cfg.train.log_every == 0 or done == total_steps:
                logger.info("step %d: %s", done, json.dumps({k: round(v, 6) for k, v in record.items() if k != "step"}))
            final_loss = loss

        try:
            timer.start()
            for index in range(start, total_steps):
                done = index + 1
                host, ids, dropped = _step_batch(iterator, accum)
                if index == start:  # placeholder runs vs. the model, on the host, before the first step
                    for a in range(accum):
                        check_inputs(model_cfg, host["input_ids"][a], *(host[k][a] if k in host else None
                                                                         for k in ("frames", "fbank")))
                batch = _global_batch(host, step_shardings, num_processes)
                trainable, opt_state, metrics = step_fn(trainable, opt_state, asm.frozen, batch, jnp.int32(index))
                if pending is not None:
                    finish(*pending)
                    pending = None
                if done % cfg.train.checkpoint_every == 0 or done == total_steps:
                    finish(done, metrics, ids, dropped)
                    ckpt.save(done, trainable, opt_state, iterator, meta)
                    last_good = done
                else:
                    pending = (done, metrics, ids, dropped)
        finally:
            ckpt.close()
            writer.close()
            example_log.close()

        eval_metrics = None
        if process == 0 and (workdir / records.METRICS_FILE).is_file():
            records.plot_loss(workdir / records.METRICS_FILE, workdir / records.LOSS_PLOT)
        if iterator.corrupt_records:
            logger.warning("%d corrupt shard record(s) skipped (data.skip_corrupt_records): %s",
                           len(iterator.corrupt_records), iterator.corrupt_records[:20])
        if cfg.eval.at_end:
            asm.trainable = trainable
            eval_metrics = get_evaluator(cfg.eval.type)(cfg, model_cfg, asm.merge(), workdir)
    return TrainResult(workdir, max(start, total_steps), final_loss, time.perf_counter() - started, eval_metrics,
                       list(iterator.corrupt_records))
