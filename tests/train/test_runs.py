"""End-to-end training runs of scripts/train.py: SIGKILL + resume is bitwise exact and loses/repeats no example;
the same run on 1 device, 8 devices (2x2x2 mesh) and 2 processes x 4 devices gives the same losses; a NaN
stops the run naming the step and keeps the last good checkpoint; checkpoints record the prompt template and
LLM, and another template is refused on load and on resume; the pre-training config runs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from train_helpers import ROOT, mer_record, read_rows, run_train, start_train, tiny_args, train_env, write_shard

from deemo_jax import exit_codes
from deemo_jax.data.pipeline import DataConfig, make_iterator
from deemo_jax.data.templates import BUILTIN, TemplateMismatchError
from deemo_jax.train import cli
from deemo_jax.train.checkpointing import ITEMS
from deemo_jax.train.runs import load_run

STEPS = 12
EXAMPLES_PER_STEP = 8
NUM_TRAIN = 12


def final_trainable(workdir) -> dict:
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=ITEMS) as manager:
        assert manager.latest_step() == STEPS
        restored = manager.restore(STEPS, args=ocp.args.Composite(trainable=ocp.args.StandardRestore()))
    return {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(restored["trainable"]).items()}


def _flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """An uninterrupted 12-step run on one device."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_train(tiny_args(corpus, workdir, steps=STEPS), train_env(1), workdir / "log.txt")
    assert result.returncode == 0, result.stdout[-3000:]
    return workdir


def test_sigkill_and_restart_resumes_bit_for_bit(corpus, reference, tmp_path):
    workdir = tmp_path / "killed"
    args = tiny_args(corpus, workdir, steps=STEPS)
    proc = start_train(args, train_env(1), tmp_path / "log1.txt")
    deadline = time.monotonic() + 540
    # Kill once a checkpoint (step 4) is committed and training has moved on past it.
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = workdir / "metrics.jsonl"
        steps = [r["step"] for r in read_rows(metrics)] if metrics.exists() else []
        if (workdir / "checkpoints" / "4").is_dir() and steps and max(steps) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log1.txt").read_text()[-3000:]
    assert max(r["step"] for r in read_rows(workdir / "metrics.jsonl")) < STEPS  # it died mid-run

    resumed = run_train(args, train_env(1), tmp_path / "log2.txt")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout

    expected, got = final_trainable(reference), final_trainable(workdir)
    assert expected.keys() == got.keys() and len(got) > 50
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)  # bit for bit
    ref_metrics, metrics = read_rows(reference / "metrics.jsonl"), read_rows(workdir / "metrics.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in metrics] == [r["loss"] for r in ref_metrics]

    # Every step's examples recorded once; over the run each epoch shows every record exactly once.
    ref_ids = read_rows(reference / "examples" / "process_0.jsonl")
    ids = read_rows(workdir / "examples" / "process_0.jsonl")
    assert [r["step"] for r in ids] == list(range(1, STEPS + 1))
    assert ids == ref_ids
    stream = [i for r in ids for i in r["ids"]]
    assert len(stream) == STEPS * EXAMPLES_PER_STEP
    for start in range(0, len(stream) - NUM_TRAIN + 1, NUM_TRAIN):
        assert sorted(stream[start:start + NUM_TRAIN]) == [f"train-{i:03d}" for i in range(NUM_TRAIN)]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    # 40 records (5 steps per epoch); poison the audio of one that the run first meets at step 4.
    shards = tmp_path / "shards"
    shutil.copytree(corpus["shards"], shards)
    records = [mer_record(i, "train") for i in range(40)]
    write_shard(shards / "train.array_record", records)
    config = DataConfig(shard_dir=str(shards), tokenizer_path=str(corpus["tokenizer"]), batch_size=4,
                        max_length=320, num_frames=2, num_audio_clips=2, task="both",
                        num_video_query_tokens=8, num_audio_query_tokens=4)
    stream = make_iterator(config, mode="train", shard_index=0, shard_count=1)
    micro = [ids for _, ids in (next(stream) for _ in range(8))]  # two micro-batches per step
    seen = {i for ids in micro[:6] for i in ids}
    victim = next(i for i in micro[6] + micro[7] if i not in seen)
    for record in records:
        if record["id"] == victim:
            record["fbank"][:] = np.nan
    write_shard(shards / "train.array_record", records)
    workdir = tmp_path / "nan"
    args = tiny_args(corpus, workdir, f"--config.data.shard_dir={shards}", steps=STEPS)
    result = run_train(args, train_env(1), tmp_path / "log.txt")
    assert result.returncode == exit_codes.NON_FINITE, result.stdout[-3000:]
    message = result.stdout.strip().splitlines()[-1]
    assert message.startswith("train.py: step 4: loss nan") and "non-finite gradients in audio_llama_proj" in message
    assert "last good checkpoint is step 2" in message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
    rows = read_rows(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite([r["loss"] for r in rows]))
    meta = json.loads((workdir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["step"] == 2


def test_checkpoints_record_the_template_and_llm_and_refuse_another(corpus, reference, tmp_path, capsys):
    kept = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert str(STEPS) in kept
    for step in kept:
        meta = json.loads((reference / "checkpoints" / step / "meta" / "metadata").read_text())
        assert meta["template"] == BUILTIN["vicuna"].to_record()  # "": no LLM record, no chat template -> vicuna
        assert meta["llm"]["random"] == "tiny_1layer" and meta["llm"]["vocab_size"] >= 300
    with pytest.raises(TemplateMismatchError) as error:
        load_run(reference, template="llama2")
    message = str(error.value)
    assert f"checkpoint {reference / 'checkpoints' / str(STEPS)}" in message
    assert "trained with prompt template 'vicuna'" in message and "used with 'llama2'" in message

    # Resuming training with another template: the same error, exit 2, before anything is built or written.
    workdir = tmp_path / "resume"
    shutil.copytree(reference, workdir)
    code = cli.main(["train.py", *tiny_args(corpus, workdir, "--config.data.template=llama2", steps=STEPS + 2)])
    err = capsys.readouterr().err.strip()
    assert code == exit_codes.USAGE and len(err.splitlines()) == 1, err
    assert err.startswith("train.py: config error: checkpoint") and "'vicuna'" in err and "'llama2'" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_losses_agree_on_1_device_8_devices_and_2_processes(corpus, reference, tmp_path):
    mesh = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    eight = tmp_path / "eight"
    result = run_train(tiny_args(corpus, eight, *mesh, steps=STEPS), train_env(8), tmp_path / "log8.txt")
    assert result.returncode == 0, result.stdout[-3000:]

    multi = tmp_path / "multi"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        start_train(
            tiny_args(corpus, multi, *mesh, "--config.distributed.num_processes=2",
                      f"--config.distributed.coordinator_address={address}",
                      f"--config.distributed.process_id={pid}", steps=STEPS),
            train_env(4), tmp_path / f"log_p{pid}.txt",
        )
        for pid in (0, 1)
    ]
    for pid, proc in enumerate(procs):
        proc.wait(timeout=900)
        assert proc.returncode == 0, (tmp_path / f"log_p{pid}.txt").read_text()[-3000:]

    reference_loss = np.array([r["loss"] for r in read_rows(reference / "metrics.jsonl")])
    for workdir in (eight, multi):
        loss = np.array([r["loss"] for r in read_rows(workdir / "metrics.jsonl")])
        assert loss.shape == (STEPS,)
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-5, atol=0)
    # The two processes' rows of each micro-batch concatenate to the single-process micro-batch.
    ref_ids = read_rows(reference / "examples" / "process_0.jsonl")
    parts = [read_rows(multi / "examples" / f"process_{pid}.jsonl") for pid in (0, 1)]
    for ref, p0, p1 in zip(ref_ids, *parts, strict=True):
        assert p0["ids"][:2] + p1["ids"][:2] + p0["ids"][2:] + p1["ids"][2:] == ref["ids"]


@pytest.mark.slow
def test_pretrain_config_runs_on_caption_shards(corpus, tmp_path):
    workdir = tmp_path / "pretrain"
    args = [
        "--config=" + str(ROOT / "configs" / "pretrain.py") + ":small", f"--config.workdir={workdir}",
        f"--config.data.shard_dir={corpus['captions']}", f"--config.data.tokenizer_path={corpus['tokenizer']}",
        f"--config.train.compilation_cache_dir={corpus['cache']}", "--config.train.progress_bar=False",
    ]
    result = run_train(args, train_env(1), tmp_path / "log.txt")
    assert result.returncode == 0, result.stdout[-3000:]
    losses = [r["loss"] for r in read_rows(workdir / "metrics.jsonl")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=ITEMS) as manager:
        stored = manager.restore(2, args=ocp.args.Composite(trainable=ocp.args.StandardRestore()))["trainable"]
    assert set(stored) == {"video_qformer", "video_frame_position_embedding", "llama_proj"}  # no audio branch
