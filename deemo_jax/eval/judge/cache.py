"""Request bodies, cache keys and the on-disk cache of validated judge results."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic

from deemo_jax.eval.judge.prompts import (
    PROMPT_VERSION,
    RESPONSE_MODELS,
    InvalidJudgement,
    JudgeRequest,
    response_format_param,
    validate_result,
)

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
                        validate_result(kind, record["result"])
                    except (ValueError, KeyError, TypeError, InvalidJudgement, pydantic.ValidationError):
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
