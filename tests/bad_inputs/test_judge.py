"""Bad inputs of the GPT judge (``deemo_jax.eval.judge``), against a scripted local OpenAI-compatible server
spoken to through the real ``openai`` client: exit code, one-line message, good items processed, counts add up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval.fake_openai import FakeOpenAI

from bad_inputs.helpers import assert_one_line_error, run_main
from deemo_jax import exit_codes
from deemo_jax.eval import judge as J

SECRET = "sk-bad-inputs-DO-NOT-LEAK-51c2"


@pytest.fixture(scope="module")
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture
def fake(server, monkeypatch):
    server.reset()
    server.delay = 0.0
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return server


def _predictions(path: Path, rows: list[tuple[str, str, str]], extra: tuple[bytes, ...] = ()) -> Path:
    lines = [json.dumps({"id": i, "generated": g, "reference": r}).encode() for i, g, r in rows]
    path.write_bytes(b"\n".join([*lines, *extra]) + b"\n")
    return path


def _argv(fake: FakeOpenAI, predictions: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--predictions", str(predictions), "--output", str(out), "--base-url", fake.base_url,
        "--backoff-base", "0.001", "--timeout", "5", "--max-retries", "2", "--bootstrap-resamples", "50",
        "--concurrency", "2", "--yes", *extra,
    ]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _reconciles(out: Path, n_samples: int) -> dict:
    """summary.json, scores.jsonl and failures.jsonl agree with each other and with the input."""
    summary = json.loads((out / "summary.json").read_text())
    scores, failures = _jsonl(out / "scores.jsonl"), _jsonl(out / "failures.jsonl")
    assert summary["n_samples"] == n_samples
    assert summary["n_scored"] + summary["n_failed"] == n_samples
    failed_ids = {f["id"] for f in failures if f["stage"] != "input"}
    assert summary["n_failed"] == summary["n_input_errors"] + len(failed_ids)
    full = [r for r in scores if r["clue_overlap"] is not None and r["label_overlap"] is not None]
    assert len(full) == summary["n_scored"]
    for name in ("clue_overlap", "label_overlap"):
        assert summary["metrics"][name]["n_scored"] == sum(r[name] is not None for r in scores)
    assert summary["totals"]["runs"] == len(summary["runs"])
    return summary


GOOD = [("a", "He is happy and proud.", "He smiles, happy."), ("b", "He sounds sad.", "He is sad.")]


def test_fenced_json_reply_is_accepted_without_retries(fake, tmp_path, capsys):
    rows = [*GOOD, ("c", "FENCED he is angry.", "FENCED reference: angry.")]
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", rows), tmp_path / "out"), capsys)
    assert result.code == exit_codes.OK, result.err
    assert "retrying" not in result.err and "error" not in result.err
    summary = _reconciles(tmp_path / "out", 3)
    assert summary["n_scored"] == 3 and summary["totals"]["retries"] == 0
    assert summary["totals"]["api_calls"] == len(fake.requests)  # one request each, fenced ones included
    scores = {r["id"]: r for r in _jsonl(tmp_path / "out" / "scores.jsonl")}
    assert scores["c"]["predicted_emotions"] == ["angry"]


def test_garbage_reply_is_a_recorded_failure_and_the_rest_is_judged(fake, tmp_path, capsys):
    out = tmp_path / "out"
    rows = [*GOOD, ("g", "GARBAGE_ALWAYS he is calm.", "He is calm.")]
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", rows), out), capsys)
    assert_one_line_error(result, "1 of 3 samples failed", str(out / "failures.jsonl"), code=exit_codes.SOME_FAILED)
    summary = _reconciles(out, 3)
    assert summary["n_scored"] == 2 and [r["id"] for r in _jsonl(out / "scores.jsonl")] == ["a", "b"]
    failures = _jsonl(out / "failures.jsonl")
    assert {(f["id"], f["stage"], f["error"], f["attempts"]) for f in failures} == {
        ("g", "clue", "ValidationError", 3),
        ("g", "emotions_prediction", "ValidationError", 3),
    }
    # The invalid replies were billed: counted in this run's tokens, beyond what the cached results used.
    requests = summary["requests"]
    assert requests["tokens_billed_this_run"]["prompt"] > requests["tokens_all_results"]["prompt"]


def test_rate_limit_then_success_says_it_retries(fake, tmp_path, capsys):
    out = tmp_path / "out"
    rows = [*GOOD, ("r", "RATE_LIMIT_ONCE he is sad.", "He is sad.")]
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", rows), out), capsys)
    assert result.code == exit_codes.OK, result.err
    retries = [line for line in result.err.splitlines() if line.startswith("judge: retrying")]
    assert len(retries) == 2 and all("HTTP 429" in x and "attempt 2 of 3" in x and " s" in x for x in retries)
    summary = _reconciles(out, 3)
    assert summary["n_scored"] == 3 and summary["totals"]["errors"] == {"RateLimitError": 2}
    assert summary["totals"]["retries"] == 2


def test_score_out_of_range_is_rejected(fake, tmp_path, capsys):
    out = tmp_path / "out"
    rows = [*GOOD, ("s", "SCORE13_ALWAYS he is proud.", "He is proud.")]
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", rows), out), capsys)
    assert_one_line_error(result, "1 of 3 samples failed", "failures.jsonl", code=exit_codes.SOME_FAILED)
    summary = _reconciles(out, 3)
    (failure,) = _jsonl(out / "failures.jsonl")
    assert failure["id"] == "s" and failure["stage"] == "clue" and "score 13 is outside 1..10" in failure["message"]
    assert summary["metrics"]["clue_overlap"]["n_scored"] == 2 and summary["metrics"]["label_overlap"]["n_scored"] == 3
    assert all(r["clue_overlap"] in range(1, 11) for r in _jsonl(out / "scores.jsonl") if r["clue_overlap"])


def test_missing_predictions_file(fake, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "predictions.jsonl"
    result = run_main(J.main, _argv(fake, missing, tmp_path / "out"), capsys)
    assert_one_line_error(result, "--predictions", str(missing), "is not a file", code=exit_codes.USAGE)
    assert fake.requests == [] and not (tmp_path / "out").exists()


def test_bad_rows_are_counted_and_good_rows_judged(fake, tmp_path, capsys):
    out = tmp_path / "out"
    bad = (
        b"not json",
        json.dumps({"id": "x", "generated": "no reference"}).encode(),
        json.dumps({"id": "a", "generated": "again", "reference": "dup"}).encode(),
        b'{"id": "u", "generated": "\xff\xfe", "reference": "bad bytes"}',
    )
    predictions = _predictions(tmp_path / "p.jsonl", GOOD, bad)
    result = run_main(J.main, _argv(fake, predictions, out), capsys)
    assert_one_line_error(result, "4 of 6 samples failed", "4 bad input line(s)", str(out / "failures.jsonl"),
                          code=exit_codes.SOME_FAILED)
    summary = _reconciles(out, 6)
    assert summary["n_input_errors"] == 4 and summary["n_scored"] == 2
    assert [(f["stage"], f["line"]) for f in _jsonl(out / "failures.jsonl")] == [("input", n) for n in (3, 4, 5, 6)]

    # Nothing valid at all: a usage error naming the file, the bad lines still listed.
    only_bad = _predictions(tmp_path / "bad.jsonl", [], (bad[0], bad[1], bad[3]))  # (no duplicate without "a")
    result = run_main(J.main, _argv(fake, only_bad, tmp_path / "out2"), capsys)
    assert_one_line_error(result, "no valid sample", str(only_bad), code=exit_codes.USAGE)
    assert len(_jsonl(tmp_path / "out2" / "failures.jsonl")) == 3


def test_no_api_key_in_the_environment(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    fake.required_key = SECRET  # the local server wants a key; the dummy one is refused
    predictions = _predictions(tmp_path / "p.jsonl", GOOD)
    result = run_main(J.main, _argv(fake, predictions, tmp_path / "out"), capsys)
    assert_one_line_error(result, "HTTP 401", "OPENAI_API_KEY is not set", code=exit_codes.USAGE)
    assert 1 <= fake.rejected <= 2  # stopped at the first refusal (2 workers), no retries
    assert not (tmp_path / "out" / "summary.json").exists()
    # api.openai.com without a key: refused before any connection.
    argv = _argv(fake, predictions, tmp_path / "out2")
    argv[argv.index("--base-url") + 1] = "https://api.openai.com/v1"
    result = run_main(J.main, argv, capsys)
    assert_one_line_error(result, "OPENAI_API_KEY is not set", "nothing was sent", code=exit_codes.USAGE)


def test_unwritable_output_folder_is_refused_before_any_request(fake, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    out = blocker / "out"
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", GOOD), out), capsys)
    assert_one_line_error(result, "--output folder", str(out), "regular file", code=exit_codes.USAGE)
    assert fake.requests == []


def test_rerun_keeps_the_first_runs_counts(fake, tmp_path, capsys):
    out = tmp_path / "out"
    predictions = _predictions(tmp_path / "p.jsonl", GOOD)
    assert run_main(J.main, _argv(fake, predictions, out), capsys).code == exit_codes.OK
    first = _reconciles(out, 2)
    n_calls = len(fake.requests)
    assert first["totals"]["api_calls"] == n_calls > 0 and first["totals"]["billed_prompt_tokens"] > 0

    fake.reset()
    result = run_main(J.main, _argv(fake, predictions, out), capsys)
    assert result.code == exit_codes.OK and fake.requests == []
    second = _reconciles(out, 2)
    assert second["requests"]["api_calls_this_run"] == 0
    assert [r["api_calls"] for r in second["runs"]] == [n_calls, 0]
    for name in ("api_calls", "completed", "billed_prompt_tokens", "billed_completion_tokens"):
        assert second["totals"][name] == first["totals"][name], name
    assert second["totals"]["usd"] == pytest.approx(first["totals"]["usd"]) and first["totals"]["usd"] > 0
    for path in out.iterdir():  # the key is written nowhere
        assert SECRET not in path.read_text(errors="replace"), path


def test_collect_while_the_batch_runs_is_pending_and_without_a_batch_is_refused(fake, tmp_path, capsys):
    out = tmp_path / "out"
    predictions = _predictions(tmp_path / "p.jsonl", GOOD)
    result = run_main(J.main, _argv(fake, predictions, out, "--collect"), capsys)
    assert_one_line_error(result, str(out / "batch.json"), "not found", code=exit_codes.USAGE)
    assert run_main(J.main, _argv(fake, predictions, out, "--batch-api"), capsys).code == exit_codes.OK
    result = run_main(J.main, _argv(fake, predictions, out, "--collect"), capsys)
    assert_one_line_error(result, "still in_progress", str(out / "batch.json"), code=exit_codes.PENDING)
    assert run_main(J.main, _argv(fake, predictions, out, "--collect"), capsys).code == exit_codes.OK
    runs = J.read_runs(out)
    assert [r["outcome"] for r in runs] == ["submitted", "pending", "collected"]
    assert runs[-1]["batch_billed_prompt_tokens"] > 0 and fake.requests == []


def test_ctrl_c_stops_with_130_and_one_line(fake, tmp_path, capsys, monkeypatch):
    class CtrlC:
        def __call__(self, done: int, total: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(J.cli, "Progress", CtrlC)
    out = tmp_path / "out"
    result = run_main(J.main, _argv(fake, _predictions(tmp_path / "p.jsonl", GOOD), out), capsys)
    assert_one_line_error(result, "interrupted", str(out / "cache.jsonl"), code=exit_codes.INTERRUPTED)
    (run,) = J.read_runs(out)
    assert run["outcome"] == "interrupted" and run["api_calls"] >= 1
    assert len(J.JudgeCache(out / "cache.jsonl")) == run["completed"] >= 1  # what finished is kept


def test_bad_option_values(fake, tmp_path, capsys):
    predictions = _predictions(tmp_path / "p.jsonl", GOOD)
    result = run_main(J.main, _argv(fake, predictions, tmp_path / "out", "--concurrency", "0"), capsys)
    assert_one_line_error(result, "--concurrency must be >= 1", code=exit_codes.USAGE)
    result = run_main(J.main, _argv(fake, predictions, tmp_path / "out", "--base-url", "localhost:8000"), capsys)
    assert_one_line_error(result, "localhost:8000", "must look like", code=exit_codes.USAGE)
    assert fake.requests == []
