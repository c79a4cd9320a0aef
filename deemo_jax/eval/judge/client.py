"""Calling the judge: one request at a time with caching, de-duplication, retries and a stop switch."""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pydantic

from deemo_jax.eval.judge.cache import JudgeCache, request_body, request_cache_key
from deemo_jax.eval.judge.prompts import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    PROMPT_VERSION,
    RESPONSE_MODELS,
    InvalidJudgement,
    JudgeRequest,
    parse_reply,
    response_format_param,
)


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


def print_line(line: str) -> None:
    """One line to stderr in a single write, so lines from worker threads do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Judge:
    """Sends judge requests with caching, de-duplication, retries and a stop switch; thread-safe.

    ``stats`` counts, for this process: ``api_calls``, ``completed``, ``cache_hits``, ``error_<Name>`` per
    failed attempt, ``retries``, and the tokens of every billed attempt (``billed_prompt_tokens``,
    ``billed_completion_tokens``; a reply that came back with usage is billed even when it was invalid).
    ``notify`` gets one line per retry and per request given up (default: stderr).
    """

    def __init__(
        self,
        config: JudgeConfig,
        client: Any,
        cache: JudgeCache,
        secret: str | None = None,
        notify: Callable[[str], None] | None = print_line,
    ):
        self.config = config
        self.client = client
        self.cache = cache
        self._secret = secret
        self._notify = notify
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

    def count(self, **amounts: int) -> None:
        with self._lock:
            self.stats.update(amounts)

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

    def _say(self, line: str) -> None:
        if self._notify is not None:
            self._notify(self._redact(line))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.config.backoff_max)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2**attempt)
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _fatal(self, status: int, message: str) -> JudgeFatalError:
        hint = (
            "OPENAI_API_KEY is not set: set it in the environment (it is read from nowhere else), or check "
            "--model and --base-url"
            if self._secret is None and status == 401
            else "check OPENAI_API_KEY, --model and --base-url"
        )
        return JudgeFatalError(
            f"the judge endpoint {self.config.endpoint} answered HTTP {status} ({_one_line(self._redact(message))})"
            f"; {hint}"
        )

    def _send(self, request: JudgeRequest) -> dict[str, Any]:
        """One attempt: send, count the billed tokens, validate the reply; returns the cache record."""
        completion = self.client.chat.completions.create(
            model=self.config.model,
            messages=request.messages,
            response_format=response_format_param(RESPONSE_MODELS[request.kind]),
            temperature=0,
            max_completion_tokens=self.config.max_completion_tokens,
            timeout=self.config.timeout,
        )
        usage = _usage(getattr(completion, "usage", None))
        if usage is not None:  # billed whether or not the reply turns out to be valid
            self.count(
                billed_prompt_tokens=usage["prompt_tokens"], billed_completion_tokens=usage["completion_tokens"]
            )
        choices = getattr(completion, "choices", None) or []
        if not choices or getattr(choices[0], "message", None) is None:
            raise InvalidJudgement("the reply had no choices")
        choice = choices[0]
        if choice.finish_reason == "length":
            raise InvalidJudgement("the reply was cut off at --max-completion-tokens")
        if choice.finish_reason == "content_filter":
            raise InvalidJudgement("the reply was stopped by the provider's content filter")
        if getattr(choice.message, "refusal", None):
            raise InvalidJudgement(f"the judge refused: {choice.message.refusal}")
        return {
            "kind": request.kind,
            "prompt_version": PROMPT_VERSION,
            "model": self.config.model,
            "response_model": completion.model,
            "system_fingerprint": getattr(completion, "system_fingerprint", None),
            "usage": usage,
            "via": "online",
            "result": parse_reply(request.kind, choice.message.content),
        }

    def _request(self, request: JudgeRequest, key: str) -> dict[str, Any]:
        # Imported here, not at module level: `openai` costs ~1 s to import and the estimate, --dry-run and
        # cache-only reruns never need it.
        import openai

        last_error, last_message = "", ""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if self._stop.is_set():
                raise JudgeInterrupted("stopped before the request completed")
            delay = 0.0
            try:
                self.count(api_calls=1)
                record = {"key": key, **self._send(request)}
            except openai.APIStatusError as error:
                status = error.status_code
                last_error, last_message = type(error).__name__, f"HTTP {status}: {error.message}"
                if status in _FATAL_STATUS:
                    raise self._fatal(status, error.message) from None
                if status not in _RETRYABLE_STATUS and status < 500:
                    raise RequestFailure(
                        request.kind, last_error, self._redact(last_message), attempt + 1
                    ) from None
                delay = self._backoff(attempt, _retry_after(error))
                reason = f"HTTP {status}" + (" (rate limited)" if status == 429 else "")
            except openai.APITimeoutError as error:
                last_error, last_message = type(error).__name__, str(error)
                delay = self._backoff(attempt, None)
                reason = f"no answer within --timeout {self.config.timeout:g} s"
            except openai.APIConnectionError as error:
                last_error, last_message = type(error).__name__, str(error)
                delay = self._backoff(attempt, None)
                reason = f"connection error ({_one_line(error, 80)})"
            except (
                pydantic.ValidationError,
                InvalidJudgement,
                openai.OpenAIError,  # a malformed response body (APIResponseValidationError and the like)
            ) as error:
                last_error, last_message = type(error).__name__, str(error)
                reason = f"invalid reply ({_one_line(error, 100)})"
            else:
                self.cache.put(record)
                self.count(completed=1)
                return record
            self.count(**{f"error_{last_error}": 1})
            if attempt + 1 < attempts:
                self.count(retries=1)
                self._say(
                    f"judge: retrying {request.kind} request {key[:12]}: {reason}; attempt {attempt + 2} of "
                    f"{attempts} in {delay:.1f} s"
                )
                if self._stop.wait(delay):
                    raise JudgeInterrupted("stopped while waiting to retry")
        self._say(
            f"judge: giving up on {request.kind} request {key[:12]} after {attempts} attempt(s): {last_error}; "
            "it is recorded in failures.jsonl"
        )
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
    return {"prompt_tokens": int(usage.prompt_tokens or 0), "completion_tokens": int(usage.completion_tokens or 0)}
