"""``scripts/plan.py``: will a config fit a GPU? The train step (deemo_jax/train/plan.py) and the evaluation's
generation programs, compiled over virtual CPU devices at the run's real shapes, shardings and dtypes.

    python scripts/plan.py --config=configs/instruct.py --devices 8 --gpu a100-40g --config.train.global_batch_size=8
    python scripts/plan.py --config=configs/instruct.py --devices 1 --gpu a100-80g --find-max-batch --json plan.json

The generation programs are generate.py's own jitted functions (modality encoders, embedding splice, prefill +
decode loop), lowered from abstract values. Evaluation runs replicated (every device holds the whole model and
its own batch), so they are planned on one device at ``eval.batch_size``, a prompt of ``data.max_length``
tokens and ``eval.max_new_tokens``.

Exit status (deemo_jax.exit_codes): 0 the train step (and the generation programs) fit; 2 they do not, or a bad
command line or config (one line on stderr saying what and how to fix; for a plan that does not fit, the
change that fits).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from deemo_jax import cli, exit_codes
from deemo_jax.eval.generate import GenerationConfig, _embed_jit, _encode_jit, _generate_jit, _stop_table
from deemo_jax.models.deemo_llama import DeemoLlama
from deemo_jax.train.config import ConfigError
from deemo_jax.train.plan import (
    CPU_COMPILE_OPTIONS,
    GPUS,
    SAFETY_MARGIN,
    GiB,
    Target,
    TrainPlan,
    cpu_upcast_bytes,
    data_counts,
    find_max_batch,
    format_plan,
    gpu_target,
    not_fit_message,
    plan_model_config,
    plan_train,
    suggest,
    with_suggestion,
)
from deemo_jax.train.program import shard_bytes

USAGE = ("usage: python scripts/plan.py --config=configs/instruct.py[:variant] [--config.KEY=VALUE ...] "
         f"--devices N --gpu {{{','.join(GPUS)}}} [--gpu-memory-gib G] [--find-max-batch] [--json PATH]")


@dataclasses.dataclass
class GenerationPlan:
    """The evaluation's programs on one device; bytes per device."""

    target: str
    batch_size: int
    prompt_length: int
    max_new_tokens: int
    params: int  # the whole model (frozen dtype + fp32 trainable parts)
    programs: dict[str, dict[str, float]]  # name -> inputs besides the parameters, temporaries, outputs, compile_s
    total: int  # params + the largest program's own arguments, temporaries and outputs
    budget: int
    fits: bool
    notes: list[str]


def plan_generation(cfg: ConfigDict, target: Target) -> GenerationPlan:
    """Compile generate.py's programs for ``cfg``'s model at its eval shapes and size them for ``target``."""
    model_cfg, _, notes = plan_model_config(cfg, target, strict=False)
    frames, clips, data_notes = data_counts(cfg, strict=False)
    batch, max_new = cfg.eval.batch_size, cfg.eval.max_new_tokens
    bucket = GenerationConfig().length_bucket
    prompt = -(-cfg.data.max_length // bucket) * bucket
    model = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(cfg.seed)))
    graphdef, state = nnx.split(model)
    llama_graphdef, llama_state = nnx.split(model.llama)
    sds = jax.ShapeDtypeStruct
    programs: dict[str, tuple[Any, int]] = {}  # name -> (lowered, bytes of its inputs other than parameters)
    tokens = {}
    for name, count, shape in (("video", frames, (224, 224, 3)), ("audio", clips, (1, 128, 204))):
        if count:
            media = sds((batch, count, *shape), jnp.uint8 if name == "video" else jnp.float32)
            lowered = _encode_jit.lower(state, media, graphdef=graphdef, branch=name)
            programs[f"encode_{name}"] = (lowered, shard_bytes(media))
            tokens[name] = lowered.out_info
    ids = sds((batch, prompt), jnp.int32)
    embed = _embed_jit.lower(llama_state, ids, tokens.get("video"), tokens.get("audio"), graphdef=llama_graphdef,
                             video_id=model_cfg.video_placeholder_id, audio_id=model_cfg.audio_placeholder_id)
    programs["embed"] = (embed, shard_bytes((ids, tokens)))
    keys = jax.eval_shape(lambda: jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(
        jnp.zeros((batch,), jnp.int32)))
    stops, lengths = _stop_table(())
    inputs = (embed.out_info, ids, sds(stops.shape, jnp.int32), sds(lengths.shape, jnp.int32))
    scalars = (sds((), jnp.bool_), sds((), jnp.float32), sds((), jnp.float32), sds((), jnp.int32))
    generate = _generate_jit.lower(llama_state, inputs[0], inputs[1], keys, *scalars, *inputs[2:],
                                   graphdef=llama_graphdef, max_new_tokens=max_new, cache_dtype=None)
    programs["prefill_and_decode"] = (generate, shard_bytes(inputs) + batch * 8)  # + the row keys
    on_cpu_for_gpu = target.virtual and jax.devices()[0].platform == "cpu"
    options = CPU_COMPILE_OPTIONS if jax.devices()[0].platform == "cpu" else None
    report = {}
    for name, (lowered, input_bytes) in programs.items():
        started = time.perf_counter()
        compiled = lowered.compile(compiler_options=options)
        memory = compiled.memory_analysis()
        upcasts = cpu_upcast_bytes(compiled, memory.temp_size_in_bytes, notes) if on_cpu_for_gpu else 0
        report[name] = {
            "inputs": input_bytes,
            "temporaries": memory.temp_size_in_bytes - upcasts,
            "xla_temporaries": memory.temp_size_in_bytes,
            "outputs": memory.output_size_in_bytes - memory.alias_size_in_bytes,
            "compile_s": time.perf_counter() - started,
        }
    params = shard_bytes(state)
    total = params + max(int(p["inputs"] + p["temporaries"] + p["outputs"]) for p in report.values())
    return GenerationPlan(target.name, batch, prompt, max_new, params, report, total, target.budget,
                          total <= target.budget, notes + data_notes)


def format_generation(plan: GenerationPlan) -> str:
    lines = [f"generation (eval): batch {plan.batch_size}, prompt {plan.prompt_length} tokens, "
             f"{plan.max_new_tokens} new tokens, one device on {plan.target}:",
             f"  parameters (whole model) {plan.params / GiB:8.2f} GiB"]
    for name, p in plan.programs.items():
        lines.append(f"  {name:<22} inputs {p['inputs'] / GiB:.2f} + temporaries {p['temporaries'] / GiB:.2f} "
                     f"(XLA:CPU {p['xla_temporaries'] / GiB:.2f}) + outputs {p['outputs'] / GiB:.2f} GiB "
                     f"(compile {p['compile_s']:.1f} s)")
    verdict = "FITS" if plan.fits else "DOES NOT FIT (lower --config.eval.batch_size)"
    lines.append(f"  total {plan.total / GiB:.2f} GiB of budget {plan.budget / GiB:.2f} GiB -> {verdict}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/plan.py", usage=USAGE, allow_abbrev=False,
                                description="Per-device memory, FLOPs and step time of a training config.")
    p.add_argument("--devices", type=cli.positive_int, default=1, help="GPUs the run uses (virtual CPU devices)")
    p.add_argument("--gpu", choices=sorted(GPUS), required=True)
    p.add_argument("--gpu-memory-gib", type=float, help="replace the GPU's memory (GiB)")
    p.add_argument("--mem-fraction", type=float,
                   help="share of the memory JAX may use (default: XLA_CLIENT_MEM_FRACTION, else 0.75)")
    p.add_argument("--margin", type=float, default=SAFETY_MARGIN, help="safety margin off the usable memory")
    p.add_argument("--find-max-batch", action="store_true", help="search the largest global batch that fits")
    p.add_argument("--no-generation", action="store_true", help="plan the train step only")
    p.add_argument("--no-suggestion", action="store_true", help="do not search a change when it does not fit")
    p.add_argument("--json", type=Path, help="also write the plan(s) here")
    return p


def _plans_json(train: TrainPlan, best: TrainPlan | None, generation: GenerationPlan | None,
                searched: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"train": dataclasses.asdict(train)}
    if searched:
        out["max_batch"] = None if best is None else dataclasses.asdict(best)
    if generation is not None:
        out["generation"] = dataclasses.asdict(generation)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        args, rest = _parser().parse_known_args(argv[1:])
    except SystemExit as e:  # argparse printed the problem
        return exit_codes.OK if e.code == 0 else exit_codes.USAGE
    try:
        cfg = cli.parse_config([argv[0], *rest], usage=USAGE, error=ConfigError)
        target = gpu_target(args.gpu, memory_gib=args.gpu_memory_gib, mem_fraction=args.mem_fraction,
                            margin=args.margin)
    except ConfigError as e:
        print(f"plan.py: {e}", file=sys.stderr)
        return exit_codes.USAGE
    # Virtual CPU devices: the run's GPUs plus room for "more devices" suggestions. Set before any device use.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", min(64, 8 * args.devices))
    available = jax.devices()
    devices = available[: args.devices]
    try:
        train = plan_train(cfg, target, devices)
        if not train.fits and not args.no_suggestion:
            with_suggestion(train, suggest(cfg, target, devices, available=available))
        print(format_plan(train))
        best = find_max_batch(cfg, target, devices) if args.find_max_batch else None
        if args.find_max_batch:
            print(f"largest global batch that fits: {best.run.global_batch_size} ({best.total / GiB:.2f} GiB per "
                  "device)" if best else "largest global batch that fits: none")
        generation = None if args.no_generation else plan_generation(cfg, target)
        if generation is not None:
            print(format_generation(generation))
    except ConfigError as e:
        print(f"plan.py: {e}", file=sys.stderr)
        return exit_codes.USAGE
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_plans_json(train, best, generation, args.find_max_batch), indent=2) + "\n")
    if not train.fits:
        print(f"plan.py: {not_fit_message(train)}", file=sys.stderr)
        return exit_codes.USAGE
    if generation is not None and not generation.fits:
        print(f"plan.py: the generation programs need {generation.total / GiB:.1f} GiB per device, budget "
              f"{generation.budget / GiB:.1f} GiB; lower --config.eval.batch_size", file=sys.stderr)
        return exit_codes.USAGE
    return exit_codes.OK
