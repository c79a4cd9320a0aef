"""Samples, the per-sample scoring pipeline, the concurrent run and its progress lines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from deemo_jax.eval.judge.client import Judge, JudgeInterrupted, RequestFailure, print_line
from deemo_jax.eval.judge.prompts import JudgeRequest, clue_request, emotions_request, label_request


@dataclass(frozen=True)
class Sample:
    id: str
    generated: str
    reference: str


def _input_failure(path: Any, line_no: int, sample_id: str | None, error: Exception) -> dict[str, Any]:
    return {
        "id": sample_id,
        "line": line_no,
        "metric": "all",
        "stage": "input",
        "error": "InvalidInput",
        "message": f"{path}:{line_no}: {error}",
        "attempts": 0,
    }


def read_predictions(path: str | os.PathLike) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Valid samples in file order, and one failure record per bad line (docs/judge.md gives the format)."""
    samples: list[Sample] = []
    failures: list[dict[str, Any]] = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            sample_id: str | None = None
            try:
                row = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError: a bad line
                if not isinstance(row, dict):
                    raise ValueError("the line is not a JSON object")
                raw_id = row.get("id")
                if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id).strip() == "":
                    raise ValueError(f"'id' must be a non-empty string or an integer, got {raw_id!r}")
                sample_id = str(raw_id)
                if not isinstance(row.get("generated"), str):
                    raise ValueError("'generated' (the predicted reasoning) must be a string")
                if not isinstance(row.get("reference"), str) or not row["reference"].strip():
                    raise ValueError("'reference' (the ground-truth reasoning) must be a non-empty string")
                if sample_id in seen:
                    raise ValueError(f"duplicate id {sample_id!r}")
            except ValueError as error:
                failures.append(_input_failure(path, line_no, sample_id, error))
                continue
            seen.add(sample_id)
            samples.append(Sample(sample_id, row["generated"], row["reference"]))
    return samples, failures


@dataclass
class SampleResult:
    sample: Sample
    clue: dict[str, Any] | None = None
    reference_emotions: dict[str, Any] | None = None
    predicted_emotions: dict[str, Any] | None = None
    label: dict[str, Any] | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


def judge_sample(judge: Judge, sample: Sample) -> SampleResult:
    """Clue overlap, both emotion extractions, then label overlap; each failure is recorded, never raised."""
    out = SampleResult(sample)

    def attempt(metric: str, stage: str, request: JudgeRequest) -> dict[str, Any] | None:
        try:
            return judge(request)
        except RequestFailure as failure:
            out.failures.append(
                {
                    "id": sample.id,
                    "metric": metric,
                    "stage": stage,
                    "error": failure.error,
                    "message": failure.message,
                    "attempts": failure.attempts,
                }
            )
            return None

    out.clue = attempt("clue_overlap", "clue", clue_request(sample.reference, sample.generated))
    out.reference_emotions = attempt(
        "label_overlap", "emotions_reference", emotions_request(sample.reference)
    )
    out.predicted_emotions = attempt(
        "label_overlap", "emotions_prediction", emotions_request(sample.generated)
    )
    if out.reference_emotions is not None and out.predicted_emotions is not None:
        out.label = attempt(
            "label_overlap",
            "label",
            label_request(
                out.reference_emotions["result"]["emotions"], out.predicted_emotions["result"]["emotions"]
            ),
        )
    return out


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """``judge: 40/200 samples (20%), 3.10 samples/s, elapsed 0:00:13, ETA 0:00:52`` after the first sample, every
    ``1/steps`` of the run (5%), and at least every ``interval`` seconds while samples finish.

    Called as ``progress(done, total)`` by ``run_judge``; lines go to ``write`` (stderr by default).
    """

    def __init__(
        self,
        write: Callable[[str], None] = print_line,
        steps: int = 20,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.write, self.steps, self.interval, self.clock = write, steps, interval, clock
        self.start = self.last_line = clock()
        self.last_step = -1

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        step = done * self.steps // max(total, 1)
        if step <= self.last_step and done < total and now - self.last_line < self.interval:
            return
        self.last_step, self.last_line = step, now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        eta = _clock((total - done) / rate) if rate > 0 else "?"
        self.write(
            f"judge: {done}/{total} samples ({100 * done // max(total, 1)}%), {rate:.2f} samples/s, "
            f"elapsed {_clock(elapsed)}, ETA {eta}"
        )


def run_judge(
    judge: Judge, samples: Sequence[Sample], progress: Callable[[int, int], None] | None = None
) -> list[SampleResult]:
    """Judge all samples with ``judge.config.concurrency`` workers; results in input order.

    On Ctrl-C the workers are told to stop, pending samples are cancelled and ``JudgeInterrupted`` is raised
    (everything completed so far is in the cache). ``JudgeFatalError`` stops the run the same way.
    """
    results: list[SampleResult | None] = [None] * len(samples)
    pool = ThreadPoolExecutor(max_workers=judge.config.concurrency, thread_name_prefix="judge")
    try:
        futures = {pool.submit(judge_sample, judge, sample): i for i, sample in enumerate(samples)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(done, len(samples))
    except BaseException as error:
        judge.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(error, KeyboardInterrupt):
            raise JudgeInterrupted("interrupted; rerun the same command to resume from the cache") from None
        raise
    pool.shutdown(wait=True)
    return [r for r in results if r is not None]
