"""``benchmarks/real_shapes.py --dry-run``: the planner's compiled step runs, its loss is finite, decoding runs.

    .venv/bin/python -m pytest tests/benchmarks/test_real_shapes.py -m slow
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_real_shapes_dry_run_plans_runs_and_decodes():
    command = [sys.executable, str(ROOT / "benchmarks" / "real_shapes.py"), "--dry-run", "--new-tokens", "2"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "per device on host RAM" in out and "-> FITS" in out and "remat on" in out
    loss = float(re.search(r"train step \(loss ([^)]+)\)", out).group(1))
    assert math.isfinite(loss) and loss > 0
    assert re.search(r"generate again: [\d.]+ s \(2 tokens", out), out
    assert re.search(r"planner: [\d.]+ GiB for the step vs measured peak RSS above the baseline [\d.]+ GiB", out)
