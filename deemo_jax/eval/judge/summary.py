"""The report: per-sample score rows, failures, bootstrap summary, and the ledger of runs (cumulative counts)."""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deemo_jax.eval.judge.client import JudgeConfig
from deemo_jax.eval.judge.cost import billed_usd
from deemo_jax.eval.judge.pipeline import SampleResult
from deemo_jax.eval.judge.prompts import PAPER_JUDGE_MODEL, PAPER_SCORES, PROMPT_VERSION
from deemo_jax.files import write_atomic, write_json_atomic

RUNS_FILE = "runs.jsonl"
# Counters of a run record that add up across runs (``totals`` in summary.json).
_RUN_COUNTS = (
    "api_calls",
    "completed",
    "cache_hits",
    "retries",
    "billed_prompt_tokens",
    "billed_completion_tokens",
    "batch_billed_prompt_tokens",
    "batch_billed_completion_tokens",
)


def write_jsonl_atomic(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    return write_atomic(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))


def bootstrap_ci(
    values: Sequence[float], resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (seeded); ``None`` for no values."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // data.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------
# Ledger of runs: one line per run in OUTPUT/runs.jsonl, so a rerun never erases what an earlier run cost
# ---------------------------------------------------------------------------------------------------------


def run_record(
    stats: Mapping[str, int],
    *,
    mode: str,
    outcome: str,
    started: float,
    prices: tuple[float | None, float | None],
) -> dict[str, Any]:
    """What one run did: its counters (``_RUN_COUNTS``), errors by type, and the USD of its billed tokens."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "finished": now.isoformat(timespec="seconds"),
        "mode": mode,
        "outcome": outcome,
        **{name: int(stats.get(name, 0)) for name in _RUN_COUNTS},
        "errors": {k[len("error_") :]: int(v) for k, v in sorted(stats.items()) if k.startswith("error_")},
        "usd": billed_usd(stats, prices),
    }


def append_run(output_dir: Path, record: Mapping[str, Any]) -> None:
    """Append ``record`` to the ledger (one fsynced line; a torn line is skipped by ``read_runs``)."""
    path = output_dir / RUNS_FILE
    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(dict(record), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_runs(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / RUNS_FILE
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            runs.append(record)
    return runs


def run_totals(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Sums over ``runs``; ``usd`` is ``None`` if any run with billed tokens had no price."""
    totals: dict[str, Any] = {"runs": len(runs)}
    for name in _RUN_COUNTS:
        totals[name] = sum(int(r.get(name, 0)) for r in runs)
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r.get("errors") or {})
    totals["errors"] = dict(sorted(errors.items()))
    costs = [r.get("usd") for r in runs]
    totals["usd"] = None if any(c is None for c in costs) else float(sum(costs))
    return totals


# ---------------------------------------------------------------------------------------------------------
# Scores, summary, report files
# ---------------------------------------------------------------------------------------------------------


def _score_rows(results: Sequence[SampleResult], config: JudgeConfig) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.clue is None and r.label is None:
            continue
        records = [x for x in (r.clue, r.reference_emotions, r.predicted_emotions, r.label) if x is not None]

        def field(record: dict[str, Any] | None, name: str) -> Any:
            return None if record is None else record["result"][name]

        rows.append(
            {
                "id": r.sample.id,
                "clue_overlap": field(r.clue, "score"),
                "label_overlap": field(r.label, "score"),
                "reference_emotions": field(r.reference_emotions, "emotions"),
                "predicted_emotions": field(r.predicted_emotions, "emotions"),
                "clue_reason": field(r.clue, "reason"),
                "label_reason": field(r.label, "reason"),
                "judge_model": config.model,
                "judge_response_models": sorted({str(x.get("response_model")) for x in records}),
                "prompt_version": PROMPT_VERSION,
            }
        )
    return rows


def summarise(
    results: Sequence[SampleResult],
    input_failures: Sequence[dict[str, Any]],
    config: JudgeConfig,
    stats: Mapping[str, int],
    resamples: int = 10_000,
    seed: int = 0,
    runs: Sequence[Mapping[str, Any]] = (),
    prices: tuple[float | None, float | None] = (None, None),
) -> dict[str, Any]:
    """Mean, seeded 95% bootstrap interval, N scored and N failed per metric; this run's and all runs' counts."""
    clue = [r.clue["result"]["score"] for r in results if r.clue is not None]
    label = [r.label["result"]["score"] for r in results if r.label is not None]
    both = [
        (r.clue["result"]["score"] + r.label["result"]["score"]) / 2
        for r in results
        if r.clue is not None and r.label is not None
    ]
    n_inputs = len(results) + len(input_failures)

    def metric(values: Sequence[float]) -> dict[str, Any]:
        ci = bootstrap_ci(values, resamples=resamples, seed=seed)
        return {
            "mean": float(np.mean(values)) if values else None,
            "ci95_low": None if ci is None else ci[0],
            "ci95_high": None if ci is None else ci[1],
            "n_scored": len(values),
            "n_failed": n_inputs - len(values),
        }

    records = [x for r in results for x in (r.clue, r.reference_emotions, r.predicted_emotions, r.label) if x]
    response_models = Counter(str(x.get("response_model")) for x in records)
    usage = [x["usage"] for x in records if x.get("usage")]
    return {
        "prompt_version": PROMPT_VERSION,
        "judge_model": config.model,
        "judge_response_models": dict(sorted(response_models.items())),
        "endpoint": config.endpoint,
        "same_judge_model_as_paper": bool(response_models)
        and all(m.startswith(PAPER_JUDGE_MODEL) for m in response_models),
        "n_samples": n_inputs,
        "n_input_errors": len(input_failures),
        "n_scored": len(both),
        "n_failed": n_inputs - len(both),
        "n_empty_generated": sum(1 for r in results if not r.sample.generated.strip()),
        "metrics": {"clue_overlap": metric(clue), "label_overlap": metric(label), "average": metric(both)},
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": 0.95, "method": "percentile"},
        "requests": {
            "api_calls_this_run": int(stats.get("api_calls", 0)),
            "completed_this_run": int(stats.get("completed", 0)),
            "cache_hits_this_run": int(stats.get("cache_hits", 0)),
            "retries_this_run": int(stats.get("retries", 0)),
            "errors_this_run": {
                k[len("error_") :]: int(v) for k, v in sorted(stats.items()) if k.startswith("error_")
            },
            "tokens_billed_this_run": {
                "prompt": int(stats.get("billed_prompt_tokens", 0) + stats.get("batch_billed_prompt_tokens", 0)),
                "completion": int(
                    stats.get("billed_completion_tokens", 0) + stats.get("batch_billed_completion_tokens", 0)
                ),
            },
            "usd_billed_this_run": billed_usd(stats, prices),
            "tokens_all_results": {
                "prompt": sum(u["prompt_tokens"] for u in usage),
                "completion": sum(u["completion_tokens"] for u in usage),
            },
        },
        "runs": [dict(r) for r in runs],
        "totals": run_totals(runs),
        "paper_reference": {"judge_model": PAPER_JUDGE_MODEL, **PAPER_SCORES},
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"Judge `{summary['judge_model']}` (replies from "
        f"{', '.join(summary['judge_response_models']) or '-'}), prompts `{summary['prompt_version']}`; "
        f"{summary['n_scored']} of {summary['n_samples']} samples fully "
        f"scored, {summary['n_failed']} with a failure (see failures.jsonl).",
        "",
        "| Metric (1-10) | Mean | 95% CI (bootstrap) | N scored | N failed "
        "| Paper (gpt-4o-mini-2024-07-18) |",
        "|---|---|---|---|---|---|",
    ]
    names = {"clue_overlap": "Clue overlap", "label_overlap": "Label overlap", "average": "Avg"}
    for key, name in names.items():
        m = summary["metrics"][key]
        ci = "-" if m["ci95_low"] is None else f"[{m['ci95_low']:.2f}, {m['ci95_high']:.2f}]"
        lines.append(
            f"| {name} | {num(m['mean'])} | {ci} | {m['n_scored']} | {m['n_failed']} | "
            f"{num(summary['paper_reference'][key])} |"
        )
    if not summary["same_judge_model_as_paper"]:
        lines += [
            "",
            "Note: the judge differs from the paper's gpt-4o-mini-2024-07-18; scores are not comparable.",
        ]
    lines += ["", "Our prompts are English re-writes of the EMER structure, not the paper's exact prompts."]
    return "\n".join(lines) + "\n"


def failure_rows(
    results: Sequence[SampleResult], input_failures: Sequence[dict[str, Any]], config: JudgeConfig
) -> list[dict[str, Any]]:
    tags = {"judge_model": config.model, "prompt_version": PROMPT_VERSION}
    return [{**f, **tags} for f in input_failures] + [{**f, **tags} for r in results for f in r.failures]


def write_report(
    output_dir: Path,
    results: Sequence[SampleResult],
    input_failures: Sequence[dict[str, Any]],
    config: JudgeConfig,
    stats: Mapping[str, int],
    **summary_options: Any,
) -> dict[str, Any]:
    """Write scores.jsonl, failures.jsonl, summary.json and summary.md into ``output_dir``.

    ``summary_options`` (``resamples``, ``seed``, ``prices``) go to :func:`summarise`. ``summary.json`` embeds
    every run recorded in ``runs.jsonl`` (``append_run``) and their totals.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(output_dir / "scores.jsonl", _score_rows(results, config))
    write_jsonl_atomic(output_dir / "failures.jsonl", failure_rows(results, input_failures, config))
    summary = summarise(results, input_failures, config, stats, runs=read_runs(output_dir), **summary_options)
    write_json_atomic(output_dir / "summary.json", summary)
    write_atomic(output_dir / "summary.md", summary_markdown(summary))
    return summary
