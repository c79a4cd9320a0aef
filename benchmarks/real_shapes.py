"""The full paper model at its real shapes on this CPU: the planner's prediction, one optimizer step, decoding.

    python benchmarks/real_shapes.py                 # EVA ViT-g + BLIP-2 Q-Former + ImageBind-Huge + Vicuna-7B
    python benchmarks/real_shapes.py --no-remat      # the paper's config as is (LLM layers not rematerialised)
    python benchmarks/real_shapes.py --dry-run       # the same code path on the "demo" preset (seconds)

The run is ``configs/instruct.py`` (preset ``deemo_7b``: frozen parts bf16, trainable parts fp32, the paper's
trainable set and AdamW) at batch 1, 8 frames, 8 audio clips and a prompt of ``--seq`` tokens (the 32 video
and 8 audio placeholder slots included; the second half is the supervised answer), with ``model.remat`` on
unless ``--no-remat``; ``--llm-layers N`` keeps Vicuna-7B's width with N layers. The step is the planner's own
compiled program (``deemo_jax.train.plan.compile_train``: ``train/program.py``, i.e. what ``scripts/train.py``
compiles), planned for this host (its available RAM, no GPU corrections); if the plan says it does not fit,
the script stops before allocating anything and says by how much and why (exit 2) unless ``--force``.
Otherwise the weights are drawn directly in their storage dtypes, the step runs once, then ``--new-tokens``
greedy decode steps with ``deemo_jax.eval.generate`` on the updated
model. Printed: time of each phase, peak RSS (``ru_maxrss``), the loss (must be finite, else exit 4), and the
planner's total next to the measured peak RSS above the pre-model baseline.
"""

from __future__ import annotations

import argparse
import functools
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from common import machine_line

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib() -> float:
    """The process's resident set now (``VmRSS``)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 2**20


def phase(name: str, started: float) -> float:
    now = time.perf_counter()
    print(f"{name}: {now - started:.1f} s, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    return now


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def draw(key: jax.Array, shape: tuple[int, ...], dtype: Any, kind: str) -> jax.Array:
    """One random frozen weight made in its own dtype."""
    if kind == "ones":
        return jnp.ones(shape, dtype)
    if kind == "zeros":
        return jnp.zeros(shape, dtype)
    return (0.02 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the demo preset, same code path (seconds)")
    parser.add_argument("--seq", type=int, default=128, help="prompt + answer tokens (default 128)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--no-remat", action="store_true", help="keep every LLM layer's activations")
    parser.add_argument("--llm-layers", type=int, default=0,
                        help="Vicuna-7B's width with this many layers (0: all 32), for a step that fits this host")
    parser.add_argument("--force", action="store_true", help="run even when the plan says it does not fit")
    args = parser.parse_args()
    if min(args.seq, args.frames, args.clips, args.new_tokens) < 1 or args.llm_layers < 0:
        parser.error("--seq, --frames, --clips and --new-tokens must be >= 1, --llm-layers >= 0")

    import numpy as np
    from flax import nnx
    from train_step import make_batch

    from deemo_jax import cli
    from deemo_jax.eval.generate import GenerationConfig, generate
    from deemo_jax.models.deemo_llama import DeemoLlama
    from deemo_jax.train.partition import TrainableFilter
    from deemo_jax.train.plan import (
        GiB,
        compile_train,
        cpu_upcast_bytes,
        format_plan,
        local_target,
        plan_model_config,
    )
    from deemo_jax.train.program import make_tx

    print(machine_line())
    overrides = {
        "model.preset": "demo" if args.dry_run else "deemo_7b", "model.remat": not args.no_remat,
        "train.global_batch_size": 1, "data.max_length": args.seq, "data.num_frames": args.frames,
        "data.num_audio_clips": args.clips, "data.shard_dir": "/nonexistent/no-shards", "workdir": "/nonexistent",
    }
    cfg = cli.parse_config(["real_shapes.py", f"--config={ROOT / 'configs' / 'instruct.py'}",
                            *(f"--config.{k}={v}" for k, v in overrides.items())], usage="")  # fmt: skip
    if args.llm_layers:
        with cfg.unlocked():
            cfg.model.overrides = {"llm": {"num_hidden_layers": args.llm_layers}}
    baseline = current_rss_gib()
    print(f"RSS before the model (Python, JAX, imports): {baseline:.2f} GiB", flush=True)

    started = time.perf_counter()
    target = local_target()
    devices = jax.devices()[:1]
    program, compiled, plan = compile_train(cfg, target, devices)
    print(format_plan(plan))
    t = phase("plan: lower + compile the train step", started)
    model_cfg = plan_model_config(cfg, target, strict=False)[0]
    if args.seq < model_cfg.num_audio_tokens + model_cfg.num_video_tokens + 8:
        parser.error(f"--seq must hold the {model_cfg.num_audio_tokens + model_cfg.num_video_tokens} placeholder "
                     "slots + 8")
    if not plan.fits:
        upcasts = cpu_upcast_bytes(compiled, plan.xla_temporaries, [])
        print(f"DOES NOT FIT this host: the step needs {plan.total / GiB:.2f} GiB (parameters + optimizer state "
              f"{(plan.frozen_params + plan.trainable_params + plan.optimizer_state) / GiB:.2f} GiB, XLA:CPU's "
              f"temporaries {plan.temporaries / GiB:.2f} GiB, of which {upcasts / GiB:.2f} GiB are its float32 "
              f"copies of bf16 weights at the peak - a GPU has none), {target.memory_bytes / GiB:.2f} GiB are "
              f"available ({plan.budget / GiB:.2f} GiB after the margin). Stopped before allocating; --force "
              "tries anyway.", flush=True)
        if not args.force:
            raise SystemExit(2)

    trainable_filter = TrainableFilter(cfg.trainable)
    tx, _ = make_tx(cfg)

    def init():  # the trainable part, its optimizer state and the frozen part's non-float leaves (RNG state)
        model = DeemoLlama(model_cfg, rngs=nnx.Rngs(cfg.seed))
        _, params, frozen = nnx.split(model, trainable_filter, ...)
        other = [x for x in jax.tree.leaves(frozen) if not jnp.issubdtype(x.dtype, jnp.floating)]
        return params, nnx.state(nnx.Optimizer(model, tx, wrt=trainable_filter)), other

    # The frozen weights leaf by leaf: one init program for the whole model would hold float32 copies of all of
    # them at once (29 GB for 12 Vicuna layers). Norm scales 1, biases 0, the rest N(0, 0.02) in their dtype.
    shardings = [jax.tree.map(lambda x: x.sharding, tree) for tree in (program.trainable, program.opt_state)]
    params, opt_state, other = jax.jit(init, out_shardings=(*shardings, None))()
    paths, treedef = jax.tree_util.tree_flatten_with_path(program.frozen)
    other, leaves = iter(other), []
    for i, (path, leaf) in enumerate(paths):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            leaves.append(next(other))
            continue
        name = str(path[-1]) if not str(path[-1]).endswith("value") else str(path[-2])
        kind = "ones" if "scale" in name else "zeros" if "bias" in name else "normal"
        leaves.append(jax.device_put(draw(jax.random.key(i), leaf.shape, leaf.dtype, kind), leaf.sharding))
    frozen = jax.tree_util.tree_unflatten(treedef, leaves)
    jax.block_until_ready((params, opt_state, frozen))
    t = phase("init (random weights in their storage dtypes)", t)

    host = make_batch(model_cfg, 1, args.seq, args.frames, args.clips)
    batch = {k: jax.device_put(host[k][None], v.sharding) for k, v in program.batch.items()}
    params, opt_state, metrics = compiled(params, opt_state, frozen, batch, jnp.int32(0))
    loss = float(metrics["loss"])
    t = phase(f"train step (loss {loss:.4f})", t)
    if not math.isfinite(loss):
        print(f"FAILED: the loss is {loss}", file=sys.stderr)
        raise SystemExit(4)
    measured = peak_rss_gib() - baseline

    abstract = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract, trainable_filter, ...)
    model = nnx.merge(graphdef, params, frozen)
    prompt = host["input_ids"][:, : args.seq // 2]
    config = GenerationConfig(max_new_tokens=args.new_tokens)
    generate(model, prompt, np.ones_like(prompt), config, frames=host["frames"], fbank=host["fbank"])
    t = phase(f"generate {args.new_tokens} tokens (compile included)", t)
    start = time.perf_counter()
    output = generate(model, prompt, np.ones_like(prompt), config, frames=host["frames"], fbank=host["fbank"])
    print(f"generate again: {time.perf_counter() - start:.1f} s ({int(output.num_tokens[0])} tokens, prefill "
          f"included), peak RSS {peak_rss_gib():.2f} GiB")
    predicted = plan.total / GiB
    print(f"planner: {predicted:.2f} GiB for the step vs measured peak RSS above the baseline {measured:.2f} GiB "
          f"({(predicted - measured) / measured:+.0%}; the measured peak also holds the compiler's own memory "
          "and the host copy of the batch)")


if __name__ == "__main__":
    main()
