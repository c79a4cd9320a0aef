"""Bad-input corpus, evaluation part: a corrupt shard record stops eval.py naming it (exit 3), or, with
``data.skip_corrupt_records``, is excluded and reported; a missing run is one line (exit 2); so is a run used
with another prompt template than it was trained with (its override, or its edited config.json)."""

from __future__ import annotations

import json
import shutil

import pytest
from bad_inputs.helpers import assert_one_line_error, run_main

from deemo_jax import exit_codes
from deemo_jax.data import schema
from deemo_jax.data.templates import TemplateMismatchError
from deemo_jax.eval import cli
from deemo_jax.train.runs import load_run


@pytest.fixture(scope="module")
def corrupt_split(shards, tmp_path_factory):
    """The eval split written uncompressed, with the bytes of record 1 (``test-001``) damaged in place."""
    from array_record.python.array_record_module import ArrayRecordWriter

    directory = tmp_path_factory.mktemp("corrupt_eval") / "shards"
    shutil.copytree(shards["dir"], directory)
    path = directory / "test.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    records = [r for r in shards["records"] if r["id"] != "test-009"]  # the four that fit max_length
    for record in records[:4]:
        writer.write(schema.encode(record))
    writer.close()
    data = bytearray(path.read_bytes())
    at = data.find(b"test-001")
    for k in range(at, at + 8):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    return directory


def eval_argv(tiny_run, shard_dir, out, *extra):
    return ["eval.py", "--config=configs/eval.py", f"--config.workdir={tiny_run['workdir']}",
            f"--config.data.shard_dir={shard_dir}", "--config.batch_size=2",
            "--config.generation.max_new_tokens=4", f"--config.output_dir={out}", *extra]


def test_corrupt_record_stops_eval_naming_it(tiny_run, corrupt_split, tmp_path, capsys):
    result = run_main(cli.main, eval_argv(tiny_run, corrupt_split, tmp_path / "out"), capsys)
    assert_one_line_error(result, "corrupt shard record", "test.array_record record 1", "skip_corrupt_records",
                          code=exit_codes.BAD_DATA)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_skipped_corrupt_records_are_excluded_and_reported(tiny_run, corrupt_split, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_main(cli.main, eval_argv(tiny_run, corrupt_split, out, "--config.data.skip_corrupt_records=True"),
                      capsys)
    assert result.code == exit_codes.OK, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["n_excluded_corrupt"] == 1  # 4 records = 3 evaluated + 1 excluded
    assert metrics["excluded_corrupt_records"][0].endswith("test.array_record record 1")
    ids = [json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["test-000", "test-002", "test-003"]
    assert "1 excluded as corrupt shard records" in (out / "results.md").read_text()
    assert "excluded (corrupt records) 1" in result.out


def test_missing_run_is_one_line(tmp_path, capsys):
    result = run_main(cli.main, ["eval.py", "--config=configs/eval.py", f"--config.workdir={tmp_path / 'none'}"],
                      capsys)
    assert_one_line_error(result, str(tmp_path / "none"), "does not exist", code=exit_codes.USAGE)


def test_another_template_than_the_run_was_trained_with_exits_2_naming_both(tiny_run, shards, tmp_path, capsys):
    out = tmp_path / "out"
    result = run_main(cli.main, eval_argv(tiny_run, shards["dir"], out, "--config.data.template=llama2"), capsys)
    assert_one_line_error(result, f"checkpoint {tiny_run['workdir']}", "trained with prompt template 'vicuna'",
                          "used with 'llama2'", code=exit_codes.USAGE)
    assert not out.exists()
    result = run_main(cli.main, eval_argv(tiny_run, shards["dir"], out, "--config.data.template=alpaca"), capsys)
    assert_one_line_error(result, "config.data.template = 'alpaca'", code=exit_codes.USAGE)


def test_a_run_whose_config_names_another_template_refuses_to_load(tiny_run, tmp_path):
    workdir = tmp_path / "edited"
    shutil.copytree(tiny_run["workdir"], workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["template"] = "llama2"
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(TemplateMismatchError, match="trained with prompt template 'vicuna'.*used with 'llama2'"):
        load_run(workdir)
