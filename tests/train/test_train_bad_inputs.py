"""Bad-input corpus, training part: corrupt shards, configs rejected before any folder is made, shard facts.

Each case asserts the exit code of docs/exit_codes.md and a one-line message naming what, where and how to fix
(the helpers are shared with tests/bad_inputs/).
"""

from __future__ import annotations

import json
import shutil

import pytest
from bad_inputs.helpers import assert_one_line_error, run_main
from train_helpers import mer_record, read_rows, run_train, tiny_args, train_env

from deemo_jax import exit_codes
from deemo_jax.data import schema
from deemo_jax.train import cli


def write_uncompressed_shard(path, records):
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1,uncompressed")
    for record in records:
        writer.write(schema.encode(record))
    writer.close()


def flip_record_bytes(path, record_id: str) -> None:
    """Damage one record in place (its bytes, not the file's headers): the file still opens."""
    data = bytearray(path.read_bytes())
    at = data.find(record_id.encode())
    assert at > 0, record_id
    for k in range(at, at + len(record_id)):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def corrupt_shards(corpus, tmp_path_factory):
    """The corpus's shards with record 5 of the train split damaged, and one copy with a damaged file header."""
    root = tmp_path_factory.mktemp("corrupt")
    shards = root / "shards"
    shutil.copytree(corpus["shards"], shards)
    train = shards / "train.array_record"
    write_uncompressed_shard(train, [mer_record(i, "train") for i in range(12)])
    flip_record_bytes(train, "train-005")
    header = root / "header"
    shutil.copytree(corpus["shards"], header)
    data = bytearray((header / "train.array_record").read_bytes())
    last_block = (len(data) - 1) // 65536 * 65536  # the header of the block holding the file's index
    for k in range(last_block, last_block + 24):
        data[k] ^= 0xFF
    (header / "train.array_record").write_bytes(bytes(data))
    return {"record": shards, "header": header}


def train_main(capsys, corpus, workdir, *extra):
    return run_main(cli.main, ["train.py", *tiny_args(corpus, workdir, *extra)], capsys)


def test_corrupt_record_stops_with_file_and_index_and_exit_3(corpus, corrupt_shards, tmp_path, capsys):
    result = train_main(capsys, corpus, tmp_path / "run", f"--config.data.shard_dir={corrupt_shards['record']}",
                        "--config.data.seed=1")
    line = assert_one_line_error(result, "corrupt shard record", "train.array_record record 5",
                                 "skip_corrupt_records", code=exit_codes.BAD_DATA)
    assert "chunk data hash mismatch" in line
    assert exit_codes.BAD_DATA != exit_codes.NON_FINITE


def test_damaged_shard_file_is_named_and_exit_3(corpus, corrupt_shards, tmp_path, capsys):
    result = train_main(capsys, corpus, tmp_path / "run", f"--config.data.shard_dir={corrupt_shards['header']}")
    assert_one_line_error(result, "shard file", "train.array_record", "cannot be opened", "rebuild",
                          code=exit_codes.BAD_DATA)


@pytest.mark.slow
def test_skip_corrupt_records_trains_and_counts_them(corpus, corrupt_shards, tmp_path):
    workdir = tmp_path / "run"
    args = tiny_args(corpus, workdir, f"--config.data.shard_dir={corrupt_shards['record']}",
                     "--config.data.skip_corrupt_records=True", "--config.train.global_batch_size=4",
                     "--config.train.grad_accum_steps=1", steps=3)  # 12 examples: the damaged one is reached
    result = run_train(args, train_env(1), tmp_path / "log.txt")
    assert result.returncode == 0, result.stdout[-3000:]
    rows = read_rows(workdir / "metrics.jsonl")
    assert rows[-1]["corrupt_records_skipped"] == 1
    assert "skipped 1 corrupt shard record(s)" in result.stdout and "train.array_record record 5" in result.stdout
    examples = [json.loads(x) for x in (workdir / "examples" / "process_0.jsonl").read_text().splitlines()]
    seen = [i for e in examples for i in e["ids"] if i]
    assert "train-005" not in seen and len(seen) == 11  # every other record trained on exactly once


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--config.trainable=('video_qformer', 'no_such_module')"], ("no_such_module", "select no")),
        (["--config.data.shard_dir=/nonexistent/shards"], ("/nonexistent/shards", "does not exist")),
        (["--config.eval.at_end=True", "--config.eval.type=bleu"], ("eval.type = 'bleu'", "evaluators/bleu.py")),
        (["--config.data.num_frames=-1"], ("data.num_frames = -1",)),
    ],
)
def test_rejected_config_creates_no_workdir(corpus, tmp_path, capsys, extra, fragments):
    workdir = tmp_path / "never_made"
    result = train_main(capsys, corpus, workdir, *extra)
    assert_one_line_error(result, *fragments, code=exit_codes.USAGE)
    assert not workdir.exists()


def test_frame_count_is_read_from_the_shards_and_a_contradiction_refused(corpus, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    (shards / "metadata.json").write_text(json.dumps({"labels": ["positive", "negative"],
                                                      "frames": {"num_frames": 2}, "audio": {"num_clips": 2}}))
    result = train_main(capsys, corpus, tmp_path / "run", f"--config.data.shard_dir={shards}",
                        "--config.data.num_frames=8")
    assert_one_line_error(result, "data.num_frames = 8", "hold 2 per record", "metadata.json", code=exit_codes.USAGE)
    assert not (tmp_path / "run").exists()
