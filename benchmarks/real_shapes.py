"""The full paper model at its real shapes on this CPU: one optimizer step, then greedy decoding.

    python benchmarks/real_shapes.py                 # EVA ViT-g + BLIP-2 Q-Former + ImageBind-Huge + Vicuna-7B
    python benchmarks/real_shapes.py --dry-run       # the same code path on benchmarks/train_step.py's mid-size model

The model is DEEMO-LLaMA 7B with random weights made directly in their storage dtype (frozen parts bf16,
trainable parts fp32, as ``configs/instruct.py`` trains it), batch 1, 8 frames, 8 audio clips and a prompt of
``--seq`` tokens (the 32 video and 8 audio placeholder slots included; the second half is the supervised answer).
It runs the train step ``scripts/train.py`` runs (``deemo_jax.train.step.make_train_step``: frozen encoders
under ``stop_gradient``, AdamW on the trainable parameters), then ``--new-tokens`` greedy decode steps with
``deemo_jax.eval.generate`` on the updated model. Printed: time of each phase, peak RSS (``ru_maxrss``), the
loss (must be finite), and the fit planner's prediction for the same step next to the measured peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import resource
import sys
import time

from common import machine_line


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="mid-size model, same code path (seconds)")
    parser.add_argument("--seq", type=int, default=128, help="prompt + answer tokens (default 128)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    if min(args.seq, args.frames, args.clips, args.new_tokens) < 1:
        parser.error("--seq, --frames, --clips and --new-tokens must be >= 1")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from train_step import TRAINABLE, build_jax, make_batch, mid_config

    from deemo_jax.eval.generate import GenerationConfig, generate
    from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
    from deemo_jax.train.partition import TrainableFilter

    print(machine_line())
    if args.dry_run:
        cfg = dataclasses.replace(mid_config(), frozen_dtype=jnp.bfloat16)
    else:
        cfg = DeemoLlamaConfig.deemo_7b(frozen_dtype=jnp.bfloat16)
    if args.seq < cfg.num_audio_tokens + cfg.num_video_tokens + 8:
        parser.error(f"--seq must hold the {cfg.num_audio_tokens + cfg.num_video_tokens} placeholder slots + 8")
    print(f"{'mid-size model (dry run)' if args.dry_run else 'DEEMO-LLaMA 7B'}: batch 1 x {args.seq} tokens, "
          f"{args.frames} frames, {args.clips} clips; frozen bf16, trainable fp32", flush=True)

    baseline = current_rss_gib()
    print(f"RSS before the model (Python, JAX, imports): {baseline:.2f} GiB")
    started = time.perf_counter()
    step, params, opt_state, frozen, _ = build_jax(cfg)
    jax.block_until_ready((params, opt_state, frozen))
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    print(f"parameters: frozen {count(frozen) / 1e9:.2f} B ({nbytes(frozen) / 2**30:.2f} GiB), trainable "
          f"{count(params) / 1e6:.1f} M ({nbytes(params) / 2**30:.2f} GiB), optimizer state "
          f"{nbytes(opt_state) / 2**30:.2f} GiB")
    t = phase("init (random weights on the host)", started)

    batch = {k: jnp.asarray(v[None]) for k, v in make_batch(cfg, 1, args.seq, args.frames, args.clips).items()}
    compiled = step.lower(params, opt_state, frozen, batch, jnp.int32(0)).compile()
    memory = compiled.memory_analysis()
    t = phase("compile train step", t)
    params, opt_state, metrics = compiled(params, opt_state, frozen, batch, jnp.int32(0))
    loss = float(metrics["loss"])
    t = phase(f"train step (loss {loss:.4f})", t)
    if not math.isfinite(loss):
        print(f"FAILED: the loss is {loss}", file=sys.stderr)
        raise SystemExit(4)
    step_peak = peak_rss_gib()

    abstract = nnx.eval_shape(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(0)))
    graphdef, _, _ = nnx.split(abstract, TrainableFilter(TRAINABLE), ...)
    model = nnx.merge(graphdef, params, frozen)
    host = make_batch(cfg, 1, args.seq, args.frames, args.clips)
    prompt = host["input_ids"][:, : args.seq // 2]
    output = generate(model, prompt, np.ones_like(prompt), GenerationConfig(max_new_tokens=args.new_tokens),
                      frames=host["frames"], fbank=host["fbank"])
    t = phase(f"generate {args.new_tokens} tokens (compile included)", t)
    start = time.perf_counter()
    output = generate(model, prompt, np.ones_like(prompt), GenerationConfig(max_new_tokens=args.new_tokens),
                      frames=host["frames"], fbank=host["fbank"])
    decode_s = time.perf_counter() - start
    print(f"generate again: {decode_s:.1f} s ({int(output.num_tokens[0])} tokens, prefill included), "
          f"peak RSS {peak_rss_gib():.2f} GiB")

    state_gib = (nbytes(params) + nbytes(opt_state) + nbytes(frozen)) / 2**30
    temp_gib = memory.temp_size_in_bytes / 2**30
    predicted = state_gib + temp_gib + sum(x.nbytes for x in jax.tree.leaves(batch)) / 2**30
    measured = step_peak - baseline
    print(f"XLA memory analysis of the step: temporaries {temp_gib:.2f} GiB; state + batch + temporaries = "
          f"{predicted:.2f} GiB vs measured peak RSS above the baseline {measured:.2f} GiB at the step "
          f"({(predicted - measured) / measured:+.0%}; the compiler's own memory is part of the measured peak)")


if __name__ == "__main__":
    main()
