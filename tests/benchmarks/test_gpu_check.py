"""``benchmarks/gpu_check.sh --dry-run`` end to end on CPU: three variants of the --gpu train step (tiny preset).

    .venv/bin/python -m pytest tests/benchmarks/test_gpu_check.py -m slow
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("default", "cudnn", "remat")
FALLBACK = "attention: cudnn requested, but the cpu backend has no cuDNN: xla attention instead"


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_variant(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache")}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert log == run.stdout  # everything printed is in the log
    assert "nvidia-smi: not present" in log or "NVIDIA-SMI" in log

    parts = re.split(r"^=== variant (\w+): benchmarks/train_step\.py .*$", log.split("=== summary")[0], flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert tuple(sections) == VARIANTS, log
    for name, text in sections.items():
        assert f"=== variant {name}: ok in " in text, text
        assert re.search(r"^step [\d.]+ ms, \d+ tokens/s, .*useful MFU n/a", text, re.M), text
        assert "peak device memory: n/a (memory_stats() reports no peak on cpu)" in text, text
        assert re.search(r"^planner: total [\d.e+-]+ GiB vs measured peak n/a; .*on host RAM \(fits\)", text, re.M)
        assert re.search(r"^decode: 8 tokens \(2 x 4, greedy, prompt 32 tokens\) in .* = [\d.]+ tokens/s", text, re.M)
        # the cuDNN variant runs on CPU with XLA attention and says so; the others never mention the fallback
        assert (FALLBACK in text) == (name == "cudnn"), text
        assert f"attention xla, remat {'on' if name == 'remat' else 'off'};" in text, text

        record = json.loads((tmp_path / f"plan_{name}.json").read_text())
        assert record["planner_total_bytes"] == record["plan"]["total"] > 0
        assert record["measured_peak_bytes"] is None  # no device memory stats on CPU
        assert record["plan"]["run"]["preset"] == "tiny_1layer"
        assert record["plan"]["run"]["remat"] is (name == "remat")
        assert record["plan"]["run"]["attention_impl"] == "xla"
        assert (record["plan"]["run"]["global_batch_size"], record["plan"]["run"]["max_length"]) == (2, 64)
        assert record["measured"]["step_s"] > 0 and record["measured"]["decode_tokens_per_s"] > 0

    summary = log.split("=== summary")[1]
    assert [line.split(":")[0] for line in summary.splitlines() if line.endswith(": ok")] == list(VARIANTS), summary
    assert summary.count("  decode: ") == summary.count("  planner: total ") == 3, summary
