"""Fixtures of the training tests (helpers in train_helpers.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from train_helpers import LABELS, WORDS, S, T, caption_record, mer_record, write_shard

from deemo_jax.data.tokenizer import train_sentencepiece_tokenizer


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict:
    """12 train + 4 test emotion records, 6 caption records, a 300-piece tokenizer, a compile cache dir."""
    root = tmp_path_factory.mktemp("train_corpus")
    shards = root / "shards"
    shards.mkdir()
    write_shard(shards / "train.array_record", [mer_record(i, "train") for i in range(12)])
    write_shard(shards / "test.array_record", [mer_record(i, "test") for i in range(4)])
    # What the shard builder states about every record (the frame and clip counts are read from here).
    (shards / "metadata.json").write_text(json.dumps({"labels": LABELS, "frames": {"num_frames": T},
                                                      "audio": {"num_clips": S}}))
    captions = root / "captions"
    captions.mkdir()
    write_shard(captions / "train.array_record", [caption_record(i) for i in range(6)])
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    tokenizer = train_sentencepiece_tokenizer(texts, root / "tokenizer", vocab_size=300)
    return {"root": root, "shards": shards, "captions": captions, "tokenizer": Path(tokenizer),
            "cache": root / "xla_cache"}
