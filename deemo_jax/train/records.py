"""What a run writes besides checkpoints: metrics (JSONL + TensorBoard + progress bar), per-step example ids,
and the loss-curve plot.

``{workdir}/metrics.jsonl``: one JSON object per optimizer step (process 0): ``step`` (completed steps, from
1), ``loss``, ``lr``, ``grad_norm``, ``step_time_s``, ``tokens_per_s``, ``examples_per_s``,
``tflops_per_s_per_device`` (useful FLOPs, ``deemo_jax.train.flops``), ``mfu`` (only on devices whose peak is
known), ``supervised_tokens``. The first step after a (re)start includes compilation and is timed alone; the
timing fields of later steps are means over the last 10 steps (see ``trainer._StepTimer``).
``{workdir}/tensorboard/``: the same scalars. ``{workdir}/examples/process_{i}.jsonl``: per step, the record
ids of this process's rows (``ids``, in batch order, micro-batch after micro-batch; None for padding rows)
and the ids dropped as over-long (``dropped``).

On resume from step ``s`` every record after ``s`` is deleted first (those steps are recomputed), so the
files always describe one uninterrupted run; TensorBoard gets ``purge_step = s + 1`` for the same effect.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
EXAMPLES_DIR = "examples"
TENSORBOARD_DIR = "tensorboard"
LOSS_PLOT = "loss.png"


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: the step is recomputed anyway
                continue
    return rows


def truncate_jsonl(path: str | Path, last_step: int) -> None:
    """Keep only the rows with ``step <= last_step`` (atomic rewrite)."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """JSONL + TensorBoard + tqdm bar; only the process with ``enabled`` writes anything."""

    def __init__(self, workdir: Path, *, enabled: bool, start_step: int, total_steps: int, progress_bar: bool):
        self.enabled = enabled
        self.path = workdir / METRICS_FILE
        self._file = self._tb = self._bar = None
        if not enabled:
            return
        # Only the writing process needs these; the others skip their import (TensorBoard's is slow).
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        truncate_jsonl(self.path, start_step)
        self._file = self.path.open("a")
        self._tb = SummaryWriter(str(workdir / TENSORBOARD_DIR), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress_bar,
                         dynamic_ncols=True, mininterval=1.0)

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        step = int(record["step"])
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(f"train/{key}", value, step)
        self._bar.update(step - self._bar.n)
        self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def message(self, text: str) -> None:
        """A line that does not break the progress bar."""
        if self.enabled:
            self._bar.write(text)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            self._bar.close()


class ExampleLog:
    """``examples/process_{i}.jsonl``: the record ids each step consumed on this process."""

    def __init__(self, workdir: Path, *, process_index: int, start_step: int):
        directory = workdir / EXAMPLES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"process_{process_index}.jsonl"
        truncate_jsonl(self.path, start_step)
        self._file = self.path.open("a")

    def write(self, step: int, ids: Sequence[str | None], dropped: Sequence[str]) -> None:
        self._file.write(json.dumps({"step": step, "ids": list(ids), "dropped": list(dropped)}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_loss(metrics_path: str | Path, png_path: str | Path) -> None:
    """Training loss per step (and its moving average) as a PNG."""
    import matplotlib  # once per run, at its end: matplotlib's import costs a second or two

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in read_jsonl(metrics_path) if isinstance(r.get("loss"), int | float)]
    if not rows:
        raise ValueError(f"{metrics_path} holds no finite loss values to plot")
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(loss) // 20)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.8, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
