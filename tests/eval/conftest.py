"""Session fixtures of the evaluation tests: tiny synthetic shards, a tokenizer, and a tiny training run
workdir written the way ``scripts/train.py`` writes it (``config.json`` + an Orbax checkpoint whose
``trainable`` item holds the trained parameters and whose ``meta`` records the prompt template, vicuna, and
the random LLM), loaded once with ``deemo_jax.train.runs.load_run``.

Every evaluation test uses that one model, so the compiled generation programs are shared across tests."""

from __future__ import annotations

import json
import random

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from flax import nnx

from deemo_jax.data import schema
from deemo_jax.data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer
from deemo_jax.models.deemo_llama import PAPER_TRAINABLE, DeemoLlama
from deemo_jax.train import checkpointing
from deemo_jax.train.config import base_config, model_config
from deemo_jax.train.identity import llm_identity, meta_record, run_template
from deemo_jax.train.partition import TrainableFilter

LABELS = ("positive", "negative")
FRAMES = CLIPS = 2
VOCAB = 400
STEP = 7
WORDS = (
    "we played well today he smiles and speaks fast so she looks down slowly positive negative folding arms "
    "What is the emotional state of person Answer with one word and from clues can infer it Start answer "
    "###Human: ###Assistant: <Audio></Audio> <Video></Video> <Transcription></Transcription> <NFBL></NFBL> "
    "<User></User> none"
).split()


def mer_record(i: int, reasoning: str | None = None) -> dict:
    label = LABELS[i % 2]
    return {
        "schema_version": 1, "kind": "mer", "id": f"test-{i:03d}", "split": "test", "start": 0.0, "end": 4.0,
        "transcription": "we played well today " * (1 + i % 3), "label": label, "label_index": i % 2,
        "reasoning": reasoning or f"he smiles and speaks fast so he is {label}",
        "nfbl": [{"label": "folding arms", "start": 0.5, "end": 1.25}] if i % 2 else [],
        "frames": np.full((FRAMES, 224, 224, 3), 25 * i, np.uint8),
        "frame_times": np.arange(FRAMES, dtype=np.float32),
        "fbank": np.full((CLIPS, 128, 204), 0.3 * i, np.float32),
        "audio_clip_times": np.zeros((CLIPS, 2), np.float32),
    }


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """A ``test`` split of 5 records plus one too long for max_length (it must be reported as skipped)."""
    root = tmp_path_factory.mktemp("eval_data")
    directory = root / "shards"
    directory.mkdir()
    records = [mer_record(i) for i in range(5)]
    records.insert(2, mer_record(9, reasoning=" ".join(["she looks down slowly"] * 80)))
    writer = ArrayRecordWriter(str(directory / "test.array_record"), "group_size:1")
    for r in records:
        writer.write(schema.encode(r))
    writer.close()
    (directory / "metadata.json").write_text(json.dumps({"labels": list(LABELS)}))
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    tokenizer_dir = train_sentencepiece_tokenizer(texts, root / "tokenizer", vocab_size=VOCAB)
    return {"dir": directory, "records": records, "tokenizer_dir": tokenizer_dir,
            "tokenizer": load_tokenizer(tokenizer_dir)}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shards):
    """A training workdir: config.json and checkpoint ``STEP`` holding random trainable parameters (the LLM
    among them, drawn so that its next-token distributions are peaked and varied)."""
    workdir = tmp_path_factory.mktemp("run")
    cfg = base_config()
    cfg.workdir = str(workdir)
    cfg.model.preset, cfg.model.frozen_dtype, cfg.model.random_frozen = "tiny_1layer", "float32", True
    cfg.model.overrides = {"llm": {"num_hidden_layers": 2}}
    cfg.trainable = (*PAPER_TRAINABLE, "llama")
    cfg.data.update(dict(shard_dir=str(shards["dir"]), tokenizer_path=str(shards["tokenizer_dir"]), task="both",
                         max_length=200, num_frames=FRAMES, num_audio_clips=CLIPS, read_threads=1,
                         read_buffer_size=4))
    cfg.mesh.update(dict(data=-1, fsdp=1, tensor=1))
    cfg.train.compilation_cache_dir = ""  # the command-line tools would enable it: keep tests out of ~/.cache
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2, sort_keys=True) + "\n")

    model_cfg = model_config(cfg, shards["tokenizer"].vocab_size)
    abstract = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(0)))
    _, trainable, _ = nnx.split(abstract, TrainableFilter(cfg.trainable), ...)
    rng = np.random.default_rng(0)

    def draw(path, s):  # activations O(1): norm scales ~1, embeddings N(0, 1), kernels N(0, 1/fan_in)
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            value = 1.0 + 0.2 * rng.normal(size=s.shape)
        elif name == "kernel" and len(s.shape) >= 2:
            value = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
        else:
            value = (1.0 if name == "embedding" else 0.1) * rng.normal(size=s.shape)
        return value.astype(s.dtype)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(trainable))
    meta = {"model_config": repr(model_cfg), "trainable": list(cfg.trainable), "layout_version":
            checkpointing.LAYOUT_VERSION, "step": STEP,
            **meta_record(run_template(cfg, shards["tokenizer"]), llm_identity(cfg, model_cfg.llm.vocab_size))}
    with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir), item_names=checkpointing.ITEMS) as manager:
        manager.save(STEP, args=ocp.args.Composite(trainable=ocp.args.StandardSave(pure),
                                                   meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()
    return {"workdir": workdir, "trainable": pure, "config": cfg}


@pytest.fixture(scope="session")
def loaded_run(tiny_run):
    from deemo_jax.train.runs import load_run

    return load_run(tiny_run["workdir"])
