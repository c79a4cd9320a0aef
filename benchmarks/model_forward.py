"""LLaMA forward throughput: deemo_jax (jitted, fp32) vs transformers/PyTorch (fp32, sdpa), same weights.

    python benchmarks/model_forward.py                # 8 layers, hidden 1024, batch 4 x 512 tokens
    python benchmarks/model_forward.py --iters 5 --warmup 2
    python benchmarks/model_forward.py --jax-cpu-dots ynnpack   # XLA:CPU's default dot library instead

Both sides compute the full [B, L, vocab] float32 logits of the same random token ids with the same weights
(the torch model's initialisation, converted with ``deemo_jax.convert.llama``). The PyTorch side is set up at
its best for CPU inference: ``eval()``, ``torch.inference_mode()``, ``attn_implementation="sdpa"`` and
``torch.set_num_threads(os.cpu_count())``. The JAX side is one ``jax.jit`` over the split model state, warmed
up, with every timed call blocked on its result. Prints tokens/s of each and the ratio JAX/torch.

XLA:CPU (jaxlib 0.10.2) hands float32 dots to YNNPACK by default. On the 2-core AMD EPYC used for
BENCHMARKS.md that path ran the model's GEMMs at 0.64-0.89x PyTorch's (MKL), Eigen's at 0.93-1.17x, so
``--jax-cpu-dots eigen`` (the default here) sets ``--xla_cpu_experimental_ynn_fusion_type=`` before JAX
starts, unless XLA_FLAGS already chooses. Results agree up to float rounding; try both on another machine.
"""

from __future__ import annotations

import argparse
import statistics

from common import add_cpu_dots_argument, add_llama_size_arguments, apply_cpu_dots, build_llama_pair, time_interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_llama_size_arguments(parser)
    parser.add_argument("--seq", type=int, default=512)
    add_cpu_dots_argument(parser, default="eigen")
    args = parser.parse_args()
    if args.iters < 1 or args.warmup < 0:
        parser.error(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    apply_cpu_dots(args.jax_cpu_dots)
    run(args)


def run(args: argparse.Namespace) -> None:
    # Imported here: XLA_FLAGS must be final before JAX starts.
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from deemo_jax.models.llama import count_params

    model, hf = build_llama_pair(args, args.seq)
    config = model.config
    print(f"model: {count_params(model) / 1e6:.1f} M parameters, {config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, {config.num_attention_heads} heads; batch {args.batch} x {args.seq}")  # fmt: skip

    ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    tokens = ids.size
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids)[0])
    jax_ids = jnp.asarray(ids)
    torch_ids = torch.from_numpy(ids).long()

    jax_logits = np.asarray(forward(state, jax_ids))
    with torch.inference_mode():
        torch_logits = hf(input_ids=torch_ids).logits.numpy()
    print(f"max |logits JAX - torch| = {np.abs(jax_logits - torch_logits).max():.2e}")
    del jax_logits, torch_logits

    with torch.inference_mode():
        contenders = {
            "jax": lambda: forward(state, jax_ids).block_until_ready(),
            "torch": lambda: hf(input_ids=torch_ids),
        }
        times = time_interleaved(contenders, args.warmup, args.iters)
    jax_times, torch_times = times["jax"], times["torch"]

    jax_tps = tokens / statistics.median(jax_times)
    torch_tps = tokens / statistics.median(torch_times)
    for name, tps, t in (("JAX", jax_tps, jax_times), ("torch", torch_tps, torch_times)):
        median = statistics.median(t)
        print(f"{name:6s}: {tps:9.1f} tokens/s (median of {args.iters}: {median:.3f} s per forward)")
    print(f"ratio JAX/torch = {jax_tps / torch_tps:.2f}x")


if __name__ == "__main__":
    main()
