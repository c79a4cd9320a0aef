"""The Batch API: submit uncached requests as one job (50% cheaper, up to 24 h), collect and cache the results."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pydantic

from deemo_jax.eval.judge.client import Judge
from deemo_jax.eval.judge.prompts import PROMPT_VERSION, InvalidJudgement, JudgeRequest, parse_reply
from deemo_jax.eval.judge.summary import write_jsonl_atomic
from deemo_jax.files import write_json_atomic

BATCH_STATE = "batch.json"
BATCH_ENDED = ("completed", "expired", "cancelled", "failed")
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200 * 1024 * 1024


class BatchError(ValueError):
    """A batch that cannot be submitted or collected (too large, no saved batch, another model's batch)."""


def batch_request_lines(judge: Judge, requests: Sequence[JudgeRequest]) -> list[dict[str, Any]]:
    """Batch API input lines: ``custom_id`` (= cache key), ``method``, ``url``, ``body``."""
    return [
        {"custom_id": judge.key(r), "method": "POST", "url": "/v1/chat/completions", "body": judge.body(r)}
        for r in requests
    ]


def _count_batch_usage(judge: Judge, body: Any) -> dict[str, int] | None:
    """Count the tokens of a batch reply (billed, at the batch price, whether or not the reply is valid)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    tokens = {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }
    judge.count(
        batch_billed_prompt_tokens=tokens["prompt_tokens"],
        batch_billed_completion_tokens=tokens["completion_tokens"],
    )
    return tokens


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
            usage = _count_batch_usage(judge, body)
            choice = body["choices"][0]
            if choice.get("finish_reason") not in (None, "stop"):
                raise InvalidJudgement(f"finish_reason {choice.get('finish_reason')!r}")
            result = parse_reply(kind, choice["message"].get("content"))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, pydantic.ValidationError) as error:
            failures.append(
                {"custom_id": custom_id, "error": type(error).__name__, "message": str(error)[:2000]}
            )
            continue
        if custom_id in judge.cache:
            continue
        judge.cache.put(
            {
                "key": custom_id,
                "kind": kind,
                "prompt_version": PROMPT_VERSION,
                "model": judge.config.model,
                "response_model": body.get("model"),
                "system_fingerprint": body.get("system_fingerprint"),
                "usage": usage,
                "via": "batch",
                "result": result,
            }
        )
        stored += 1
    return stored, failures


def submit_batch(judge: Judge, requests: Sequence[JudgeRequest], output_dir: Path) -> str:
    """Write the request JSONL, upload it (purpose "batch"), create the batch, save its id; return the id."""
    lines = batch_request_lines(judge, requests)
    if len(lines) > MAX_BATCH_REQUESTS:
        raise BatchError(
            f"{len(lines)} requests exceed the Batch API limit of {MAX_BATCH_REQUESTS}; use --limit to split"
        )
    path = output_dir / f"batch_requests_{int(time.time())}.jsonl"
    write_jsonl_atomic(path, lines)
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise BatchError(f"{path} exceeds the Batch API limit of 200 MB; use --limit to split")
    with path.open("rb") as f:
        uploaded = judge.client.files.create(file=f, purpose="batch")
    batch = judge.client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"prompt_version": PROMPT_VERSION},
    )
    write_json_atomic(
        output_dir / BATCH_STATE,
        {
            "batch_id": batch.id,
            "input_file_id": uploaded.id,
            "request_file": path.name,
            "model": judge.config.model,
            "endpoint": judge.config.endpoint,
            "prompt_version": PROMPT_VERSION,
            "kinds": {line["custom_id"]: r.kind for line, r in zip(lines, requests, strict=True)},
        },
    )
    return batch.id


def collect_batch(judge: Judge, output_dir: Path) -> tuple[str, int, list[dict[str, Any]]]:
    """Fetch the saved batch; once it has ended, cache its valid results. -> (status, n cached, failures)."""
    state_path = output_dir / BATCH_STATE
    if not state_path.exists():
        raise BatchError(f"{state_path} not found: no batch to collect; run with --batch-api first to submit one")
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state["prompt_version"] != PROMPT_VERSION or state["model"] != judge.config.model:
        raise BatchError(
            f"{state_path} was submitted with model {state['model']!r} and prompts "
            f"{state['prompt_version']!r}; this run uses {judge.config.model!r} and {PROMPT_VERSION!r}: "
            "pass the same --model"
        )
    batch = judge.client.batches.retrieve(state["batch_id"])
    if batch.status not in BATCH_ENDED:
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
