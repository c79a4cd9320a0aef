#!/usr/bin/env python
"""Benchmark: convert a random LLaMA-7B-shaped fp16 safetensors checkpoint (HF layout) to bf16 Orbax.

    python benchmarks/convert_llama.py                 # full 7B (32 layers, ~13.5 GB source, ~27 GB disk)
    python benchmarks/convert_llama.py --layers 4      # stand-in: same per-tensor shapes, fewer layers

Writes the source (sharded like HF, <= 5 GB per shard, with model.safetensors.index.json and config.json) one
tensor at a time, runs ``scripts/convert_checkpoint.py --source hf-llama --dtype bfloat16`` in a subprocess and
prints wall time, MB/s (source bytes / wall time) and the peak RSS of the converting process (``os.wait4``
rusage of that child). Target for the full 7B: peak RSS <= 16 GB. If the disk cannot hold source + output, the
layer count is reduced and the output says it is a stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, INTER, FULL_LAYERS = 32000, 4096, 11008, 32
SHARD_BYTES = 5 * 10**9
RSS_TARGET_GB = 16.0


def tensor_specs(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF LlamaForCausalLM names and shapes (Vicuna-7B), in HF's shard order."""
    specs = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.k_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
            (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
            (p + "mlp.gate_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTER)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
    return specs + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def nbytes(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) * 2


def write_safetensors(path: Path, specs: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> None:
    """Stream a fp16 safetensors file: header, then one random tensor at a time (never the whole shard)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in specs:
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes(shape)]}
        offset += nbytes(shape)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in specs:
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                value = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
            else:
                value = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
            f.write(value.tobytes())
            del value


def write_source(directory: Path, layers: int) -> int:
    specs = tensor_specs(layers)
    shards, current, size = [], [], 0
    for spec in specs:
        if current and size + nbytes(spec[1]) > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes(spec[1])
    shards.append(current)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, shard, rng)
        weight_map.update({k: name for k, _ in shard})
        print(f"  wrote {name} ({sum(nbytes(s) for _, s in shard) / 1e9:.2f} GB)", flush=True)
    total = sum(nbytes(s) for _, s in specs)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 32,
        "num_key_value_heads": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return total


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=FULL_LAYERS, help="decoder layers (32 = full 7B)")
    p.add_argument("--workdir", default="/tmp/deemo_convert_bench", help="scratch directory (emptied)")
    p.add_argument("--keep", action="store_true", help="keep the source and output")
    p.add_argument("--verify", action="store_true", help="also pass --verify (2 layers) to the converter")
    args = p.parse_args()
    if not 1 <= args.layers <= FULL_LAYERS:
        p.error(f"--layers must be in 1..{FULL_LAYERS}")

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    layers = args.layers
    source_bytes = sum(nbytes(s) for _, s in tensor_specs(layers))
    free = shutil.disk_usage(work).free
    # source fp16 + output bf16 (same size) + 10% slack
    while layers > 1 and 2.2 * source_bytes > free:
        layers -= 1
        source_bytes = sum(nbytes(s) for _, s in tensor_specs(layers))
    standin = layers < FULL_LAYERS
    label = (f"stand-in: {layers} of 32 layers, LLaMA-7B per-tensor shapes" if standin
             else "full LLaMA-7B shape (32 layers)")
    if layers < args.layers:
        print(f"disk: {free / 1e9:.1f} GB free is not enough for {args.layers} layers; using {layers}")
    print(f"machine: {machine()}")
    print(f"writing random fp16 source ({label}, {source_bytes / 1e9:.2f} GB) to {work / 'src'}", flush=True)
    t0 = time.perf_counter()
    write_source(work / "src", layers)
    print(f"  source written in {time.perf_counter() - t0:.0f} s", flush=True)

    cmd = [
        sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), "--source", "hf-llama",
        "--input", str(work / "src"), "--output", str(work / "out"), "--dtype", "bfloat16", "--progress",
    ]
    if args.verify:
        cmd += ["--verify", "--verify-layers", "2"]
    print("converting:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    out_bytes = sum(f.stat().st_size for f in (work / "out").rglob("*") if f.is_file()) if code == 0 else 0
    print("\n## result")
    print(f"checkpoint: {label}; source {source_bytes / 1e9:.2f} GB fp16 safetensors -> bf16 Orbax")
    print(f"exit code: {code}")
    print(f"wall time: {wall:.1f} s" + (" (includes --verify of 2 layers)" if args.verify else ""))
    print(f"throughput: {source_bytes / 1e6 / wall:.0f} MB/s (source bytes / wall time)")
    verdict = "met" if peak_gb <= RSS_TARGET_GB else "MISSED"
    target = "" if standin else f" (target <= {RSS_TARGET_GB:.0f} GB: {verdict})"
    print(f"peak RSS of the converting process: {peak_gb:.2f} GB{target}"
          + (" (includes --verify; the conversion's own peak is in the 'wrote ...' line above)" if args.verify else ""))
    print(f"output size: {out_bytes / 1e9:.2f} GB")
    print(f"machine: {machine()}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
