"""GPT judge against a scripted local OpenAI-compatible server, through the real ``openai`` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pydantic
import pytest
from fake_openai import FakeOpenAI

from deemo_jax import exit_codes
from deemo_jax.eval import judge as J

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def fake(server):
    server.reset()
    server.delay = 0.0
    return server


def _samples() -> list[J.Sample]:
    return [
        J.Sample("s0", "He is happy and proud of the win.", "The athlete smiles; he is happy and proud."),
        J.Sample("s1", "RATE_LIMIT_ONCE He sounds sad.", "He speaks slowly and looks sad."),
        J.Sample("s2", "TIMEOUT_ONCE Angry tone, clenched fists.", "He is angry about the referee."),
        J.Sample("s3", "GARBAGE_ONCE Calm voice.", "The athlete smiles; he is happy and proud."),
        J.Sample("s4", "SCORE13_ONCE Proud words.", "He is proud of his team."),
        J.Sample("s5", "SCORE13_ALWAYS Sad and quiet.", "He is sad after the loss."),
        J.Sample("s6", "SERVER_ERROR_ONCE happy.", "He laughs, happy."),
    ]


def _judge(fake: FakeOpenAI, cache_path: Path, notify=None, **overrides) -> J.Judge:
    settings = dict(
        model="gpt-4o-mini-2024-07-18",
        endpoint=J.normalise_endpoint(fake.base_url),
        concurrency=4,
        max_retries=2,
        timeout=1.5,
        backoff_base=0.001,
        backoff_max=0.01,
    )
    settings.update(overrides)
    config = J.JudgeConfig(**settings)
    client = openai.OpenAI(api_key=SECRET, base_url=fake.base_url, max_retries=0, timeout=config.timeout)
    return J.Judge(config, client, J.JudgeCache(cache_path), secret=SECRET, notify=notify)


def _count_by_sample(bodies: list[dict], samples: list[J.Sample]) -> dict[str, int]:
    counts = Counter()
    for body in bodies:
        prompt = body["messages"][0]["content"]
        for s in samples:
            if s.generated in prompt:
                counts[s.id] += 1
    return dict(counts)


def test_scripted_faults_end_in_scores_or_failures_and_reruns_hit_the_cache(fake, tmp_path):
    fake.timeout_sleep = 1.8  # past the 1.5 s client timeout (generous: the test machine is loaded)
    samples = _samples()
    judge = _judge(fake, tmp_path / "cache.jsonl")
    results = J.run_judge(judge, samples)
    by_id = {r.sample.id: r for r in results}

    # Every sample and metric ends with a valid score or a recorded failure, never both and never neither.
    for r in results:
        failed = {f["metric"] for f in r.failures}
        assert (r.clue is not None) != ("clue_overlap" in failed), r.sample.id
        assert (r.label is not None) != ("label_overlap" in failed), r.sample.id
        for record in (r.clue, r.label):
            if record is not None:
                assert 1 <= record["result"]["score"] <= 10
    # Transient faults were retried to success; the persistent 13 failed after 1 + max_retries tries.
    assert all(by_id[i].clue is not None for i in ("s0", "s1", "s2", "s3", "s4", "s6"))
    assert by_id["s5"].clue is None and by_id["s5"].label is not None
    (failure,) = by_id["s5"].failures
    assert failure["stage"] == "clue" and failure["error"] == "InvalidJudgement" and failure["attempts"] == 3
    assert "13" in failure["message"]
    clue_calls = _count_by_sample(
        [b for b in fake.requests if "Score the predicted" in b["messages"][0]["content"]], samples
    )
    assert clue_calls == {"s0": 1, "s1": 2, "s2": 2, "s3": 2, "s4": 2, "s5": 3, "s6": 2}
    assert by_id["s0"].reference_emotions["result"]["emotions"] == ["happy", "proud"]  # normalised
    # s0 and s3 share the reference: its emotion extraction was requested once.
    shared = J.emotions_request(samples[0].reference).messages
    assert sum(b["messages"] == shared for b in fake.requests) == 1

    # What the SDK sent is exactly the documented body: every successful request's key is in the cache.
    endpoint = J.normalise_endpoint(fake.base_url)
    sent_keys = {J.request_cache_key(endpoint, b) for b in fake.requests}
    cache = J.JudgeCache(tmp_path / "cache.jsonl")
    # 28 requests - 1 (s0/s3 share the reference extraction) - 1 (s1 and s5 both ask label(sad | sad))
    # - 1 (the s5 clue failed)
    assert len(cache) == 25
    assert set(sent_keys) >= {r["key"] for r in cache._records.values()}
    assert fake.requests[0]["temperature"] == 0
    assert fake.requests[0]["response_format"] == J.response_format_param(
        J.RESPONSE_MODELS[
            {"ClueJudgement": "clue", "EmotionWords": "emotions", "LabelJudgement": "label"}[
                fake.requests[0]["response_format"]["json_schema"]["name"]
            ]
        ]
    )

    summary = J.write_report(tmp_path / "out", results, [], judge.config, judge.stats, resamples=500)
    first_rows = (tmp_path / "out" / "scores.jsonl").read_text()
    assert (
        summary["metrics"]["clue_overlap"]["n_scored"] == 6
        and summary["metrics"]["clue_overlap"]["n_failed"] == 1
    )
    assert summary["metrics"]["label_overlap"]["n_scored"] == 7 and summary["n_scored"] == 6
    assert summary["same_judge_model_as_paper"] is True
    # Each transient marker hits the clue and the prediction-extraction request of its sample once;
    # score 13 only applies to scored requests: s4 once, s5 on all 3 attempts.
    assert summary["requests"]["errors_this_run"] == {
        "RateLimitError": 2,
        "InternalServerError": 2,
        "APITimeoutError": 2,
        "ValidationError": 2,
        "InvalidJudgement": 4,
    }

    # Rerun: only the failed request is tried again (failures are not cached); scores are identical.
    fake.reset()
    rerun = J.run_judge(_judge(fake, tmp_path / "cache.jsonl"), samples)
    assert _count_by_sample(fake.requests, samples) == {"s5": 3}
    J.write_report(tmp_path / "out", rerun, [], judge.config, judge.stats, resamples=500)
    assert (tmp_path / "out" / "scores.jsonl").read_text() == first_rows

    # Without the always-failing sample a rerun makes zero requests.
    fake.reset()
    clean = [s for s in samples if s.id != "s5"]
    again = J.run_judge(_judge(fake, tmp_path / "cache.jsonl"), clean)
    assert fake.requests == []
    assert [r.clue["result"] for r in again] == [by_id[s.id].clue["result"] for s in clean]


def _write_predictions(path: Path, samples: list[J.Sample], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"id": s.id, "generated": s.generated, "reference": s.reference}) for s in samples]
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def _cli_args(fake: FakeOpenAI, predictions: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--predictions",
        str(predictions),
        "--output",
        str(out),
        "--base-url",
        fake.base_url,
        "--backoff-base",
        "0.001",
        "--timeout",
        "5",
        "--bootstrap-resamples",
        "200",
        *extra,
    ]


def test_cli_confirmation_dry_run_key_hygiene_and_report(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    samples = [
        J.Sample(f"c{i}", f"He is {word} number {i}.", f"Reference {i}: he is proud.")
        for i, word in enumerate(("happy", "sad", "angry"))
    ]
    bad = (
        '{"id": "c9", "generated": "x"}',
        "not json",
        json.dumps({"id": "c0", "generated": "a", "reference": "b"}),
    )
    predictions = _write_predictions(tmp_path / "pred.jsonl", samples, bad)
    out = tmp_path / "out"

    assert J.main(_cli_args(fake, predictions, out, "--dry-run")) == 0
    assert "12 requests to send" in capsys.readouterr().out and fake.requests == []
    # pytest's stdin is not a TTY: without --yes nothing is sent.
    assert J.main(_cli_args(fake, predictions, out)) == 2
    assert "pass --yes" in capsys.readouterr().err and fake.requests == []

    # 3 bad input lines: judged the good samples, exit 1 (some samples failed)
    assert J.main(_cli_args(fake, predictions, out, "--yes", "--concurrency", "2")) == exit_codes.SOME_FAILED
    assert len(fake.requests) == 12 and fake.authorizations == {f"Bearer {SECRET}"}
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scores] == ["c0", "c1", "c2"]
    assert {r["prompt_version"] for r in scores} == {J.PROMPT_VERSION}
    assert all(
        r["judge_model"] == "gpt-4o-mini-2024-07-18" and r["reference_emotions"] == ["proud"] for r in scores
    )
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["stage"], f["line"]) for f in failures] == [("input", 4), ("input", 5), ("input", 6)]
    assert "duplicate id 'c0'" in failures[2]["message"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 6 and summary["n_input_errors"] == 3 and summary["n_scored"] == 3
    clue = summary["metrics"]["clue_overlap"]
    assert clue["mean"] == pytest.approx(sum(r["clue_overlap"] for r in scores) / 3)
    assert clue["ci95_low"] <= clue["mean"] <= clue["ci95_high"]
    assert "Clue overlap" in (out / "summary.md").read_text()
    stdout_err = "".join(capsys.readouterr())

    # Rerun: zero requests, identical files.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "cache.jsonl"}
    fake.reset()
    # nothing to send: no confirmation needed; the bad lines still make it exit 1
    assert J.main(_cli_args(fake, predictions, out)) == exit_codes.SOME_FAILED
    assert fake.requests == []
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "cache.jsonl"}
    ledger = ("summary.json", "runs.jsonl")  # the summary and the ledger of runs grow by one run
    assert {k: v for k, v in after.items() if k not in ledger} == {
        k: v for k, v in before.items() if k not in ledger
    }
    stdout_err += "".join(capsys.readouterr())

    # The API key appears in no output file and in nothing printed.
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET not in stdout_err


def test_cli_fatal_errors_stop_early(fake, tmp_path, monkeypatch, capsys):
    predictions = _write_predictions(
        tmp_path / "pred.jsonl", [J.Sample(f"a{i}", f"AUTH_FAIL {i}", f"ref {i}") for i in range(20)]
    )
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert J.main(_cli_args(fake, predictions, tmp_path / "out", "--yes", "--concurrency", "2")) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "OPENAI_API_KEY" in err and SECRET not in err
    assert len(fake.requests) <= 4  # stopped at once, not 20 samples x retries
    # The real OpenAI endpoint without a key: refused before any connection is attempted.
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    args = [
        "--predictions",
        str(predictions),
        "--output",
        str(tmp_path / "o2"),
        "--yes",
        "--base-url",
        "https://api.openai.com/v1/",
    ]
    assert J.main(args) == 2 and "OPENAI_API_KEY is not set" in capsys.readouterr().err


def test_interrupted_run_resumes_without_repeating_completed_requests(fake, tmp_path):
    fake.delay = 0.03
    samples = [
        J.Sample(f"k{i}", f"Prediction {i}: he is sad.", f"Reference {i}: he is angry.") for i in range(6)
    ]
    predictions = _write_predictions(tmp_path / "pred.jsonl", samples)
    out = tmp_path / "out"
    cache_path = out / "cache.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "judge.py"),
            *_cli_args(fake, predictions, out, "--yes", "--concurrency", "1"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cache_path.exists() and cache_path.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be interrupted"
    done_keys = {json.loads(line)["key"] for line in cache_path.read_text().splitlines()}
    assert 5 <= len(done_keys) < 19
    with cache_path.open("a") as f:
        f.write('{"key": "torn')  # a line cut by the kill

    fake.reset()
    fake.delay = 0.0
    assert J.main(_cli_args(fake, predictions, out, "--yes")) == 0
    endpoint = J.normalise_endpoint(fake.base_url)
    resumed_keys = [J.request_cache_key(endpoint, b) for b in fake.requests]
    assert not set(resumed_keys) & done_keys
    # 6 samples x (clue, 2 extractions) + 1 label request shared by all (angry | sad) = 19 distinct requests.
    assert len(resumed_keys) == len(set(resumed_keys)) == 19 - len(done_keys)
    assert len(J.JudgeCache(cache_path)) == 19 and J.JudgeCache(cache_path).skipped_lines == 1
    assert len((out / "scores.jsonl").read_text().splitlines()) == 6


def test_batch_api_round_trip_matches_online_scores(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    samples = [
        J.Sample(f"b{i}", f"He is {word} {i}.", f"Ref {i}: he is sad.")
        for i, word in enumerate(("angry", "happy", "proud"))
    ]
    predictions = _write_predictions(tmp_path / "pred.jsonl", samples)
    out = tmp_path / "batch"

    assert J.main(_cli_args(fake, predictions, out, "--batch-api", "--yes")) == 0
    state = json.loads((out / "batch.json").read_text())
    lines = [json.loads(x) for x in (out / state["request_file"]).read_text().splitlines()]
    assert len(lines) == 9 and all(
        x["method"] == "POST" and x["url"] == "/v1/chat/completions" for x in lines
    )
    assert all(
        x["custom_id"] == J.request_cache_key(J.normalise_endpoint(fake.base_url), x["body"]) for x in lines
    )
    assert (
        J.main(_cli_args(fake, predictions, out, "--batch-api", "--yes")) == 2
    )  # one pending batch at a time
    assert J.main(_cli_args(fake, predictions, out, "--collect")) == exit_codes.PENDING  # still in progress
    assert J.main(_cli_args(fake, predictions, out, "--collect")) == 0
    assert "3 request(s) remain" in capsys.readouterr().out
    assert J.main(_cli_args(fake, predictions, out, "--batch-api", "--yes")) == 0  # the label stage
    assert J.main(_cli_args(fake, predictions, out, "--collect")) == exit_codes.PENDING
    assert J.main(_cli_args(fake, predictions, out, "--collect")) == 0  # all cached: writes the report
    assert fake.requests == []  # no online chat request at all
    batch_rows = (out / "scores.jsonl").read_text()
    assert len(batch_rows.splitlines()) == 3

    assert J.main(_cli_args(fake, predictions, tmp_path / "online", "--yes")) == 0
    assert len(fake.requests) == 12
    assert (tmp_path / "online" / "scores.jsonl").read_text() == batch_rows


def test_collect_batch_output_validates_each_line(tmp_path):
    judge = J.Judge(J.JudgeConfig(), client=None, cache=J.JudgeCache(tmp_path / "cache.jsonl"))
    good, bad_score, garbage, errored = (J.clue_request(f"r{i}", f"g{i}") for i in range(4))
    kinds = {judge.key(r): "clue" for r in (good, bad_score, garbage, errored)}

    def line(request, content=None, status=200, error=None):
        body = {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"finish_reason": "stop", "message": {"content": content}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }
        return json.dumps(
            {
                "custom_id": judge.key(request),
                "error": error,
                "response": {"status_code": status, "body": body},
            }
        )

    answer = {"reference_cues": "a", "predicted_cues": "b", "reason": "c", "score": 7}
    output = [
        line(good, json.dumps(answer)),
        line(bad_score, json.dumps({**answer, "score": 13})),
        line(garbage, "seven"),
        line(errored, None, status=500, error={"code": "server_error"}),
        json.dumps({"custom_id": "unknown", "response": {"status_code": 200, "body": {}}}),
    ]
    stored, failures = J.collect_batch_output(judge, kinds, output)
    assert stored == 1 and judge.cache.get(judge.key(good))["result"]["score"] == 7
    assert judge.cache.get(judge.key(good))["via"] == "batch"
    assert [f["custom_id"] for f in failures] == [
        judge.key(bad_score),
        judge.key(garbage),
        judge.key(errored),
        "unknown",
    ]
    assert "outside 1..10" in failures[0]["message"]


def test_cache_key_covers_request_identity_but_not_secrets():
    request = J.clue_request("reference", "generated")
    body = J.request_body(request, "gpt-4o-mini-2024-07-18", 1024)
    key = J.request_cache_key("https://api.openai.com/v1", body)
    assert key == J.request_cache_key(J.normalise_endpoint("https://user:pw@API.openai.com/v1/"), body)
    assert key == J.request_cache_key("https://api.openai.com/v1", {**body, "stream": False})
    different = [
        J.request_cache_key("http://127.0.0.1:8000/v1", body),
        J.request_cache_key("https://api.openai.com/v1", {**body, "model": "gpt-4o-mini"}),
        J.request_cache_key(
            "https://api.openai.com/v1",
            J.request_body(J.clue_request("reference", "other"), "gpt-4o-mini-2024-07-18", 1024),
        ),
        J.request_cache_key(
            "https://api.openai.com/v1",
            J.request_body(J.emotions_request("reference"), "gpt-4o-mini-2024-07-18", 1024),
        ),
    ]
    assert len({key, *different}) == 5
    with pytest.raises(ValueError, match="must look like"):
        J.normalise_endpoint("api.openai.com/v1")


def test_cost_estimate_counts_uncached_requests_and_prices(tmp_path):
    cache = J.JudgeCache(tmp_path / "cache.jsonl")
    judge = J.Judge(J.JudgeConfig(model="gpt-4o-mini-2024-07-18"), client=None, cache=cache)
    samples = [J.Sample("a", "x" * 400, "y" * 400), J.Sample("b", "z" * 400, "y" * 400)]
    estimate = J.estimate_cost(judge, samples)
    # clue x2, emotions: shared reference + 2 predictions, label x2 (placeholders) = 7
    assert (estimate.requests_total, estimate.requests_cached, estimate.requests_to_send) == (7, 0, 7)
    bodies = [judge.body(r) for r in J.plan_requests(judge, samples)[0]]
    chars = sum(len(b["messages"][0]["content"]) + len(json.dumps(b["response_format"])) for b in bodies)
    assert (
        J.estimate_tokens(bodies[0])
        == -(-(len(bodies[0]["messages"][0]["content"]) + len(json.dumps(bodies[0]["response_format"]))) // 4)
        + 4
    )
    assert estimate.prompt_tokens > chars // 4
    assert estimate.completion_tokens == 2 * 250 + 3 * 25 + 2 * 80
    expected = (estimate.prompt_tokens * 0.15 + estimate.completion_tokens * 0.60) / 1e6
    assert estimate.usd == pytest.approx(expected)
    assert J.estimate_cost(judge, samples, batch=True).usd == pytest.approx(expected / 2)
    assert J.estimate_cost(judge, samples, price_in=1.0, price_out=0.0).usd == pytest.approx(
        estimate.prompt_tokens / 1e6
    )
    unknown = J.Judge(J.JudgeConfig(model="my-local-model"), client=None, cache=cache)
    assert J.estimate_cost(unknown, samples).usd is None

    # A cached extraction makes the label request concrete and the cached ones free.
    ref = J.emotions_request("y" * 400)
    cache.put({"key": judge.key(ref), "kind": "emotions", "result": {"emotions": ["sad"]}})
    assert J.estimate_cost(judge, samples).requests_cached == 1


def test_bootstrap_interval_is_seeded_and_sane():
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    low, high = J.bootstrap_ci(values, resamples=2000, seed=3)
    assert (low, high) == J.bootstrap_ci(values, resamples=2000, seed=3)
    assert low < 5.5 < high and 3.5 < low and high < 7.5
    assert J.bootstrap_ci([4, 4, 4], resamples=100) == (4.0, 4.0)
    assert J.bootstrap_ci([]) is None


def test_cache_rejects_invalid_stored_results(tmp_path):
    path = tmp_path / "cache.jsonl"
    valid = {"key": "a", "kind": "label", "result": {"reason": "r", "score": 9}}
    out_of_range = {"key": "b", "kind": "label", "result": {"reason": "r", "score": 11}}
    path.write_text("\n".join(json.dumps(x) for x in (valid, out_of_range)) + "\n" + "{broken\n")
    cache = J.JudgeCache(path)
    assert "a" in cache and "b" not in cache and cache.skipped_lines == 2


def test_a_reply_that_is_one_fenced_json_block_is_accepted_and_nothing_else(fake, tmp_path):
    answer = {"reason": "r", "score": 7}
    text = json.dumps(answer)
    assert J.parse_reply("label", f"```json\n{text}\n```") == answer
    assert J.parse_reply("label", f"  ```\n{text}\n```\n") == answer
    not_one_block = (
        f"Here it is:\n```json\n{text}\n```",
        f"```json\n{text}\n```\nHope this helps.",
        f"```json\n{text}\n```\n```json\n{text}\n```",
        f"```json {text}```",
    )
    for reply in not_one_block:
        with pytest.raises(pydantic.ValidationError):
            J.parse_reply("label", reply)
    with pytest.raises(J.InvalidJudgement, match="outside 1..10"):  # still validated by the schema and range
        J.parse_reply("label", '```json\n{"reason": "r", "score": 13}\n```')

    # Through the real client: the fenced sample is scored with one request each, the prose-wrapped one fails.
    samples = [J.Sample("f0", "FENCED he is happy.", "He is happy."), J.Sample("f1", "FENCED_PROSE sad.", "Sad.")]
    lines: list[str] = []
    # A long timeout: under load a 1.5 s one expires on the fake server and the retry line names f0.
    judge = _judge(fake, tmp_path / "cache.jsonl", notify=lines.append, timeout=30.0)
    fenced, prose = J.run_judge(judge, samples)
    assert fenced.failures == [] and fenced.clue["result"]["score"] in range(1, 11)
    assert fenced.predicted_emotions["result"]["emotions"] == ["happy"]
    # f0: its clue and its prediction extraction (the prompts that hold its text) once each: no retry
    assert _count_by_sample(fake.requests, samples) == {"f0": 2, "f1": 6}
    assert {(f["stage"], f["error"], f["attempts"]) for f in prose.failures} == {
        ("clue", "ValidationError", 3),
        ("emotions_prediction", "ValidationError", 3),
    }
    assert not any("f0" in line or "FENCED he" in line for line in lines)


def test_billed_tokens_include_invalid_replies_and_each_retry_is_announced(fake, tmp_path):
    samples = [
        J.Sample("g0", "GARBAGE_ALWAYS he is calm.", "He is calm."),
        J.Sample("g1", "RATE_LIMIT_ONCE he is sad.", "He is sad."),
    ]
    lines: list[str] = []
    judge = _judge(fake, tmp_path / "cache.jsonl", notify=lines.append)
    results = J.run_judge(judge, samples)
    assert [bool(r.failures) for r in results] == [True, False]

    # Billed: every reply that came back (with usage), valid or not; the 429 answers carried no usage.
    seen: Counter[str] = Counter()
    billed = []
    for body in fake.requests:
        prompt = body["messages"][0]["content"]
        seen[prompt] += 1
        if not ("RATE_LIMIT_ONCE" in prompt and seen[prompt] == 1):
            billed.append(len(prompt) // 4)
    assert judge.stats["api_calls"] == len(fake.requests) == len(billed) + 2
    assert judge.stats["billed_prompt_tokens"] == sum(billed)
    assert judge.stats["billed_completion_tokens"] == 20 * len(billed)
    cached = [r["usage"]["prompt_tokens"] for r in J.JudgeCache(tmp_path / "cache.jsonl")._records.values()]
    assert sum(cached) < sum(billed)  # the results alone undercount what was billed
    summary = J.write_report(
        tmp_path / "out", results, [], judge.config, judge.stats, resamples=10, prices=(1.0, 2.0)
    )
    tokens = summary["requests"]["tokens_billed_this_run"]
    assert tokens == {"prompt": sum(billed), "completion": 20 * len(billed)}
    assert summary["requests"]["usd_billed_this_run"] == pytest.approx((sum(billed) + 40 * len(billed)) / 1e6)

    # One line per retry (why, attempt n of m, the wait) and one per request given up.
    retries = [line for line in lines if line.startswith("judge: retrying")]
    assert judge.stats["retries"] == len(retries) == 2 * 2 + 2  # g0: clue, extraction x2 retries; g1: 2 x 429
    assert sum("HTTP 429 (rate limited); attempt 2 of 3 in 0.0 s" in line for line in retries) == 2
    assert sum("invalid reply" in line and "attempt 3 of 3" in line for line in retries) == 2
    assert sum(line.startswith("judge: giving up") for line in lines) == 2
    assert all("\n" not in line for line in lines)


def test_estimate_states_that_retries_add_to_the_cost(tmp_path):
    cache = J.JudgeCache(tmp_path / "cache.jsonl")
    judge = J.Judge(J.JudgeConfig(max_retries=5), client=None, cache=cache)
    estimate = J.estimate_cost(judge, [J.Sample("a", "x" * 400, "y" * 400)])
    assert estimate.max_retries == 5 and estimate.usd_max == pytest.approx(6 * estimate.usd)
    text = estimate.describe("gpt-4o-mini-2024-07-18")
    assert "without retries" in text and f"at most ${estimate.usd_max:.4f}" in text and "all 5 retries" in text
    unpriced = J.estimate_cost(J.Judge(J.JudgeConfig(model="local"), None, cache), [J.Sample("a", "x", "y")])
    assert "6x the tokens" in unpriced.describe("local")


def test_progress_lines_show_rate_and_eta():
    lines: list[str] = []
    now = [0.0]
    progress = J.Progress(write=lines.append, clock=lambda: now[0])
    for done in range(1, 101):
        now[0] = done * 0.5
        progress(done, 100)
    assert len(lines) == 21  # the first sample, then every 5%
    assert lines[1] == "judge: 5/100 samples (5%), 2.00 samples/s, elapsed 0:00:02, ETA 0:00:48"
    assert lines[-1].startswith("judge: 100/100 samples (100%)") and lines[-1].endswith("ETA 0:00:00")
    slow: list[str] = []  # a slow run still says something every `interval` seconds
    progress = J.Progress(write=slow.append, clock=lambda: now[0], interval=30.0)
    for done in range(1, 5):
        now[0] += 31.0
        progress(done, 1000)
    assert len(slow) == 4 and "ETA" in slow[-1]


def test_python_dash_m_runs_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deemo_jax.eval.judge", "--predictions", str(tmp_path / "no.jsonl"), "--output",
         str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert proc.returncode == exit_codes.USAGE
    assert proc.stderr.strip() == f"judge: error: --predictions {tmp_path / 'no.jsonl'} is not a file; check the path"
