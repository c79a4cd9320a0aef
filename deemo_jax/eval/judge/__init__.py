"""GPT judge for emotion reasoning: EMER-style "clue overlap" and "label overlap" scores (1-10); see docs/judge.md.

Input: a predictions JSONL file, one object per line with ``id`` (str or int, unique), ``generated`` (the model's
reasoning text, may be empty) and ``reference`` (the non-empty ground-truth reasoning); a bad line is recorded
as a failure with its line number and never stops the run.

Per sample four chat requests (one user message each, temperature 0, structured output): ``clue`` (cue
overlap), ``emotions`` twice (reference and prediction reduced to emotion words) and ``label`` (overlap of the
two word lists). Every request ends with a validated result or a recorded failure; a number is never invented.
Results are cached on disk under ``request_cache_key``; reruns make zero requests and an interrupted run resumes.

Modules, lowest first (each imports only those above it):
  ``prompts``   prompts, response schemas, reply validation (fenced JSON accepted), ``PROMPT_VERSION``
  ``cache``     request bodies, cache keys, ``JudgeCache``
  ``client``    ``JudgeConfig`` and ``Judge``: one request with retries, retry notices, billed-token counts
  ``pipeline``  samples, the per-sample pipeline, the concurrent run, progress lines with rate and ETA
  ``cost``      prices, the pre-run estimate, the measured cost of billed tokens
  ``summary``   scores.jsonl, failures.jsonl, summary.json/.md, the ledger of runs (runs.jsonl)
  ``batch``     the Batch API
  ``cli``       the command line (``python -m deemo_jax.eval.judge``, ``scripts/judge.py``)
"""

from deemo_jax.eval.judge.batch import (
    BATCH_STATE,
    BatchError,
    batch_request_lines,
    collect_batch,
    collect_batch_output,
    submit_batch,
)
from deemo_jax.eval.judge.cache import JudgeCache, normalise_endpoint, request_body, request_cache_key
from deemo_jax.eval.judge.cli import build_parser, main
from deemo_jax.eval.judge.client import Judge, JudgeConfig, JudgeFatalError, JudgeInterrupted, RequestFailure
from deemo_jax.eval.judge.cost import (
    BATCH_DISCOUNT,
    CHARS_PER_TOKEN,
    EXPECTED_OUTPUT_TOKENS,
    PRICES_PER_M,
    CostEstimate,
    billed_usd,
    estimate_cost,
    estimate_tokens,
    plan_requests,
    resolve_prices,
)
from deemo_jax.eval.judge.pipeline import Progress, Sample, SampleResult, judge_sample, read_predictions, run_judge
from deemo_jax.eval.judge.prompts import (
    CLUE_PROMPT,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    EMOTIONS_PROMPT,
    LABEL_PROMPT,
    PAPER_JUDGE_MODEL,
    PAPER_SCORES,
    PROMPT_VERSION,
    RESPONSE_MODELS,
    SCORE_MAX,
    SCORE_MIN,
    ClueJudgement,
    EmotionWords,
    InvalidJudgement,
    JudgeRequest,
    LabelJudgement,
    clue_request,
    emotions_request,
    label_request,
    normalise_emotion_words,
    parse_reply,
    response_format_param,
    strip_json_fence,
)
from deemo_jax.eval.judge.summary import (
    RUNS_FILE,
    append_run,
    bootstrap_ci,
    read_runs,
    run_record,
    run_totals,
    summarise,
    summary_markdown,
    write_report,
)

__all__ = [
    "BATCH_DISCOUNT", "BATCH_STATE", "CHARS_PER_TOKEN", "CLUE_PROMPT", "DEFAULT_BASE_URL", "DEFAULT_MODEL",
    "EMOTIONS_PROMPT", "EXPECTED_OUTPUT_TOKENS", "LABEL_PROMPT", "PAPER_JUDGE_MODEL", "PAPER_SCORES", "PRICES_PER_M",
    "PROMPT_VERSION", "RESPONSE_MODELS", "RUNS_FILE", "SCORE_MAX", "SCORE_MIN", "BatchError", "ClueJudgement",
    "CostEstimate", "EmotionWords", "InvalidJudgement", "Judge", "JudgeCache", "JudgeConfig", "JudgeFatalError",
    "JudgeInterrupted", "JudgeRequest", "LabelJudgement", "Progress", "RequestFailure", "Sample", "SampleResult",
    "append_run", "batch_request_lines", "billed_usd", "bootstrap_ci", "build_parser", "clue_request",
    "collect_batch", "collect_batch_output", "emotions_request", "estimate_cost", "estimate_tokens", "judge_sample",
    "label_request", "main", "normalise_emotion_words", "normalise_endpoint", "parse_reply", "plan_requests",
    "read_predictions", "read_runs", "request_body", "request_cache_key", "resolve_prices", "response_format_param",
    "run_judge", "run_record", "run_totals", "strip_json_fence", "submit_batch", "summarise", "summary_markdown",
    "write_report",
]
