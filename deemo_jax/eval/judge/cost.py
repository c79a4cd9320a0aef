"""Prices, the pre-run cost estimate, and the measured cost of billed tokens."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deemo_jax.eval.judge.client import Judge
from deemo_jax.eval.judge.pipeline import Sample
from deemo_jax.eval.judge.prompts import JudgeRequest, clue_request, emotions_request, label_request

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
CHARS_PER_TOKEN = 4.0  # rough average for English text with GPT-4o's tokenizer; see estimate_tokens
# Assumed completion lengths (tokens) per request kind, for the cost estimate only.
EXPECTED_OUTPUT_TOKENS = {"clue": 250, "emotions": 25, "label": 80}


def resolve_prices(
    model: str, price_in: float | None = None, price_out: float | None = None
) -> tuple[float | None, float | None]:
    """USD per 1M (prompt, completion) tokens: the overrides, else the table, else ``None``."""
    table = PRICES_PER_M.get(model)
    return (
        price_in if price_in is not None else (table[0] if table else None),
        price_out if price_out is not None else (table[1] if table else None),
    )


def billed_usd(stats: Mapping[str, int], prices: tuple[float | None, float | None]) -> float | None:
    """USD of the tokens billed in ``stats`` (online at full price, Batch API at half); ``None`` if unpriced."""
    p_in, p_out = prices
    if p_in is None or p_out is None:
        return None
    online = stats.get("billed_prompt_tokens", 0) * p_in + stats.get("billed_completion_tokens", 0) * p_out
    batch = stats.get("batch_billed_prompt_tokens", 0) * p_in + stats.get("batch_billed_completion_tokens", 0) * p_out
    return (online + batch * BATCH_DISCOUNT) / 1e6


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
    usd: float | None  # None when the price of the model is unknown; one attempt per request
    max_retries: int = 0
    usd_max: float | None = None  # every request billed 1 + max_retries times (all replies invalid)

    def describe(self, model: str) -> str:
        cost = (
            "unknown (no price for this model: pass --price-in/--price-out)"
            if self.usd is None
            else f"about ${self.usd:.4f}"
        )
        text = (
            f"{self.requests_to_send} requests to send to {model} ({self.requests_cached} of "
            f"{self.requests_total} already cached); about {self.prompt_tokens} prompt + "
            f"{self.completion_tokens} completion tokens; cost {cost} without retries"
        )
        if self.max_retries and self.requests_to_send:
            bound = f"${self.usd_max:.4f}" if self.usd_max is not None else f"{1 + self.max_retries}x the tokens"
            text += (
                f"; retries add to it (an invalid reply is billed, then asked again): at most {bound} if every "
                f"request used all {self.max_retries} retries"
            )
        return text


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
    """Tokens and USD for the uncached requests (label prompts of unknown extractions: 3 words each).

    ``usd`` assumes one attempt per request; ``usd_max`` every request billed ``1 + max_retries`` times.
    """
    ready, pending_labels, n_cached = plan_requests(judge, samples)
    to_send = ready + pending_labels
    prompt_tokens = sum(estimate_tokens(judge.body(r)) for r in to_send)
    completion_tokens = sum(EXPECTED_OUTPUT_TOKENS[r.kind] for r in to_send)
    key = "batch_billed" if batch else "billed"
    usd = billed_usd(
        {f"{key}_prompt_tokens": prompt_tokens, f"{key}_completion_tokens": completion_tokens},
        resolve_prices(judge.config.model, price_in, price_out),
    )
    max_retries = judge.config.max_retries
    return CostEstimate(
        len(to_send) + n_cached,
        n_cached,
        len(to_send),
        prompt_tokens,
        completion_tokens,
        usd,
        max_retries=max_retries,
        usd_max=None if usd is None else usd * (1 + max_retries),
    )
