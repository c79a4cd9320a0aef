"""Recognition evaluation and Table 4 ablations (deemo_jax.eval.evaluate) on tiny synthetic shards with a tiny
random DeemoLlama: output files, consistency of metrics with predictions, judge-readable predictions, skipped
examples reported, batch == one-at-a-time, ablation table rows, encoder branches not run when off."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from deemo_jax.eval import cli
from deemo_jax.eval import generate as generate_module
from deemo_jax.eval.evaluate import TABLE4_ROWS, evaluate_pass, evaluate_recognition, run_ablations, with_modalities
from deemo_jax.eval.generate import GenerationConfig
from deemo_jax.eval.judge import read_predictions
from deemo_jax.eval.labels import parse_label_with_rule
from deemo_jax.eval.metrics import classification_metrics
from deemo_jax.eval.report import PAPER_TABLE4
from deemo_jax.models.deemo_llama import DeemoLlama

LABELS = ("positive", "negative")  # the label set of the shards in conftest.py
NEW = 6
# One bucket for every prompt of these tests, so all passes of a batch size share one LLM program.
GENERATION = GenerationConfig(length_bucket=256)


@pytest.fixture(scope="module")
def env(tmp_path_factory, shards, loaded_run):
    return {"root": tmp_path_factory.mktemp("evaluate"), "records": shards["records"], "tok": shards["tokenizer"],
            "model": loaded_run.model, "data": loaded_run.data_config(batch_size=2, split="test")}


@pytest.fixture(scope="module")
def evaluated(env):
    out = env["root"] / "eval"
    metrics = evaluate_recognition(
        env["model"], env["data"], output_dir=out, batch_size=2, max_new_tokens=NEW, generation=GENERATION,
        tokenizer=env["tok"], extra={"checkpoint": "random"},
    )
    return out, metrics


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_eval_writes_predictions_metrics_markdown_and_png(env, evaluated):
    out, metrics = evaluated
    for name in ("predictions.jsonl", "metrics.json", "results.md", "confusion.png"):
        assert (out / name).is_file(), name
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_jsonl(out / "predictions.jsonl")
    kept = [r for r in env["records"] if r["id"] != "test-009"]
    assert [r["id"] for r in rows] == [r["id"] for r in kept]
    for row, rec in zip(rows, kept, strict=True):
        assert row["gold_label"] == rec["label"]
        assert row["reference"] == rec["reasoning"]  # "{label}. {reasoning}###" target -> the reasoning
        assert (row["parsed_label"], row["parse_rule"]) == parse_label_with_rule(row["generated"], LABELS)
        assert row["prompt"]["modalities"] == ["transcription", "video", "audio"]
        assert "emotional state" in row["prompt"]["instruction"] and "frames" not in json.dumps(row)
        assert 1 <= row["num_generated_tokens"] <= NEW
    samples, failures = read_predictions(out / "predictions.jsonl")
    assert not failures and [s.id for s in samples] == [r["id"] for r in rows]

    expected = classification_metrics([r["gold_label"] for r in rows], [r["parsed_label"] for r in rows], LABELS)
    written = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "weighted_f1", "macro_f1", "uar", "n_unparseable", "unparseable_rate"):
        assert written[key] == pytest.approx(expected.to_dict()[key]) and metrics[key] == written[key]
    assert written["n"] == 5 and written["n_skipped"] == 1 and written["skipped_ids"] == ["test-009"]
    assert written["checkpoint"] == "random" and written["generation"]["do_sample"] is False
    assert written["generation"]["stop_sequences"]  # the end symbol's token ids
    assert sum(written["parse_rules"].values()) == 5
    markdown = (out / "results.md").read_text()
    assert "| ours | ✓ | ✓ | ✓ | - |" in markdown and "| paper | ✓ | ✓ | ✓ | - | 74.49 | 74.45 |" in markdown
    assert "unparseable" in markdown
    assert written["template"] == "vicuna" and "prompt template vicuna" in markdown  # the run's own


def test_batched_equals_one_at_a_time(env, evaluated):
    out, _ = evaluated
    single = evaluate_pass(
        env["model"], env["data"], output_dir=env["root"] / "single", batch_size=1, max_new_tokens=NEW,
        generation=GENERATION, tokenizer=env["tok"],
    )
    batched = {r["id"]: r["generated"] for r in read_jsonl(out / "predictions.jsonl")}
    alone = {r["id"]: r["generated"] for r in read_jsonl(single.output_dir / "predictions.jsonl")}
    assert alone == batched
    assert len(set(batched.values())) > 1  # the rows' media and prompts really differ


def test_ablation_table_rows_and_branches_not_run(env, evaluated, monkeypatch):
    calls = []
    real = generate_module._encode_jit

    def spy(state, media, *, graphdef, branch):
        calls.append(branch)
        return real(state, media, graphdef=graphdef, branch=branch)

    monkeypatch.setattr(generate_module, "_encode_jit", spy)
    rows = [("transcription",), ("nfbl",), ("transcription", "video"), ("transcription", "video", "audio")]
    out = env["root"] / "ablations"
    results = run_ablations(
        env["model"], env["data"], output_dir=out, rows=rows, batch_size=2, max_new_tokens=NEW,
        generation=GENERATION, tokenizer=env["tok"],
    )
    batches = 3  # 5 examples + 1 skipped, batch 2
    assert calls == ["video"] * batches + ["video", "audio"] * batches
    assert [r.modalities for r in results] == rows
    table = (out / "table4.md").read_text()
    for marks in ("✓ | - | - | -", "- | - | - | ✓", "✓ | ✓ | - | -", "✓ | ✓ | ✓ | -"):
        assert f"| ours | {marks} |" in table
    assert table.count("| ours |") == 2 * len(rows) and table.count("| paper |") == len(PAPER_TABLE4)
    summary = json.loads((out / "ablations.json").read_text())
    assert list(summary) == ["transcription", "nfbl", "transcription+video", "transcription+video+audio"]
    for name in summary:
        assert (out / name / "metrics.json").is_file() and (out / name / "confusion.png").is_file()
    # the full-modality row is the plain evaluation of the fixture, generated by the same programs
    first = read_jsonl(evaluated[0] / "predictions.jsonl")
    last = read_jsonl(out / "transcription+video+audio" / "predictions.jsonl")
    assert [r["generated"] for r in last] == [r["generated"] for r in first]
    nfbl_prompt = read_jsonl(out / "nfbl" / "predictions.jsonl")[0]["prompt"]
    assert nfbl_prompt["modalities"] == ["nfbl"]


def test_table4_rows_are_the_papers():
    assert [frozenset(r) for r in TABLE4_ROWS] == [m for m, _, _ in PAPER_TABLE4]


def test_bad_settings_fail_before_generation(env, tmp_path, numpy_init):
    with pytest.raises(ValueError, match="num_video_query_tokens"):
        evaluate_pass(env["model"], dataclasses.replace(env["data"], num_video_query_tokens=32),
                      output_dir=tmp_path, tokenizer=env["tok"])
    with pytest.raises(ValueError, match="subset of"):
        with_modalities(env["data"], ("face",))
    with pytest.raises(ValueError, match="not in the evaluated label set"):
        evaluate_pass(env["model"], env["data"], output_dir=tmp_path, labels=("happy", "sad"), tokenizer=env["tok"])
    text_config = dataclasses.replace(
        env["model"].config, vit=None, image_qformer=None, video_qformer=None, audio_encoder=None, audio_qformer=None
    )
    text_only = numpy_init(lambda: DeemoLlama(text_config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no video branch"):
        evaluate_pass(text_only, env["data"], output_dir=tmp_path, tokenizer=env["tok"])


def test_load_run_restores_the_checkpointed_trainable_parameters(tiny_run, loaded_run):
    from deemo_jax.train.partition import TrainableFilter

    assert loaded_run.step == 7 and loaded_run.workdir == tiny_run["workdir"]
    restored = nnx.to_pure_dict(nnx.state(loaded_run.model, TrainableFilter(tiny_run["config"].trainable)))
    saved = tiny_run["trainable"]
    assert sorted(restored) == sorted(saved)
    flat_saved = dict(jax.tree_util.tree_leaves_with_path(saved))
    flat_restored = dict(jax.tree_util.tree_leaves_with_path(restored))
    assert flat_saved.keys() == flat_restored.keys()
    for path, value in flat_saved.items():
        np.testing.assert_array_equal(np.asarray(flat_restored[path]), value, err_msg=str(path))


def test_load_run_errors_say_what_to_do(tmp_path, tiny_run, monkeypatch):
    from deemo_jax.train.runs import DEFAULT_DEMO_WORKDIR, RunNotFoundError, load_run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunNotFoundError, match="make demo"):
        load_run(DEFAULT_DEMO_WORKDIR)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="not a deemo-jax training workdir"):
        load_run(tmp_path / "empty")
    (tmp_path / "fresh").mkdir()
    shutil.copy(tiny_run["workdir"] / "config.json", tmp_path / "fresh" / "config.json")
    with pytest.raises(RunNotFoundError, match="no finished checkpoint"):
        load_run(tmp_path / "fresh")
    with pytest.raises(RunNotFoundError, match=r"no checkpoint of step 3; it has \[7\]"):
        load_run(tiny_run["workdir"], step=3)


def test_eval_command_produces_the_whole_table4(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval.py", "--config=configs/eval.py:ablations", f"--config.workdir={tiny_run['workdir']}",
            "--config.batch_size=2", f"--config.generation.max_new_tokens={NEW}",
            f"--config.generation.length_bucket={GENERATION.length_bucket}", f"--config.output_dir={out}"]
    assert cli.main(argv) == 0
    table = (out / "ablations" / "table4.md").read_text()
    ours = [line for line in table.split("## F1 macro")[0].splitlines() if line.startswith("| ours |")]
    paper = [line for line in table.splitlines() if line.startswith("| paper |")]
    assert [line.split("|")[2:6] for line in ours] == [line.split("|")[2:6] for line in paper]  # same rows, order
    assert len(ours) == len(TABLE4_ROWS) == 7
    printed = capsys.readouterr().out
    assert printed.count("accuracy") == 7 and str(out / "ablations") in printed
    metrics = json.loads((out / "ablations" / "transcription+video+audio" / "metrics.json").read_text())
    assert metrics["checkpoint"]["step"] == 7 and metrics["eval_config"]["generation"]["max_new_tokens"] == NEW
    assert metrics["template"] == "vicuna"


def test_eval_command_rejects_bad_configs_before_loading(tmp_path, capsys):
    assert cli.main(["eval.py", "--config=configs/eval.py", "--config.wrokdir=x"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert cli.main(["eval.py", "--config=configs/eval.py"]) == 2
    assert "config.workdir is empty" in capsys.readouterr().err
    assert cli.main(["eval.py", "--config=configs/eval.py", "--config.workdir=x",
                     "--config.ablations=('transcription+face',)"]) == 2
    assert "transcription+face" in capsys.readouterr().err
    assert cli.main(["eval.py", "--config=configs/eval.py", f"--config.workdir={tmp_path / 'none'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
