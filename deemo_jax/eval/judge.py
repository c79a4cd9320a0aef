"""GPT judge for emotion reasoning: EMER-style "clue overlap" and "label overlap" scores (1-10).

Input: a predictions JSONL file, one object per line with
  ``id``         str or int, unique (ints are turned into str),
  ``generated``  str, the model's reasoning text (may be empty: it is judged like any answer),
  ``reference``  str, non-empty, the ground-truth reasoning;
other fields are ignored. A bad line (not JSON, a missing/ill-typed field, a duplicate id) is recorded as a
failure with its line number; it never stops the run.

Per sample four chat requests (one user message each, temperature 0, structured output):
  ``clue``     summarise the emotional cues of the reference and of the prediction, score their overlap;
  ``emotions`` (twice) reduce the reference / the prediction to a list of emotion words;
  ``label``    score the overlap of the two emotion-word lists.
The prompts are ours (English), following the structure of AffectGPT's Chinese EMER prompts; they are
versioned by ``PROMPT_VERSION``, which is recorded with every score and is part of every cache key.

Every request ends with a validated result (integer score in 1..10, or a list of strings) or a recorded
failure; a number is never invented. Results are cached on disk (append-only JSONL, fsync per line) under
``request_cache_key``; reruns make zero requests and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from deemo_jax.eval.report import write_json_atomic, write_jsonl_atomic

PROMPT_VERSION = "deemo-emer-en-v1"
PAPER_JUDGE_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_MODEL = PAPER_JUDGE_MODEL
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PAPER_SCORES = {"clue_overlap": 6.20, "label_overlap": 7.66, "average": 6.93}
SCORE_MIN, SCORE_MAX = 1, 10

# USD per 1M tokens (input, output), standard tier, from OpenAI's public pricing (2024-2025); check before
# relying on it and override with --price-in/--price-out. The Batch API halves both.
PRICES_PER_M: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}
BATCH_DISCOUNT = 0.5
CHARS_PER_TOKEN = 4.0  # rough average for English text with GPT-4o's tokenizer; see estimate_cost
# Assumed completion lengths (tokens) per request kind, for the cost estimate only.
EXPECTED_OUTPUT_TOKENS = {"clue": 250, "emotions": 25, "label": 80}

# ---------------------------------------------------------------------------------------------------------
# Prompts and response schemas
# ---------------------------------------------------------------------------------------------------------


class ClueJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference_cues: StrictStr
    predicted_cues: StrictStr
    reason: StrictStr
    score: StrictInt


class EmotionWords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    emotions: list[StrictStr]


class LabelJudgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: StrictStr
    score: StrictInt


RESPONSE_MODELS: dict[str, type[BaseModel]] = {
    "clue": ClueJudgement,
    "emotions": EmotionWords,
    "label": LabelJudgement,
}

CLUE_PROMPT = """\
You are given two descriptions of the same person in a video clip: a ground-truth description and a \
predicted description. Score the predicted description on a scale from 1 to 10 by following these steps.
1. Summarise the cues about the person's emotional state in the ground-truth description (what is said, how \
it sounds, body language, context) and the conclusion drawn from them.
2. Summarise the cues about the person's emotional state in the predicted description in the same way.
3. Compare the two summaries: the more the predicted emotional cues and the reasoning built on them overlap \
with the ground truth, and the more complete the predicted reasoning is, the higher the score. 1 means no \
overlap at all; 10 means the same cues and the same conclusion.
4. Reply in the requested JSON format: your summary of step 1 (reference_cues), your summary of step 2 \
(predicted_cues), a short reason, and the integer score.

Ground-truth description:
<<<{reference}>>>

Predicted description:
<<<{generated}>>>"""

EMOTIONS_PROMPT = """\
From the following description of a person in a video clip, infer the person's most likely emotional state \
and output only emotion words, in the requested JSON format (an empty list if no emotion can be inferred).

Example
Description: <<<Although he appears to smile, his trembling voice and clenched fists show that he is \
actually very anxious.>>>
Emotion words: ["anxious"]

Description: <<<{description}>>>"""

LABEL_PROMPT = """\
You are given the true emotional state and the predicted emotional state of a person, each as a list of \
emotion words. Score the overlap between the predicted and the true emotions on a scale from 1 to 10: the \
higher the overlap, the higher the score. Synonyms and closely related emotions count as overlap; 1 means \
unrelated or opposite emotions, 10 means the same emotions. Reply in the requested JSON format with a short \
reason and the integer score.

True emotions: {reference_emotions}
Predicted emotions: {predicted_emotions}"""


def _format_emotions(words: Sequence[str]) -> str:
    return ", ".join(words) if words else "(none)"


def normalise_emotion_words(words: Iterable[str]) -> list[str]:
    """Strip, lower-case and de-duplicate (first occurrence kept) the extracted emotion words."""
    seen: list[str] = []
    for word in words:
        word = " ".join(word.strip().strip(".,;:!?\"'").lower().split())
        if word and word not in seen:
            seen.append(word)
    return seen


def response_format_param(model: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` body field that ``chat.completions.parse(response_format=model)`` sends."""
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "strict": True, "schema": model.model_json_schema()},
    }


@dataclass(frozen=True)
class JudgeRequest:
    kind: str  # "clue" | "emotions" | "label"
    prompt: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def clue_request(reference: str, generated: str) -> JudgeRequest:
    return JudgeRequest("clue", CLUE_PROMPT.format(reference=reference, generated=generated))


def emotions_request(description: str) -> JudgeRequest:
    return JudgeRequest("emotions", EMOTIONS_PROMPT.format(description=description))


def label_request(reference_emotions: Sequence[str], predicted_emotions: Sequence[str]) -> JudgeRequest:
    return JudgeRequest(
        "label",
        LABEL_PROMPT.format(
            reference_emotions=_format_emotions(reference_emotions),
            predicted_emotions=_format_emotions(predicted_emotions),
        ),
    )


# ---------------------------------------------------------------------------------------------------------
# Request bodies, cache keys, cache
# ---------------------------------------------------------------------------------------------------------

_KEY_FIELDS = ("model", "messages", "response_format", "temperature", "max_completion_tokens")


def normalise_endpoint(base_url: str) -> str:
    """``scheme://host[:port]/path`` without credentials, query or trailing slash; host lower-cased."""
    parts = urllib.parse.urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL {base_url!r} must look like https://host[:port]/v1")
    host = parts.hostname.lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def request_body(request: JudgeRequest, model: str, max_completion_tokens: int) -> dict[str, Any]:
    """The chat-completions body for ``request`` (as sent online, and as the Batch API ``body``)."""
    return {
        "model": model,
        "messages": request.messages,
        "temperature": 0,
        "max_completion_tokens": max_completion_tokens,
        "response_format": response_format_param(RESPONSE_MODELS[request.kind]),
    }


def request_cache_key(endpoint: str, body: Mapping[str, Any]) -> str:
    """sha256 of (prompt version, endpoint, model, messages, response schema, temperature, token limit).

    The endpoint is part of the key because one model name can mean different models on different servers
    (a local server's alias, an Azure deployment name); the API key never is.
    """
    material = {"prompt_version": PROMPT_VERSION, "endpoint": endpoint}
    material.update({name: body.get(name) for name in _KEY_FIELDS})
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only JSONL of validated results, one ``{"key", "kind", "result", ...}`` object per line.

    Each line is written with one ``write`` + ``flush`` + ``fsync`` under a lock, so a crash loses at most the
    line being written; a torn or invalid line is skipped on load (counted in ``skipped_lines``). Only
    validated results are stored: failures are retried by the next run.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.skipped_lines = 0
        if self.path.exists():
            with self.path.open("rb") as f:
                for raw in f:
                    try:
                        record = json.loads(raw)
                        key, kind = record["key"], record["kind"]
                        _validate_result(kind, record["result"])
                    except (ValueError, KeyError, TypeError, pydantic.ValidationError):
                        self.skipped_lines += 1
                        continue
                    self._records[key] = record
        self._needs_newline = (
            self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        )

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def put(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(dict(record), ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                if self._needs_newline:  # a torn last line from a killed run: start on a fresh line
                    line = "\n" + line
                    self._needs_newline = False
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._records[record["key"]] = dict(record)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# ---------------------------------------------------------------------------------------------------------
# Calling the judge
# ---------------------------------------------------------------------------------------------------------


class InvalidJudgement(ValueError):
    """The reply was not a valid result (unparseable, refused, truncated, score out of range)."""


class JudgeFatalError(RuntimeError):
    """An error that no sample can recover from (bad key, no access, unknown model or endpoint)."""


class JudgeInterrupted(RuntimeError):
    """The run was stopped (Ctrl-C); completed requests are in the cache."""


@dataclass
class RequestFailure(Exception):
    kind: str
    error: str
    message: str
    attempts: int


def _validate_result(kind: str, result: Any) -> dict[str, Any]:
    """Re-validate a stored or received result; returns the normalised dict or raises."""
    if kind not in RESPONSE_MODELS:
        raise InvalidJudgement(f"unknown request kind {kind!r}")
    parsed = RESPONSE_MODELS[kind].model_validate(result)
    return _check_parsed(kind, parsed)


def _check_parsed(kind: str, parsed: BaseModel | None) -> dict[str, Any]:
    if parsed is None:
        raise InvalidJudgement("the reply had no parsed content (refusal or empty message)")
    data = parsed.model_dump()
    if kind == "emotions":
        data["emotions"] = normalise_emotion_words(data["emotions"])
    elif not SCORE_MIN <= data["score"] <= SCORE_MAX:
        raise InvalidJudgement(f"score {data['score']} is outside {SCORE_MIN}..{SCORE_MAX}")
    return data


@dataclass(frozen=True)
class JudgeConfig:
    model: str = DEFAULT_MODEL
    endpoint: str = DEFAULT_BASE_URL  # normalised base URL (see normalise_endpoint)
    concurrency: int = 8
    max_retries: int = 5  # extra attempts after the first, for transport errors and invalid replies alike
    timeout: float = 60.0  # seconds per request
    backoff_base: float = 1.0  # seconds; attempt n waits about base * 2**n, jittered, capped at backoff_max
    backoff_max: float = 60.0
    max_completion_tokens: int = 1024

    def __post_init__(self) -> None:
        checks = {
            "concurrency >= 1": self.concurrency >= 1,
            "max_retries >= 0": self.max_retries >= 0,
            "timeout > 0": self.timeout > 0,
            "backoff_base >= 0": self.backoff_base >= 0,
            "backoff_max >= 0": self.backoff_max >= 0,
            "max_completion_tokens >= 16": self.max_completion_tokens >= 16,
            "model is not empty": bool(self.model.strip()),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid JudgeConfig: need {', '.join(bad)} (got {self})")


_RETRYABLE_STATUS = {408, 409, 429}
_FATAL_STATUS = {401, 403, 404}


class Judge:
    """Sends judge requests with caching, de-duplication, retries and a stop switch; thread-safe."""

    def __init__(self, config: JudgeConfig, client: Any, cache: JudgeCache, secret: str | None = None):
        self.config = config
        self.client = client
        self.cache = cache
        self._secret = secret
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}
        self._rng = random.Random()
        self.stats: Counter[str] = Counter()

    def stop(self) -> None:
        self._stop.set()

    def key(self, request: JudgeRequest) -> str:
        return request_cache_key(self.config.endpoint, self.body(request))

    def body(self, request: JudgeRequest) -> dict[str, Any]:
        return request_body(request, self.config.model, self.config.max_completion_tokens)

    def __call__(self, request: JudgeRequest) -> dict[str, Any]:
        """The validated result for ``request``, from the cache or the API; raises ``RequestFailure``."""
        key = self.key(request)
        with self._lock:
            record = self.cache.get(key)
            if record is not None:
                self.stats["cache_hits"] += 1
                return record
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            return future.result()
        try:
            record = self._request(request, key)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(record)
            return record
        finally:
            with self._lock:
                del self._inflight[key]

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.backoff_max)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2**attempt)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _request(self, request: JudgeRequest, key: str) -> dict[str, Any]:
        import openai

        model_cls = RESPONSE_MODELS[request.kind]
        last_error, last_message = "", ""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if self._stop.is_set():
                raise JudgeInterrupted("stopped before the request completed")
            delay = 0.0
            try:
                with self._lock:
                    self.stats["api_calls"] += 1
                completion = self.client.chat.completions.parse(
                    model=self.config.model,
                    messages=request.messages,
                    response_format=model_cls,
                    temperature=0,
                    max_completion_tokens=self.config.max_completion_tokens,
                    timeout=self.config.timeout,
                )
                result = _check_parsed(request.kind, completion.choices[0].message.parsed)
            except openai.APIStatusError as error:
                status = error.status_code
                last_error, last_message = type(error).__name__, f"HTTP {status}: {error.message}"
                if status in _FATAL_STATUS:
                    raise JudgeFatalError(
                        f"the judge endpoint answered HTTP {status} ({self._redact(error.message)}); check "
                        "OPENAI_API_KEY, --model and --base-url"
                    ) from None
                if status not in _RETRYABLE_STATUS and status < 500:
                    raise RequestFailure(
                        request.kind, last_error, self._redact(last_message), attempt + 1
                    ) from None
                delay = self._backoff(attempt, _retry_after(error))
            except openai.APIConnectionError as error:  # includes APITimeoutError
                last_error, last_message = type(error).__name__, str(error)
                delay = self._backoff(attempt, None)
            except (
                pydantic.ValidationError,
                InvalidJudgement,
                openai.OpenAIError,  # LengthFinishReason, ContentFilterFinishReason, malformed responses
            ) as error:
                last_error, last_message = type(error).__name__, str(error)
            else:
                record = {
                    "key": key,
                    "kind": request.kind,
                    "prompt_version": PROMPT_VERSION,
                    "model": self.config.model,
                    "response_model": completion.model,
                    "system_fingerprint": completion.system_fingerprint,
                    "usage": _usage(completion.usage),
                    "via": "online",
                    "result": result,
                }
                self.cache.put(record)
                with self._lock:
                    self.stats["completed"] += 1
                return record
            with self._lock:
                self.stats[f"error_{last_error}"] += 1
            if attempt + 1 < attempts and self._stop.wait(delay):
                raise JudgeInterrupted("stopped while waiting to retry")
        raise RequestFailure(request.kind, last_error, self._redact(last_message)[:2000], attempts)


def _retry_after(error: Any) -> float | None:
    try:
        value = error.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _usage(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}


# ---------------------------------------------------------------------------------------------------------
# Samples, the per-sample pipeline and the run
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    id: str
    generated: str
    reference: str


def read_predictions(path: str | os.PathLike) -> tuple[list[Sample], list[dict[str, Any]]]:
    """Valid samples in file order, and one failure record per bad line (module doc gives the format)."""
    samples: list[Sample] = []
    failures: list[dict[str, Any]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            sample_id: str | None = None
            try:
                row = json.loads(line)
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
                failures.append(
                    {
                        "id": sample_id,
                        "line": line_no,
                        "metric": "all",
                        "stage": "input",
                        "error": "InvalidInput",
                        "message": f"{path}:{line_no}: {error}",
                        "attempts": 0,
                    }
                )
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


# ---------------------------------------------------------------------------------------------------------
# Summary, bootstrap, report files
# ---------------------------------------------------------------------------------------------------------


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


def _score_rows(results: Sequence[SampleResult], config: JudgeConfig) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.clue is None and r.label is None:
            continue
        records = [x for x in (r.clue, r.reference_emotions, r.predicted_emotions, r.label) if x is not None]
        rows.append(
            {
                "id": r.sample.id,
                "clue_overlap": None if r.clue is None else r.clue["result"]["score"],
                "label_overlap": None if r.label is None else r.label["result"]["score"],
                "reference_emotions": None
                if r.reference_emotions is None
                else r.reference_emotions["result"]["emotions"],
                "predicted_emotions": None
                if r.predicted_emotions is None
                else r.predicted_emotions["result"]["emotions"],
                "clue_reason": None if r.clue is None else r.clue["result"]["reason"],
                "label_reason": None if r.label is None else r.label["result"]["reason"],
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
) -> dict[str, Any]:
    """Mean, seeded 95% bootstrap interval, N scored and N failed per metric (module doc of the CLI)."""
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
            "errors_this_run": {
                k[len("error_") :]: int(v) for k, v in sorted(stats.items()) if k.startswith("error_")
            },
            "tokens_all_results": {
                "prompt": sum(u["prompt_tokens"] for u in usage),
                "completion": sum(u["completion_tokens"] for u in usage),
            },
        },
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


def write_report(
    output_dir: Path,
    results: Sequence[SampleResult],
    input_failures: Sequence[dict[str, Any]],
    config: JudgeConfig,
    stats: Mapping[str, int],
    resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write scores.jsonl, failures.jsonl, summary.json and summary.md into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tags = {"judge_model": config.model, "prompt_version": PROMPT_VERSION}
    failures = [{**f, **tags} for f in input_failures]
    failures += [{**f, **tags} for r in results for f in r.failures]
    write_jsonl_atomic(_score_rows(results, config), output_dir / "scores.jsonl")
    write_jsonl_atomic(failures, output_dir / "failures.jsonl")
    summary = summarise(results, input_failures, config, stats, resamples=resamples, seed=seed)
    write_json_atomic(summary, output_dir / "summary.json")
    tmp = output_dir / ".summary.md.tmp"
    tmp.write_text(summary_markdown(summary), encoding="utf-8")
    os.replace(tmp, output_dir / "summary.md")
    return summary


# ---------------------------------------------------------------------------------------------------------
# Cost estimate
# ---------------------------------------------------------------------------------------------------------


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Rough prompt tokens: (message characters + response-schema characters) / 4, plus 4 per message.

    English averages about 4 characters per token with GPT-4o's o200k tokenizer; expect ±25%. tiktoken is not
    a dependency, so the estimate does not use it.
    """
    chars = sum(len(m["content"]) for m in body["messages"]) + len(json.dumps(body["response_format"]))
    return math.ceil(chars / CHARS_PER_TOKEN) + 4 * len(body["messages"])


@dataclass(frozen=True)
class CostEstimate:
    requests_total: int
    requests_cached: int
    requests_to_send: int
    prompt_tokens: int
    completion_tokens: int
    usd: float | None  # None when the price of the model is unknown

    def describe(self, model: str) -> str:
        cost = (
            "unknown (no price for this model: pass --price-in/--price-out)"
            if self.usd is None
            else (f"about ${self.usd:.4f}")
        )
        return (
            f"{self.requests_to_send} requests to send to {model} ({self.requests_cached} of "
            f"{self.requests_total} already cached); about {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens; cost {cost}"
        )


def plan_requests(
    judge: Judge, samples: Sequence[Sample]
) -> tuple[list[JudgeRequest], list[JudgeRequest], int]:
    """(uncached requests buildable now, placeholder label requests whose inputs are not known yet, n cached).

    A label request can only be built once both emotion extractions of its sample are cached.
    """
    ready: dict[str, JudgeRequest] = {}
    pending_labels: list[JudgeRequest] = []
    cached: set[str] = set()
    for sample in samples:
        extractions = []
        for request in (
            clue_request(sample.reference, sample.generated),
            emotions_request(sample.reference),
            emotions_request(sample.generated),
        ):
            key = judge.key(request)
            record = judge.cache.get(key)
            if record is None:
                ready.setdefault(key, request)
            else:
                cached.add(key)
            if request.kind == "emotions":
                extractions.append(record)
        if all(extractions):
            request = label_request(
                extractions[0]["result"]["emotions"], extractions[1]["result"]["emotions"]
            )
            key = judge.key(request)
            if key in judge.cache:
                cached.add(key)
            else:
                ready.setdefault(key, request)
        else:
            pending_labels.append(label_request(["emotion"] * 3, ["emotion"] * 3))
    return list(ready.values()), pending_labels, len(cached)


def estimate_cost(
    judge: Judge,
    samples: Sequence[Sample],
    price_in: float | None = None,
    price_out: float | None = None,
    batch: bool = False,
) -> CostEstimate:
    """Tokens and USD for the uncached requests (label prompts of unknown extractions: 3 words each)."""
    ready, pending_labels, n_cached = plan_requests(judge, samples)
    to_send = ready + pending_labels
    prompt_tokens = sum(estimate_tokens(judge.body(r)) for r in to_send)
    completion_tokens = sum(EXPECTED_OUTPUT_TOKENS[r.kind] for r in to_send)
    table = PRICES_PER_M.get(judge.config.model)
    p_in = price_in if price_in is not None else (table[0] if table else None)
    p_out = price_out if price_out is not None else (table[1] if table else None)
    usd = None
    if p_in is not None and p_out is not None:
        usd = (prompt_tokens * p_in + completion_tokens * p_out) / 1e6 * (BATCH_DISCOUNT if batch else 1.0)
    return CostEstimate(
        len(to_send) + n_cached, n_cached, len(to_send), prompt_tokens, completion_tokens, usd
    )


# ---------------------------------------------------------------------------------------------------------
# Batch API
# ---------------------------------------------------------------------------------------------------------

BATCH_STATE = "batch.json"


def batch_request_lines(judge: Judge, requests: Sequence[JudgeRequest]) -> list[dict[str, Any]]:
    """Batch API input lines: ``custom_id`` (= cache key), ``method``, ``url``, ``body``."""
    return [
        {"custom_id": judge.key(r), "method": "POST", "url": "/v1/chat/completions", "body": judge.body(r)}
        for r in requests
    ]


def collect_batch_output(
    judge: Judge, kinds: Mapping[str, str], output_lines: Iterable[str]
) -> tuple[int, list[dict[str, Any]]]:
    """Validate Batch API output lines, cache the valid results by custom_id; return (n cached, failures)."""
    stored = 0
    failures: list[dict[str, Any]] = []
    for line in output_lines:
        if not line.strip():
            continue
        custom_id = None
        try:
            item = json.loads(line)
            custom_id = item.get("custom_id")
            if custom_id not in kinds:
                raise InvalidJudgement(f"custom_id {custom_id!r} was not in the submitted batch")
            kind = kinds[custom_id]
            if item.get("error"):
                raise InvalidJudgement(f"batch error: {json.dumps(item['error'])[:500]}")
            response = item.get("response") or {}
            if response.get("status_code") != 200:
                raise InvalidJudgement(f"HTTP {response.get('status_code')}: {json.dumps(response)[:500]}")
            body = response["body"]
            choice = body["choices"][0]
            if choice.get("finish_reason") not in (None, "stop"):
                raise InvalidJudgement(f"finish_reason {choice.get('finish_reason')!r}")
            content = choice["message"].get("content")
            if not content:
                raise InvalidJudgement("the reply had no content (refusal or empty message)")
            result = _check_parsed(kind, RESPONSE_MODELS[kind].model_validate_json(content))
        except (ValueError, KeyError, TypeError, IndexError, pydantic.ValidationError) as error:
            failures.append(
                {"custom_id": custom_id, "error": type(error).__name__, "message": str(error)[:2000]}
            )
            continue
        if custom_id in judge.cache:
            continue
        usage = body.get("usage") or None
        judge.cache.put(
            {
                "key": custom_id,
                "kind": kind,
                "prompt_version": PROMPT_VERSION,
                "model": judge.config.model,
                "response_model": body.get("model"),
                "system_fingerprint": body.get("system_fingerprint"),
                "usage": None
                if usage is None
                else {
                    "prompt_tokens": usage.get("prompt_tokens", 0),
                    "completion_tokens": usage.get("completion_tokens", 0),
                },
                "via": "batch",
                "result": result,
            }
        )
        stored += 1
    return stored, failures


def submit_batch(judge: Judge, requests: Sequence[JudgeRequest], output_dir: Path) -> str:
    """Write the request JSONL, upload it (purpose "batch"), create the batch, save its id; return the id."""
    lines = batch_request_lines(judge, requests)
    if len(lines) > 50_000:
        raise ValueError(f"{len(lines)} requests exceed the Batch API limit of 50,000; use --limit to split")
    path = output_dir / f"batch_requests_{int(time.time())}.jsonl"
    write_jsonl_atomic(lines, path)
    if path.stat().st_size > 200 * 1024 * 1024:
        raise ValueError(f"{path} exceeds the Batch API limit of 200 MB; use --limit to split")
    with path.open("rb") as f:
        uploaded = judge.client.files.create(file=f, purpose="batch")
    batch = judge.client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"prompt_version": PROMPT_VERSION},
    )
    write_json_atomic(
        {
            "batch_id": batch.id,
            "input_file_id": uploaded.id,
            "request_file": path.name,
            "model": judge.config.model,
            "endpoint": judge.config.endpoint,
            "prompt_version": PROMPT_VERSION,
            "kinds": {line["custom_id"]: r.kind for line, r in zip(lines, requests, strict=True)},
        },
        output_dir / BATCH_STATE,
    )
    return batch.id


def collect_batch(judge: Judge, output_dir: Path) -> tuple[str, int, list[dict[str, Any]]]:
    """Fetch the saved batch; once it has ended, cache its valid results. -> (status, n cached, failures)."""
    state_path = output_dir / BATCH_STATE
    if not state_path.exists():
        raise FileNotFoundError(f"{state_path} not found: submit a batch first with --batch-api")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state["prompt_version"] != PROMPT_VERSION or state["model"] != judge.config.model:
        raise ValueError(
            f"{state_path} was submitted with model {state['model']!r} and prompts "
            f"{state['prompt_version']!r}; "
            f"this run uses {judge.config.model!r} and {PROMPT_VERSION!r}"
        )
    batch = judge.client.batches.retrieve(state["batch_id"])
    if batch.status not in ("completed", "expired", "cancelled", "failed"):
        return batch.status, 0, []
    stored, failures = 0, []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            text = judge.client.files.content(file_id).text
            n, bad = collect_batch_output(judge, state["kinds"], text.splitlines())
            stored += n
            failures += bad
    os.replace(state_path, output_dir / f"batch_{state['batch_id']}.collected.json")
    return batch.status, stored, failures


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score emotion-reasoning predictions with a GPT judge (clue and label overlap, 1-10).",
    )
    parser.add_argument(
        "--predictions",
        required=True,
        type=Path,
        help="JSONL with fields id, generated, reference (one sample per line)",
    )
    parser.add_argument("--output", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"judge model (default {DEFAULT_MODEL}, the paper's judge)"
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"OpenAI-compatible base URL (default $OPENAI_BASE_URL or {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache JSONL (default OUTPUT/cache.jsonl); share it to reuse reference extractions",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--backoff-base", type=float, default=1.0, help="seconds; retry n waits ~base*2^n")
    parser.add_argument("--max-completion-tokens", type=int, default=1024)
    parser.add_argument("--price-in", type=float, default=None, help="USD per 1M prompt tokens")
    parser.add_argument("--price-out", type=float, default=None, help="USD per 1M completion tokens")
    parser.add_argument("--limit", type=int, default=None, help="judge only the first N valid samples")
    parser.add_argument("--bootstrap-resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (needed without a TTY)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the cost estimate and exit")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--batch-api",
        action="store_true",
        help="submit the uncached requests as one Batch API job (50%% cheaper, up to 24 h)",
    )
    mode.add_argument("--collect", action="store_true", help="collect the submitted Batch API job")
    return parser


def _fail(message: str) -> int:
    print(f"judge: error: {message}", file=sys.stderr)
    return 2


def _make_client(args: argparse.Namespace, endpoint: str, base_url: str) -> tuple[Any, str | None]:
    import openai

    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        if urllib.parse.urlsplit(endpoint).hostname == "api.openai.com":
            raise JudgeFatalError(
                "OPENAI_API_KEY is not set; export it (it is read only from the environment)"
            )
        key = None  # a local OpenAI-compatible server: send a dummy
    client = openai.OpenAI(api_key=key or "EMPTY", base_url=base_url, max_retries=0, timeout=args.timeout)
    return client, key


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.predictions.is_file():
        return _fail(f"--predictions {args.predictions} is not a file")
    if args.dry_run and args.collect:
        return _fail("--dry-run and --collect exclude each other (collecting sends no new requests)")
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be >= 1")
    if args.bootstrap_resamples < 1:
        return _fail("--bootstrap-resamples must be >= 1")
    for name in ("price_in", "price_out"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            return _fail(f"--{name.replace('_', '-')} must be >= 0")
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    try:
        endpoint = normalise_endpoint(base_url)
        config = JudgeConfig(
            model=args.model,
            endpoint=endpoint,
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            timeout=args.timeout,
            backoff_base=args.backoff_base,
            max_completion_tokens=args.max_completion_tokens,
        )
    except ValueError as error:
        return _fail(str(error))
    args.output.mkdir(parents=True, exist_ok=True)
    cache = JudgeCache(args.cache or args.output / "cache.jsonl")
    if cache.skipped_lines:
        print(
            f"judge: skipped {cache.skipped_lines} unreadable cache line(s) in {cache.path}", file=sys.stderr
        )

    samples, input_failures = read_predictions(args.predictions)
    if not samples:
        where = ""
        if input_failures:
            write_report(args.output, [], input_failures, config, Counter(), resamples=1)
            where = f" (bad lines are listed in {args.output / 'failures.jsonl'})"
        return _fail(
            f"no valid sample in {args.predictions}{where}; each line needs id, generated, reference"
        )
    if args.limit is not None:
        samples = samples[: args.limit]
    print(
        f"judge: {len(samples)} samples, {len(input_failures)} bad input line(s); model {args.model}; "
        f"prompts {PROMPT_VERSION}; endpoint {endpoint}"
    )

    planner = Judge(config, client=None, cache=cache)
    if args.collect:
        needs_requests = True
    else:
        estimate = estimate_cost(planner, samples, args.price_in, args.price_out, batch=args.batch_api)
        print(f"judge: estimate: {estimate.describe(args.model)}")
        if args.dry_run:
            return 0
        needs_requests = estimate.requests_to_send > 0
        if needs_requests and not args.yes:
            if not sys.stdin.isatty():
                return _fail("refusing to send requests without confirmation: stdin is not a TTY; pass --yes")
            if input("Proceed? [y/N] ").strip().lower() not in ("y", "yes"):
                print("judge: aborted; nothing was sent")
                return 1

    try:
        client, secret = _make_client(args, endpoint, base_url) if needs_requests else (None, None)
        judge = Judge(config, client=client, cache=cache, secret=secret)
        if args.collect:
            status, stored, failures = collect_batch(judge, args.output)
            print(f"judge: batch status {status}; {stored} result(s) cached, {len(failures)} failed")
            if failures:
                write_jsonl_atomic(failures, args.output / f"batch_failures_{int(time.time())}.jsonl")
            if status not in ("completed", "expired", "cancelled", "failed"):
                return 3
            ready, pending, _ = plan_requests(judge, samples)
            if ready or pending:
                print(
                    f"judge: {len(ready) + len(pending)} request(s) remain (label scoring needs the emotion "
                    "words first, failed ones are retried): run --batch-api again, or run without it to "
                    "finish online"
                )
                return 0
        elif args.batch_api:
            if (args.output / BATCH_STATE).exists():
                return _fail(f"a batch is pending in {args.output / BATCH_STATE}; run --collect first")
            ready, pending, _ = plan_requests(judge, samples)
            if ready:
                batch_id = submit_batch(judge, ready, args.output)
                print(
                    f"judge: submitted batch {batch_id} with {len(ready)} request(s); "
                    f"{len(pending)} label request(s) follow after --collect"
                )
                return 0

        def progress(done: int, total: int) -> None:
            if done == total or done % max(1, total // 20) == 0:
                print(f"judge: {done}/{total} samples", file=sys.stderr)

        results = run_judge(judge, samples, progress=progress)
    except JudgeFatalError as error:
        return _fail(str(error))
    except JudgeInterrupted as error:
        print(f"judge: {error}", file=sys.stderr)
        return 130
    summary = write_report(
        args.output,
        results,
        input_failures,
        config,
        judge.stats,
        resamples=args.bootstrap_resamples,
        seed=args.seed,
    )
    print(summary_markdown(summary))
    print(
        f"judge: wrote {args.output}/scores.jsonl, failures.jsonl, summary.json, summary.md; "
        f"{judge.stats['api_calls']} API call(s) this run"
    )
    return 0
