"""A scripted local OpenAI-compatible server for the judge tests, spoken to through the real ``openai`` client.

Shared by tests/eval/test_judge.py and tests/bad_inputs/test_judge.py.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _content_for(schema: str, prompt: str) -> dict:
    """Deterministic answers: scores from a hash of the prompt, emotions from words in the description."""
    digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if schema == "EmotionWords":
        description = prompt.rsplit("Description: <<<", 1)[1]
        found = [w for w in ("Happy", "sad", "proud", "angry") if w.lower() in description.lower()]
        return {"emotions": found or ["calm"]}
    if schema == "LabelJudgement":
        return {"reason": "overlap", "score": 1 + digest % 10}
    return {
        "reference_cues": "cues A",
        "predicted_cues": "cues B",
        "reason": "because",
        "score": 1 + digest % 10,
    }


class FakeOpenAI:
    """ThreadingHTTPServer on 127.0.0.1 speaking enough of the OpenAI API: chat completions, files, batches.

    Markers in a prompt script the behaviour: RATE_LIMIT_ONCE (429 then OK), SERVER_ERROR_ONCE (503 then OK),
    TIMEOUT_ONCE (sleep past the client timeout, then OK), GARBAGE_ONCE / GARBAGE_ALWAYS (non-JSON text),
    SCORE13_ONCE / SCORE13_ALWAYS (score 13 for scored kinds), AUTH_FAIL (401 for everything),
    FENCED (the JSON wrapped in a ```json fence, as servers that ignore ``response_format`` do),
    FENCED_PROSE (a sentence, then the fenced JSON: not a bare fenced block).
    Every 200 reply carries ``usage`` (billed), valid or not. ``required_key``: answer 401 to any other key.
    """

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.required_key: str | None = None
        self.timeout_sleep = 1.0
        self.lock = threading.Lock()
        self.requests: list[dict] = []  # chat bodies received
        self.authorizations: set[str] = set()
        self.seen: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls: Counter[str] = Counter()
        self.rejected = 0  # requests answered 401 because of required_key
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None):
                data = raw if raw is not None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                parts = self.path.split("/")
                if self.path.startswith("/v1/batches/"):
                    batch = fake.batches[parts[3]]
                    with fake.lock:
                        fake.batch_polls[parts[3]] += 1
                        done = fake.batch_polls[parts[3]] > 1
                    self._send(200, {**batch, "status": "completed" if done else "in_progress"})
                elif self.path.startswith("/v1/files/") and self.path.endswith("/content"):
                    self._send(200, None, raw=fake.files[parts[3]])
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.authorizations.add(self.headers.get("Authorization", ""))
                expected = f"Bearer {fake.required_key}"
                if fake.required_key is not None and self.headers.get("Authorization") != expected:
                    fake.rejected += 1
                    error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
                    self._send(401, {"error": error})
                    return
                if self.path == "/v1/files":
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                    )
                    content = next(
                        p.get_payload(decode=True)
                        for p in message.iter_parts()
                        if p.get_filename() is not None
                    )
                    file_id = f"file-{len(fake.files)}"
                    fake.files[file_id] = content
                    self._send(
                        200,
                        {
                            "id": file_id,
                            "object": "file",
                            "bytes": len(content),
                            "created_at": 0,
                            "filename": "requests.jsonl",
                            "purpose": "batch",
                            "status": "processed",
                        },
                    )
                elif self.path == "/v1/batches":
                    self._send(200, fake.create_batch(json.loads(body)))
                elif self.path == "/v1/chat/completions":
                    status, payload, headers = fake.answer(json.loads(body))
                    self._send(status, payload, headers)
                else:
                    self._send(404, {"error": {"message": "not found"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()
            self.authorizations.clear()
            self.rejected = 0
        self.required_key = None

    def answer(self, body: dict, record: bool = True) -> tuple[int, dict, dict]:
        prompt = body["messages"][0]["content"]
        schema = body["response_format"]["json_schema"]["name"]
        with self.lock:
            if record:
                self.requests.append(body)
            marker_key = json.dumps(body["messages"])
            self.seen[marker_key] += 1
            nth = self.seen[marker_key]
        if self.delay:
            time.sleep(self.delay)
        if "AUTH_FAIL" in prompt:
            return (
                401,
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                {},
            )
        if "RATE_LIMIT_ONCE" in prompt and nth == 1:
            return 429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {"Retry-After": "0"}
        if "SERVER_ERROR_ONCE" in prompt and nth == 1:
            return 503, {"error": {"message": "overloaded", "type": "server_error"}}, {}
        if "TIMEOUT_ONCE" in prompt and nth == 1:
            time.sleep(self.timeout_sleep)
        content = json.dumps(_content_for(schema, prompt))
        if ("GARBAGE_ONCE" in prompt and nth == 1) or "GARBAGE_ALWAYS" in prompt:
            content = "I think the score is about eight or so."
        scored = schema in ("ClueJudgement", "LabelJudgement")
        if scored and ("SCORE13_ALWAYS" in prompt or ("SCORE13_ONCE" in prompt and nth == 1)):
            content = json.dumps({**json.loads(content), "score": 13})
        if "FENCED_PROSE" in prompt:
            content = f"Here is my judgement:\n```json\n{content}\n```"
        elif "FENCED" in prompt:
            content = f"```json\n{content}\n```"
        completion = {
            "id": f"chatcmpl-{nth}",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": 20, "total_tokens": 0},
        }
        return 200, completion, {}

    def create_batch(self, params: dict) -> dict:
        batch_id = f"batch_{len(self.batches)}"
        lines = []
        for i, raw in enumerate(self.files[params["input_file_id"]].decode().splitlines()):
            item = json.loads(raw)
            status, payload, _ = self.answer(item["body"], record=False)
            lines.append(
                json.dumps(
                    {
                        "id": f"req_{i}",
                        "custom_id": item["custom_id"],
                        "error": None,
                        "response": {"status_code": status, "request_id": "r", "body": payload},
                    }
                )
            )
        output_id = f"file-out-{batch_id}"
        self.files[output_id] = ("\n".join(lines) + "\n").encode()
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": params["endpoint"],
            "errors": None,
            "input_file_id": params["input_file_id"],
            "completion_window": params["completion_window"],
            "status": "validating",
            "output_file_id": output_id,
            "error_file_id": None,
            "created_at": 0,
        }
        self.batches[batch_id] = batch
        return batch

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
