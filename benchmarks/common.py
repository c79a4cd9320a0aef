"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

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
