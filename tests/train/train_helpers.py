"""Tiny corpus + command lines for the training tests (the ``corpus`` fixture is in conftest.py).

Training runs go through ``scripts/train.py`` in subprocesses (each with its own XLA_FLAGS / device count).
They share one persistent compilation cache per test session (identical programs, e.g. an interrupted run and
its restart, compile once) and use ``--xla_backend_optimization_level=0``, which halves XLA:CPU compile time
for these tiny models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from deemo_jax.data import schema

ROOT = Path(__file__).resolve().parents[2]
T, S = 2, 2  # frames and audio clips per record
LABELS = ["positive", "negative"]
WORDS = ("we played well today he smiles the athlete looks down and speaks slowly folding arms great bad "
         "happy sad proud tired From what clues can we infer person's emotional state ###Human: ###Assistant: "
         "<Audio></Audio> <Video></Video> <Transcription></Transcription> <User></User> positive. negative.").split()


def mer_record(i: int, split: str) -> dict:
    label = i % 2
    rng = np.random.default_rng(i)
    return {
        "schema_version": 1, "kind": "mer", "id": f"{split}-{i:03d}", "split": split, "start": 0.0, "end": 4.0,
        "transcription": ("great happy proud" if label == 0 else "bad sad tired") + f" we played {i}",
        "label": LABELS[label], "label_index": label, "reasoning": "he smiles" if label == 0 else "he looks down",
        "nfbl": [],
        "frames": rng.integers(0, 255, (T, 224, 224, 3), dtype=np.uint8),
        "frame_times": np.arange(T, dtype=np.float32),
        "fbank": rng.normal(size=(S, 128, 204)).astype(np.float32),
        "audio_clip_times": np.zeros((S, 2), np.float32),
    }


def caption_record(i: int) -> dict:
    rng = np.random.default_rng(100 + i)
    return {
        "schema_version": 1, "kind": "caption", "id": f"cap-{i:03d}", "split": "caption",
        "caption": f"a man rides a bike {i}", "frames": rng.integers(0, 255, (T, 224, 224, 3), dtype=np.uint8),
        "frame_times": np.arange(T, dtype=np.float32),
    }


def write_shard(path: Path, records: list[dict]) -> None:
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(schema.encode(record))
    writer.close()


def tiny_args(corpus: dict, workdir: Path, *extra: str, steps: int = 6) -> list[str]:
    """``configs/instruct.py:demo`` shrunk: one layer everywhere, batch 8 = 2 micro-batches of 4 (2 frames/clips per
    record, read from the shards' metadata.json)."""
    return [
        "--config=" + str(ROOT / "configs" / "instruct.py") + ":demo",
        f"--config.workdir={workdir}",
        f"--config.data.shard_dir={corpus['shards']}",
        f"--config.data.tokenizer_path={corpus['tokenizer']}",
        f"--config.train.compilation_cache_dir={corpus['cache']}",
        "--config.data.max_length=320",
        "--config.data.read_threads=1", "--config.data.read_buffer_size=4",
        "--config.model.preset=tiny_1layer",
        "--config.train.global_batch_size=8", "--config.train.grad_accum_steps=2",
        f"--config.train.total_steps={steps}", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
        "--config.train.progress_bar=False", "--config.optim.warmup_steps=2", "--config.eval.at_end=False",
        *extra,
    ]


def train_env(devices: int = 1, **extra: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.update(extra)
    return env


def start_train(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *args], env=env, cwd=ROOT,
                            stdout=handle, stderr=subprocess.STDOUT)


def run_train(args: list[str], env: dict, log: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = start_train(args, env, log)
    proc.wait(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_config(name: str, variant: str | None = None):
    """``configs/{name}``'s ``get_config(variant)``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_config_{name[:-3]}", ROOT / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)
