"""Will it fit? Per-device memory, FLOPs and step time of a training run, from the compiled program.

The run's own step (program.py: the trainer's optimizer, split, shardings and ``make_train_step``) is lowered
from abstract values and compiled for the mesh - for a GPU target over virtual CPU devices, so nothing is
allocated and no GPU is needed. Per device it reports the frozen and trainable parameters, the optimizer
state and the batch (exact: element counts x dtype bytes of each device's shards), XLA's temporaries
(``compiled.memory_analysis()``), the total against the GPU's usable memory minus a safety margin, the
useful FLOPs of a step (flops.py) next to XLA's count (``compiled.cost_analysis()``), and the step time that
40 % and 50 % MFU would give. A run that does not fit gets the first change that does (remat, gradient
accumulation, more fsdp devices, a smaller batch), itself planned and found to fit. docs/training.md
("Will it fit?") says what a CPU-compiled estimate cannot see and why the margin is 10 %.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from deemo_jax import sharding
from deemo_jax.data.pipeline import DataConfig
from deemo_jax.data.shards import with_shard_facts
from deemo_jax.data.tokenizer import load_tokenizer
from deemo_jax.models.deemo_llama import DeemoLlamaConfig
from deemo_jax.train.config import ConfigError, check_mesh, model_config, tokenizer_path
from deemo_jax.train.flops import example_flops, peak_flops_per_device
from deemo_jax.train.hlo_memory import replay_temporaries
from deemo_jax.train.program import TrainProgram, build_program, shard_bytes

MiB, GiB = 2**20, 2**30
SAFETY_MARGIN = 0.10  # of the usable memory, for what the CPU-compiled estimate cannot see (docs/training.md)
JAX_MEM_FRACTION = 0.75  # JAX preallocates 75 % of a GPU's memory unless XLA_CLIENT_MEM_FRACTION says otherwise
PAPER_FRAMES = PAPER_CLIPS = 8  # Video-LLaMA/AffectGPT defaults, used when no shard metadata states the counts
MFUS = (0.4, 0.5)
# Compiles on CPU: XLA:CPU's memory-optimised scheduler (its default favours concurrency and runs a remat'd
# layer's recomputation early, which hides remat's saving; a GPU's scheduler is memory-aware), and cheap LLVM
# settings (half the compile time, the same buffer assignment).
CPU_COMPILE_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
                       "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@dataclasses.dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # total device memory as nvidia-smi reports it
    peak_flops: float  # dense bf16 tensor-core FLOP/s with fp32 accumulation (vendor data sheets)


GPUS = {
    "a100-40g": Gpu("A100-SXM4-40GB", 40960 * MiB, 312e12),
    "a100-80g": Gpu("A100-SXM4-80GB", 81920 * MiB, 312e12),
    "h100-80g": Gpu("H100-SXM5-80GB", 81559 * MiB, 989e12),
    "h200": Gpu("H200-SXM-141GB", 143771 * MiB, 989e12),
    "l40s": Gpu("L40S-48GB", 46068 * MiB, 362e12),
    "rtx4090": Gpu("GeForce-RTX-4090-24GB", 24564 * MiB, 165e12),
}


class WillNotFitError(ConfigError):
    """The run needs more memory per device than the budget; the message carries a change that fits."""


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a plan must fit: per-device memory, the share the allocator may use, the peak for MFU."""

    name: str
    memory_bytes: int
    usable_fraction: float
    peak_flops: float | None
    margin: float = SAFETY_MARGIN
    virtual: bool = True  # compiled on CPU for another device: resolve its attention like that device would

    @property
    def budget(self) -> int:
        return int(self.memory_bytes * self.usable_fraction * (1 - self.margin))


def gpu_target(
    name: str, *, memory_gib: float | None = None, mem_fraction: float | None = None, margin: float = SAFETY_MARGIN
) -> Target:
    """A GPU of :data:`GPUS`; ``memory_gib`` replaces its memory, ``mem_fraction`` JAX's 75 % (or the env's)."""
    if name not in GPUS:
        raise ConfigError(f"--gpu {name!r} is not known; use one of {sorted(GPUS)}")
    gpu = GPUS[name]
    if mem_fraction is None:
        env = os.environ.get("XLA_CLIENT_MEM_FRACTION") or os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
        mem_fraction = float(env) if env else JAX_MEM_FRACTION
    if not 0 < mem_fraction <= 1 or not 0 <= margin < 1:
        raise ConfigError(f"mem fraction {mem_fraction} / margin {margin}: use 0 < fraction <= 1, 0 <= margin < 1")
    memory = gpu.memory_bytes if memory_gib is None else int(memory_gib * GiB)
    return Target(gpu.name, memory, mem_fraction, gpu.peak_flops, margin)


def local_target(margin: float = SAFETY_MARGIN) -> Target:
    """The devices of this process: an accelerator's allocator limit, or the host's free RAM split among CPUs."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        available = _mem_available()
        return Target("host RAM", available // jax.local_device_count(), 1.0, None, margin, virtual=False)
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    if not limit:
        raise ConfigError(f"device {device.device_kind!r} reports no memory limit; plan with scripts/plan.py --gpu")
    return Target(device.device_kind, int(limit), 1.0, peak_flops_per_device(device.device_kind), margin,
                  virtual=False)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise ConfigError("/proc/meminfo has no MemAvailable line; plan for a GPU with scripts/plan.py --gpu")


# ------------------------------------------------------------------------------------------ run shapes
@dataclasses.dataclass(frozen=True)
class RunShape:
    """What a plan compiled: the model, the mesh and one step's batch."""

    preset: str
    frozen_dtype: str
    attention_impl: str
    remat: bool
    devices: int
    mesh: tuple[int, int, int]  # (data, fsdp, tensor)
    global_batch_size: int
    grad_accum_steps: int
    max_length: int
    num_frames: int  # 0: the run reads no video
    num_clips: int  # 0: the run reads no audio


def data_counts(cfg: ConfigDict, *, strict: bool) -> tuple[int, int, list[str]]:
    """(frames, clips, notes): the shards' metadata (checked against the config's counts), else - without
    ``strict``, when there is no ``metadata.json`` - the config's counts or the paper's 8."""
    d = cfg.data
    frames = d.num_frames if d.use_video else 0
    clips = d.num_audio_clips if d.use_audio else 0
    shard_dir = os.path.expanduser(d.shard_dir)
    if strict or (Path(shard_dir) / "metadata.json").is_file():
        try:
            facts = with_shard_facts(DataConfig(shard_dir=shard_dir, num_frames=frames, num_audio_clips=clips,
                                                use_video=d.use_video, use_audio=d.use_audio))
        except (ValueError, OSError) as e:
            raise ConfigError(" ".join(str(e).split())) from None
        return facts.num_frames if d.use_video else 0, facts.num_audio_clips if d.use_audio else 0, []
    notes = []
    if d.use_video and not frames:
        frames = PAPER_FRAMES
        notes.append(f"no shard metadata in {d.shard_dir!r}: assumed {frames} frames per example (data.num_frames)")
    if d.use_audio and not clips:
        clips = PAPER_CLIPS
        notes.append(f"no shard metadata in {d.shard_dir!r}: assumed {clips} audio clips (data.num_audio_clips)")
    return frames, clips, notes


def plan_model_config(cfg: ConfigDict, target: Target, *, strict: bool) -> tuple[DeemoLlamaConfig, str, list[str]]:
    """(model config, attention implementation compiled, notes) of ``cfg`` as planned for ``target``."""
    notes = []
    path = tokenizer_path(cfg)
    try:
        preset_vocab = DeemoLlamaConfig.preset(cfg.model.preset).llm.vocab_size
        vocab = load_tokenizer(path).vocab_size if path and Path(path).expanduser().is_dir() else None
        if vocab is None and strict:
            raise ConfigError(f"tokenizer directory {path!r} does not exist; set --config.data.tokenizer_path=DIR")
        model = model_config(cfg, vocab or preset_vocab)
    except (ValueError, OSError) as e:
        raise ConfigError(" ".join(str(e).split())) from None
    if vocab is None and cfg.model.preset != "deemo_7b":
        notes.append(f"no tokenizer at {path!r}: LLM vocabulary of the preset ({preset_vocab})")
    impl = cfg.model.attention_impl
    if target.virtual:  # what the GPU would run; XLA:CPU cannot compile cuDNN's kernel
        if impl == "cudnn":
            notes.append("attention_impl cudnn planned as xla: cuDNN flash attention keeps no [B, N, T, S] scores, "
                         "so the temporaries here are an upper bound")
        impl = "xla" if impl in ("", "cudnn") else impl
    model = model.with_attention_impl(impl or None)
    return model, impl or "auto", notes


# ------------------------------------------------------------------------------------------------ plans
@dataclasses.dataclass
class TrainPlan:
    """One compiled plan; bytes are per device, FLOPs per optimizer step."""

    target: str
    run: RunShape
    frozen_params: int
    trainable_params: int
    optimizer_state: int
    batch: int  # this step's batch; the next one is placed while the step runs (counted in total)
    xla_arguments: int  # XLA's figure for all step inputs: the four above + the step counter
    temporaries: int  # XLA's temporaries (activations kept for the backward pass, gradients, scratch) ...
    xla_temporaries: int  # ... as XLA:CPU assigned them, before taking off
    cpu_upcasts: int  # the float32 copies of bf16 parameters XLA:CPU keeps at the peak (hlo_memory.py)
    outputs: int  # outputs that do not reuse a donated input (the metrics)
    total: int
    memory_bytes: int
    usable_fraction: float
    margin: float
    budget: int
    fits: bool
    useful_flops: float  # deemo_jax/train/flops.py, the whole step over all devices
    xla_flops_per_device: float  # compiled.cost_analysis() of the per-device program
    peak_flops: float | None
    step_time_s: dict[str, float]  # "40%" / "50%" MFU -> seconds per step
    lower_s: float
    compile_s: float
    notes: list[str]
    suggestion: dict[str, Any] | None = None  # {"flags": [...], "devices": n, "total": bytes, "budget": bytes}


def with_overrides(cfg: ConfigDict, overrides: dict[str, Any]) -> ConfigDict:
    """A copy of ``cfg`` with dotted-key ``overrides`` applied (the locked dict keeps its keys)."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def _run_shape(cfg: ConfigDict, impl: str, mesh: tuple[int, int, int], devices: int, frames: int, clips: int,
               ) -> RunShape:
    m, t = cfg.model, cfg.train
    return RunShape(m.preset, m.frozen_dtype, impl, bool(m.remat), devices, mesh, t.global_batch_size,
                    t.grad_accum_steps, cfg.data.max_length, frames, clips)


def _build(cfg: ConfigDict, target: Target, devices: Sequence, *, strict: bool, process_count: int = 1):
    model_cfg, impl, notes = plan_model_config(cfg, target, strict=strict)
    frames, clips, data_notes = data_counts(cfg, strict=strict)
    sizes = check_mesh(cfg, len(devices), process_count)
    mesh = sharding.make_mesh(*sizes, devices=devices)
    with jax.set_mesh(mesh), sharding.logical_rules():
        program = build_program(cfg, model_cfg, mesh, max_length=cfg.data.max_length, num_frames=frames,
                                num_clips=clips)
    shape = _run_shape(cfg, impl, sizes, len(devices), frames, clips)
    return program, model_cfg, mesh, shape, notes + data_notes


def static_bytes(cfg: ConfigDict, target: Target, devices: Sequence) -> int:
    """Per-device bytes of parameters, optimizer state and two batches: a lower bound, found without compiling."""
    program, *_ = _build(cfg, target, devices, strict=False)
    return (shard_bytes(program.frozen) + shard_bytes(program.trainable) + shard_bytes(program.opt_state)
            + 2 * shard_bytes(program.batch))


def plan_train(
    cfg: ConfigDict, target: Target, devices: Sequence, *, strict: bool = False, process_count: int = 1
) -> TrainPlan:
    """Compile ``cfg``'s train step for ``devices`` (a mesh of ``cfg.mesh`` over them) and size it for ``target``."""
    return compile_train(cfg, target, devices, strict=strict, process_count=process_count)[2]


def compile_train(
    cfg: ConfigDict, target: Target, devices: Sequence, *, strict: bool = False, process_count: int = 1
) -> tuple[TrainProgram, Any, TrainPlan]:
    """(program, compiled step, plan): :func:`plan_train` keeping what it compiled, to run it on ``devices``."""
    program, model_cfg, mesh, shape, notes = _build(cfg, target, devices, strict=strict,
                                                    process_count=process_count)
    started = time.perf_counter()
    with jax.set_mesh(mesh), sharding.logical_rules():
        lowered = program.lower()
        lowered_at = time.perf_counter()
        options = CPU_COMPILE_OPTIONS if devices[0].platform == "cpu" else None
        compiled = lowered.compile(compiler_options=options)
    compiled_at = time.perf_counter()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    on_cpu_for_gpu = target.virtual and devices[0].platform == "cpu"
    upcasts = cpu_upcast_bytes(compiled, memory.temp_size_in_bytes, notes) if on_cpu_for_gpu else 0
    temporaries = memory.temp_size_in_bytes - upcasts
    batch = shard_bytes(program.batch)
    outputs = memory.output_size_in_bytes - memory.alias_size_in_bytes
    total = memory.argument_size_in_bytes + temporaries + outputs + batch + memory.generated_code_size_in_bytes
    useful = example_flops(
        model_cfg, shape.max_length, shape.num_frames, shape.num_clips,
        llm_trainable="llama" in program.module_names,
    ).total * shape.global_batch_size
    step_time = {}
    if target.peak_flops:
        step_time = {f"{round(m * 100)}%": useful / (len(devices) * target.peak_flops * m) for m in MFUS}
    xla_flops = float(cost.get("flops", 0.0))
    if shape.grad_accum_steps > 1:  # cost analysis counts a while loop's body once
        xla_flops *= shape.grad_accum_steps
        notes.append(f"XLA's FLOPs: its count (one pass of the accumulation loop) x {shape.grad_accum_steps} steps")
    return program, compiled, TrainPlan(
        target=target.name, run=shape, frozen_params=shard_bytes(program.frozen),
        trainable_params=shard_bytes(program.trainable), optimizer_state=shard_bytes(program.opt_state),
        batch=batch, xla_arguments=memory.argument_size_in_bytes, temporaries=temporaries,
        xla_temporaries=memory.temp_size_in_bytes, cpu_upcasts=upcasts,
        outputs=outputs, total=total, memory_bytes=target.memory_bytes, usable_fraction=target.usable_fraction,
        margin=target.margin, budget=target.budget, fits=total <= target.budget, useful_flops=useful,
        xla_flops_per_device=xla_flops, peak_flops=target.peak_flops, step_time_s=step_time,
        lower_s=lowered_at - started, compile_s=compiled_at - lowered_at, notes=notes,
    )


def cpu_upcast_bytes(compiled: Any, xla_temp: int, notes: list[str]) -> int:
    """Bytes of XLA:CPU's float32 copies of bf16 parameters live at the peak of a CPU-compiled program; a note
    when the replay of the schedule misses XLA's own temporaries by more than 10 % (the correction is then only
    indicative)."""
    replay = replay_temporaries(compiled.as_text())
    if xla_temp and abs(replay.peak - xla_temp) > 0.1 * xla_temp:
        notes.append(f"replayed temporaries {replay.peak / GiB:.2f} GiB vs XLA's {xla_temp / GiB:.2f} GiB: the "
                     "float32-copy correction is approximate")
    return max(0, replay.peak - replay.peak_without_upcasts)


# ---------------------------------------------------------------------------------- fixes and searches
def _flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def _candidates(cfg: ConfigDict, devices: int, max_devices: int) -> list[tuple[dict[str, Any], int]]:
    """Changes to try, least disruptive first: remat, accumulation, more devices, then a smaller batch."""
    batch, accum = cfg.train.global_batch_size, cfg.train.grad_accum_steps
    data, fsdp, _ = check_mesh(cfg, devices, 1)
    remat = {} if cfg.model.remat else {"model.remat": True}
    out: list[tuple[dict[str, Any], int]] = [(remat, devices)] if remat else []
    for extra in [{}, remat] if remat else [{}]:
        steps = accum * 2
        while batch % steps == 0 and (batch // steps) % (data * fsdp) == 0:
            out.append(({**extra, "train.grad_accum_steps": steps}, devices))
            steps *= 2
    more = devices * 2
    while more <= max_devices:
        shards = math.gcd(more, batch // accum)  # the micro-batch must split over data x fsdp
        out.append(({**remat, "mesh.data": 1, "mesh.fsdp": shards, "mesh.tensor": more // shards}, more))
        more *= 2
    smaller = batch // 2
    while smaller >= accum * data * fsdp and smaller % (accum * data * fsdp) == 0:
        out.append(({**remat, "train.global_batch_size": smaller}, devices))
        smaller //= 2
    return [c for c in out if c[0]]


def suggest(
    cfg: ConfigDict, target: Target, devices: Sequence, *, available: Sequence | None = None, max_compiles: int = 6
) -> tuple[dict[str, Any], TrainPlan] | None:
    """The first change of :func:`_candidates` whose compiled plan fits (overrides, plan), or None.

    Candidates whose parameters and optimizer state alone exceed the budget are skipped without compiling.
    ``available`` devices (default ``devices``) bound the "more devices" candidates.
    """
    available = list(available or devices)
    compiles = 0
    for overrides, count in _candidates(cfg, len(devices), len(available)):
        candidate = with_overrides(cfg, overrides)
        try:
            if static_bytes(candidate, target, available[:count]) > target.budget:
                continue
        except ConfigError:
            continue
        if compiles == max_compiles:
            return None
        compiles += 1
        plan = plan_train(candidate, target, available[:count])
        if plan.fits:
            return overrides, plan
    return None


def find_max_batch(cfg: ConfigDict, target: Target, devices: Sequence) -> TrainPlan | None:
    """The plan of the largest global batch that fits (doubling, then bisection over multiples of the smallest
    batch the mesh and ``train.grad_accum_steps`` allow), or None when even that one does not fit."""
    data, fsdp, _ = check_mesh(cfg, len(devices), 1)
    unit = data * fsdp * cfg.train.grad_accum_steps

    def attempt(k: int) -> TrainPlan | None:
        candidate = with_overrides(cfg, {"train.global_batch_size": k * unit})
        if static_bytes(candidate, target, devices) > target.budget:
            return None
        plan = plan_train(candidate, target, devices)
        return plan if plan.fits else None

    best = attempt(1)
    if best is None:
        return None
    low, high = 1, None
    while high is None:
        plan = attempt(low * 2)
        if plan is None:
            high = low * 2
        else:
            low, best = low * 2, plan
    while high - low > 1:
        mid = (low + high) // 2
        plan = attempt(mid)
        if plan is None:
            high = mid
        else:
            low, best = mid, plan
    return best


def with_suggestion(plan: TrainPlan, found: tuple[dict[str, Any], TrainPlan] | None) -> TrainPlan:
    """``plan`` carrying the change that fits (its flags, device count and planned total)."""
    if found is not None:
        overrides, fixed = found
        plan.suggestion = {"flags": _flags(overrides), "devices": fixed.run.devices, "total": fixed.total,
                           "budget": fixed.budget}
    return plan


def not_fit_message(plan: TrainPlan) -> str:
    """One line: what does not fit, where, and the change that does (or what to try)."""
    need = f"{_gib(plan.total).strip()} per device, budget {_gib(plan.budget).strip()} on {plan.target}"
    fix = "none of remat, accumulation or a smaller batch fits; plan more devices with scripts/plan.py --devices N"
    s = plan.suggestion
    if s is not None:
        devices = f" on {s['devices']} devices" if s["devices"] != plan.run.devices else ""
        fix = f"fits with {' '.join(s['flags'])}{devices} ({_gib(s['total']).strip()} per device)"
    return f"the train step does not fit: {need}; {fix}"


def check_run(cfg: ConfigDict, *, margin: float = SAFETY_MARGIN) -> TrainPlan:
    """The plan of ``cfg`` (validated by ``check_config``) on this process's devices; raises
    :class:`WillNotFitError` (a ``ConfigError``: train.py exits 2) with a change that fits when it does not.

    On a GPU the compiled program is the one the trainer runs (a persistent compilation cache serves it to
    the trainer); on CPU the budget is the host's available memory shared by its devices.
    """
    devices = jax.devices()
    target = local_target(margin)
    plan = plan_train(cfg, target, devices, strict=True, process_count=jax.process_count())
    if not plan.fits:
        raise WillNotFitError(not_fit_message(with_suggestion(plan, suggest(cfg, target, devices))))
    return plan


# ----------------------------------------------------------------------------------------------- output
def _gib(n: float) -> str:
    """GiB, or MiB below 0.1 GiB (tiny test models)."""
    return f"{n / GiB:8.2f} GiB" if abs(n) >= 0.1 * GiB else f"{n / MiB:8.2f} MiB"


def format_plan(plan: TrainPlan) -> str:
    """The human-readable report of one plan."""
    r = plan.run
    media = ", ".join(x for x in (f"{r.num_frames} frames" if r.num_frames else "",
                                  f"{r.num_clips} audio clips" if r.num_clips else "") if x) or "text only"
    lines = [
        f"train step: {r.preset} ({r.frozen_dtype} frozen), {r.devices} device(s), mesh data={r.mesh[0]} "
        f"fsdp={r.mesh[1]} tensor={r.mesh[2]}; global batch {r.global_batch_size} (accum {r.grad_accum_steps}), "
        f"{r.max_length} tokens, {media}; remat {'on' if r.remat else 'off'}, attention {r.attention_impl}",
        f"per device on {plan.target}:",
        f"  frozen parameters      {_gib(plan.frozen_params)}",
        f"  trainable parameters   {_gib(plan.trainable_params)}",
        f"  optimizer state        {_gib(plan.optimizer_state)}",
        f"  batch (x2: next placed){_gib(2 * plan.batch)}",
        f"  temporaries (XLA)      {_gib(plan.temporaries)}"
        + (f"  (XLA:CPU {_gib(plan.xla_temporaries).strip()} less its f32 copies of bf16 weights)"
           if plan.cpu_upcasts else ""),
        f"  other outputs          {_gib(plan.outputs)}",
        f"  total                  {_gib(plan.total)}",
        f"  budget                 {_gib(plan.budget)}  ({plan.memory_bytes / GiB:.1f} GiB x "
        f"{plan.usable_fraction:.0%} usable x {1 - plan.margin:.0%} after the safety margin)",
        f"  -> {'FITS' if plan.fits else 'DOES NOT FIT'} "
        f"({'headroom' if plan.fits else 'short by'} {_gib(abs(plan.budget - plan.total)).strip()})",
        f"FLOPs per step: useful {plan.useful_flops:.3e} (flops.py, all devices); XLA {plan.xla_flops_per_device:.3e}"
        " per device",
    ]
    if plan.step_time_s:
        times = ", ".join(f"{t:.3g} s at {m} MFU" for m, t in plan.step_time_s.items())
        lines.append(f"step time: {times} (peak {plan.peak_flops / 1e12:.0f} TFLOP/s bf16 dense per device)")
    lines.append(f"compiled on {jax.devices()[0].platform}: lower {plan.lower_s:.1f} s, compile {plan.compile_s:.1f} s")
    lines += [f"note: {n}" for n in plan.notes]
    if not plan.fits:
        lines.append(not_fit_message(plan))
    return "\n".join(lines)
