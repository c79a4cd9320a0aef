"""Command line: ``python -m deemo_jax.eval.judge`` / ``scripts/judge.py``; one function per mode.

Exit status (``deemo_jax.exit_codes``): 0 done; 1 some samples failed (see failures.jsonl); 2 bad arguments or
input, unwritable output folder, declined at the prompt, or a fatal endpoint error (HTTP 401/403/404);
5 ``--collect``: the batch is still running; 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deemo_jax import exit_codes
from deemo_jax.eval.judge.batch import BATCH_ENDED, BATCH_STATE, BatchError, collect_batch, submit_batch
from deemo_jax.eval.judge.cache import JudgeCache, normalise_endpoint
from deemo_jax.eval.judge.client import Judge, JudgeConfig, JudgeFatalError, JudgeInterrupted
from deemo_jax.eval.judge.cost import CostEstimate, estimate_cost, plan_requests, resolve_prices
from deemo_jax.eval.judge.pipeline import Progress, Sample, read_predictions, run_judge
from deemo_jax.eval.judge.prompts import DEFAULT_BASE_URL, DEFAULT_MODEL, PROMPT_VERSION
from deemo_jax.eval.judge.summary import append_run, run_record, summary_markdown, write_jsonl_atomic, write_report
from deemo_jax.files import OutputDirError, ensure_writable_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="judge",
        description="Score emotion-reasoning predictions with a GPT judge (clue and label overlap, 1-10).",
    )
    add = parser.add_argument
    add("--predictions", required=True, type=Path, help="JSONL with fields id, generated, reference")
    add("--output", required=True, type=Path, help="output directory")
    add("--model", default=DEFAULT_MODEL, help=f"judge model (default {DEFAULT_MODEL}, the paper's judge)")
    add("--base-url", default=None, help=f"OpenAI-compatible base URL (default $OPENAI_BASE_URL or {DEFAULT_BASE_URL})")
    add("--cache", type=Path, default=None, help="cache JSONL (default OUTPUT/cache.jsonl); share it across models")
    add("--concurrency", type=int, default=8)
    add("--max-retries", type=int, default=5)
    add("--timeout", type=float, default=60.0, help="seconds per request")
    add("--backoff-base", type=float, default=1.0, help="seconds; retry n waits ~base*2^n")
    add("--max-completion-tokens", type=int, default=1024)
    add("--price-in", type=float, default=None, help="USD per 1M prompt tokens")
    add("--price-out", type=float, default=None, help="USD per 1M completion tokens")
    add("--limit", type=int, default=None, help="judge only the first N valid samples")
    add("--bootstrap-resamples", type=int, default=10_000)
    add("--seed", type=int, default=0, help="bootstrap seed")
    add("--yes", action="store_true", help="do not ask for confirmation (needed without a TTY)")
    add("--dry-run", action="store_true", help="print the cost estimate and exit")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--batch-api", action="store_true", help="submit the uncached requests as one Batch API job (50%% cheaper)"
    )
    mode.add_argument("--collect", action="store_true", help="collect the submitted Batch API job")
    return parser


def _fail(message: str, code: int = exit_codes.USAGE) -> int:
    """One line on stderr (``judge: error: ...`` for usage errors) and the exit status."""
    print(f"judge: {'error: ' if code == exit_codes.USAGE else ''}{message}", file=sys.stderr)
    return code


@dataclass
class Setup:
    """What every mode needs, built and checked by ``prepare`` before anything is sent."""

    args: argparse.Namespace
    config: JudgeConfig
    base_url: str
    cache: JudgeCache
    samples: list[Sample]
    input_failures: list[dict[str, Any]]
    prices: tuple[float | None, float | None]
    started: float = field(default_factory=time.time)
    judge: Judge | None = None

    @property
    def output(self) -> Path:
        return self.args.output


def _check_args(args: argparse.Namespace) -> str | None:
    checks = [
        (args.predictions.is_file(), f"--predictions {args.predictions} is not a file; check the path"),
        (not (args.dry_run and args.collect), "--dry-run and --collect exclude each other; drop one"),
        (args.limit is None or args.limit >= 1, "--limit must be >= 1; fix the option"),
        (args.bootstrap_resamples >= 1, "--bootstrap-resamples must be >= 1; fix the option"),
        (args.concurrency >= 1, "--concurrency must be >= 1; fix the option"),
        (args.max_retries >= 0, "--max-retries must be >= 0; fix the option"),
        (args.timeout > 0, "--timeout must be > 0 seconds; fix the option"),
        (args.backoff_base >= 0, "--backoff-base must be >= 0; fix the option"),
        (args.max_completion_tokens >= 16, "--max-completion-tokens must be >= 16; fix the option"),
        (args.price_in is None or args.price_in >= 0, "--price-in must be >= 0; fix the option"),
        (args.price_out is None or args.price_out >= 0, "--price-out must be >= 0; fix the option"),
        (args.cache is None or not args.cache.is_dir(), f"--cache {args.cache} is a folder; give a file path"),
    ]
    return next((message for ok, message in checks if not ok), None)


def prepare(args: argparse.Namespace) -> Setup | int:
    """Check the arguments, the output folder and the input; an ``int`` is the exit status of a failure."""
    problem = _check_args(args)
    if problem:
        return _fail(problem)
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    try:
        config = JudgeConfig(
            model=args.model,
            endpoint=normalise_endpoint(base_url),
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            timeout=args.timeout,
            backoff_base=args.backoff_base,
            max_completion_tokens=args.max_completion_tokens,
        )
        ensure_writable_dir(args.output, what="--output folder")
        if args.cache is not None:
            ensure_writable_dir(args.cache.parent, what="--cache folder")
    except OutputDirError as error:
        return _fail(str(error))
    except ValueError as error:
        return _fail(f"{error}; fix the option")
    cache = JudgeCache(args.cache or args.output / "cache.jsonl")
    if cache.skipped_lines:
        print(f"judge: skipped {cache.skipped_lines} unreadable cache line(s) in {cache.path}", file=sys.stderr)
    samples, input_failures = read_predictions(args.predictions)
    setup = Setup(args, config, base_url, cache, samples, input_failures, resolve_prices(args.model, args.price_in,
                                                                                          args.price_out))
    if not samples:
        where = ""
        if input_failures:
            write_report(args.output, [], input_failures, config, {}, resamples=1, prices=setup.prices)
            where = f" (bad lines are listed in {args.output / 'failures.jsonl'})"
        return _fail(f"no valid sample in {args.predictions}{where}; fix the file: each line needs id, generated, "
                     "reference")
    if args.limit is not None:
        setup.samples = samples[: args.limit]
    print(
        f"judge: {len(setup.samples)} samples, {len(input_failures)} bad input line(s); model {args.model}; "
        f"prompts {PROMPT_VERSION}; endpoint {config.endpoint}"
    )
    return setup


def _confirm(setup: Setup, batch: bool) -> tuple[int | None, CostEstimate]:
    """Print the estimate; (``None`` to go on, else the exit status: dry run, declined, no TTY; the estimate)."""
    planner = Judge(setup.config, client=None, cache=setup.cache)
    args = setup.args
    estimate = estimate_cost(planner, setup.samples, args.price_in, args.price_out, batch=batch)
    print(f"judge: estimate: {estimate.describe(args.model)}")
    if args.dry_run:
        return exit_codes.OK, estimate
    if estimate.requests_to_send == 0 or args.yes:
        return None, estimate
    if not sys.stdin.isatty():
        return _fail("refusing to send requests without confirmation: stdin is not a TTY; pass --yes"), estimate
    if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
        return _fail("aborted at the prompt; nothing was sent; rerun with --yes to skip the question"), estimate
    return None, estimate


def _make_judge(setup: Setup, cache_only: bool = False) -> Judge:
    """The judge of this run; ``cache_only``: no client (everything is cached, so no key is needed)."""
    if cache_only:
        setup.judge = Judge(setup.config, client=None, cache=setup.cache)
        return setup.judge
    # Imported here: `openai` costs ~1 s to import, and --dry-run, the estimate and bad-argument exits skip it.
    import openai

    key = os.environ.get("OPENAI_API_KEY") or None
    if key is None and urllib.parse.urlsplit(setup.config.endpoint).hostname == "api.openai.com":
        raise JudgeFatalError(
            "OPENAI_API_KEY is not set; set it in the environment (it is read from nowhere else), nothing was sent"
        )
    client = openai.OpenAI(  # a local OpenAI-compatible server without a key gets a dummy one
        api_key=key or "EMPTY", base_url=setup.base_url, max_retries=0, timeout=setup.config.timeout
    )
    setup.judge = Judge(setup.config, client=client, cache=setup.cache, secret=key)
    return setup.judge


def _record(setup: Setup, mode: str, outcome: str) -> None:
    stats = setup.judge.stats if setup.judge is not None else {}
    append_run(setup.output, run_record(stats, mode=mode, outcome=outcome, started=setup.started,
                                        prices=setup.prices))


def _finish(setup: Setup, judge: Judge, mode: str) -> int:
    """Judge every sample (from the cache where possible), write the report; 0, or 1 if anything failed."""
    results = run_judge(judge, setup.samples, progress=Progress())
    n_failed = sum(1 for r in results if r.failures) + len(setup.input_failures)
    _record(setup, mode, "some_failed" if n_failed else "done")
    args = setup.args
    summary = write_report(
        args.output, results, setup.input_failures, setup.config, judge.stats,
        resamples=args.bootstrap_resamples, seed=args.seed, prices=setup.prices,
    )
    print(summary_markdown(summary))
    print(
        f"judge: wrote {args.output}/scores.jsonl, failures.jsonl, summary.json, summary.md; "
        f"{judge.stats['api_calls']} API call(s) this run, {summary['totals']['api_calls']} over "
        f"{summary['totals']['runs']} run(s)"
    )
    if not n_failed:
        return exit_codes.OK
    n_rows = len(setup.input_failures) + sum(len(r.failures) for r in results)
    return _fail(
        f"{n_failed} of {summary['n_samples']} samples failed ({len(setup.input_failures)} bad input line(s), "
        f"{n_rows} failure row(s)); see {args.output / 'failures.jsonl'}, fix bad lines and rerun the same command "
        "to retry failed requests",
        exit_codes.SOME_FAILED,
    )


def run_online(setup: Setup) -> int:
    stop, estimate = _confirm(setup, batch=False)
    if stop is not None:
        return stop
    # A rerun served by the cache needs no client and no key.
    return _finish(setup, _make_judge(setup, cache_only=estimate.requests_to_send == 0), "online")


def _batch_api_error(setup: Setup, error: Exception) -> int:
    return _fail(
        f"the Batch API call failed ({' '.join(str(error).split())[:300]}); check --base-url, the key and the "
        f"batch in {setup.output / BATCH_STATE}"
    )


def run_batch_submit(setup: Setup) -> int:
    stop, estimate = _confirm(setup, batch=True)
    if stop is not None:
        return stop
    if (setup.output / BATCH_STATE).exists():
        return _fail(f"a batch is pending in {setup.output / BATCH_STATE}; run --collect first")
    if estimate.requests_to_send == 0:  # everything is cached: write the report
        return _finish(setup, _make_judge(setup, cache_only=True), "batch-submit")
    judge = _make_judge(setup)
    import openai  # already imported by _make_judge; needed here for its error class

    ready, pending, _ = plan_requests(judge, setup.samples)
    try:
        batch_id = submit_batch(judge, ready, setup.output)
    except openai.APIError as error:
        return _batch_api_error(setup, error)
    _record(setup, "batch-submit", "submitted")
    print(
        f"judge: submitted batch {batch_id} with {len(ready)} request(s); "
        f"{len(pending)} label request(s) follow after --collect"
    )
    return exit_codes.OK


def run_collect(setup: Setup) -> int:
    judge = _make_judge(setup)
    import openai  # already imported by _make_judge; needed here for its error class

    try:
        status, stored, failures = collect_batch(judge, setup.output)
    except openai.APIError as error:
        return _batch_api_error(setup, error)
    print(f"judge: batch status {status}; {stored} result(s) cached, {len(failures)} failed")
    if failures:
        write_jsonl_atomic(setup.output / f"batch_failures_{int(time.time())}.jsonl", failures)
    if status not in BATCH_ENDED:
        _record(setup, "collect", "pending")
        return _fail(
            f"the batch in {setup.output / BATCH_STATE} is still {status}; run the same --collect command again "
            "later", exit_codes.PENDING,
        )
    ready, pending, _ = plan_requests(judge, setup.samples)
    if ready or pending:
        _record(setup, "collect", "collected")
        print(
            f"judge: {len(ready) + len(pending)} request(s) remain (label scoring needs the emotion words first, "
            "failed ones are retried): run --batch-api again, or run without it to finish online"
        )
        return exit_codes.OK
    return _finish(setup, judge, "collect")


def _run_mode(setup: Setup, mode: Callable[[Setup], int], name: str) -> int:
    """Run ``mode``, turning fatal errors and interruptions into one line, an exit status and a ledger entry."""
    try:
        return mode(setup)
    except JudgeFatalError as error:
        if setup.judge is not None:  # requests were (or could have been) sent: keep their counts
            _record(setup, name, "fatal")
        return _fail(str(error))
    except (JudgeInterrupted, KeyboardInterrupt):
        if setup.judge is not None:
            _record(setup, name, "interrupted")
        print(
            f"judge: interrupted; completed requests are cached in {setup.cache.path}; rerun the same command to "
            "resume", file=sys.stderr,
        )
        return exit_codes.INTERRUPTED
    except BatchError as error:
        return _fail(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        setup = prepare(args)
        if isinstance(setup, int):
            return setup
        if args.collect:
            return _run_mode(setup, run_collect, "collect")
        if args.batch_api:
            return _run_mode(setup, run_batch_submit, "batch-submit")
        return _run_mode(setup, run_online, "online")
    except KeyboardInterrupt:
        print("judge: interrupted before anything was sent; rerun the same command", file=sys.stderr)
        return exit_codes.INTERRUPTED
