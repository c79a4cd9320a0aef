"""Grain pipeline of deemo_jax.data.pipeline: batch contract (DESIGN.md §3), labels, over-long policies,
sharding, determinism, eval padding and iterator state (plain and through Orbax)."""

import json
import random

import grain
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from deemo_jax.data import schema
from deemo_jax.data.pipeline import (
    DataConfig,
    OverlongError,
    find_shards,
    make_iterator,
    tokenize_example,
)
from deemo_jax.data.prompts import PromptConfig, build_prompt
from deemo_jax.data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer

T, S = 2, 2  # frames / audio clips per record (schema default is 8; small keeps the tests light)
MAX_LENGTH = 160
LABELS = ["positive", "negative"]
LONG_REASONING = " ".join(["the athlete looks down and speaks slowly"] * 40)


def mer_record(i, split, transcription=None, reasoning=None):
    return {
        "schema_version": 1, "kind": "mer", "id": f"{split}-{i:03d}", "split": split,
        "start": 0.0, "end": 4.0,
        "transcription": transcription or f"we played well today {i}",
        "label": LABELS[i % 2], "label_index": i % 2,
        "reasoning": reasoning or f"he smiles {i}",
        "nfbl": [{"label": "folding arms", "start": 0.5, "end": 1.25}],
        "frames": np.full((T, 224, 224, 3), i, np.uint8), "frame_times": np.arange(T, dtype=np.float32),
        "fbank": np.full((S, 128, 204), i, np.float32), "audio_clip_times": np.zeros((S, 2), np.float32),
    }


def write_shard(path, records):
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(schema.encode(record))
    writer.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    shards = root / "shards"
    shards.mkdir()
    write_shard(shards / "train-00000-of-00002.array_record", [mer_record(i, "train") for i in range(5)])
    write_shard(shards / "train-00001-of-00002.array_record", [mer_record(i, "train") for i in range(5, 10)])
    write_shard(shards / "test.array_record", [mer_record(i, "test") for i in range(5)])
    overlong = [mer_record(i, "overlong") for i in range(4)]
    overlong[2] = mer_record(2, "overlong", reasoning=LONG_REASONING)
    overlong[3] = mer_record(3, "overlong", transcription="we played " * 60)
    write_shard(shards / "overlong.array_record", overlong)
    captions = [{"schema_version": 1, "kind": "caption", "id": f"cap-{i}", "split": "caption",
                 "caption": f"a man rides a bike {i}", "frames": np.full((1, 224, 224, 3), i, np.uint8),
                 "frame_times": np.zeros(1, np.float32)} for i in range(3)]
    write_shard(shards / "caption.array_record", captions)
    (shards / "metadata.json").write_text(json.dumps({"labels": LABELS}))

    return {"shards": shards, **small_tokenizer(root / "tok")}


def small_tokenizer(directory):
    """A 500-piece SentencePiece tokenizer over the prompt's words: {"tok_dir", "tok"}."""
    rng = random.Random(0)
    words = ("we played well today he smiles the athlete looks down and speaks slowly folding arms From "
             "what clues can we infer person's emotional state ###Human: ###Assistant: <Audio></Audio> "
             "<Video></Video> <Transcription></Transcription> <User></User>").split()
    tok_dir = train_sentencepiece_tokenizer(
        [" ".join(rng.choice(words) for _ in range(10)) for _ in range(400)], directory, vocab_size=500
    )
    return {"tok_dir": tok_dir, "tok": load_tokenizer(tok_dir)}


def config(env, **overrides):
    fields = dict(shard_dir=str(env["shards"]), split="train", tokenizer_path=str(env["tok_dir"]),
                  batch_size=2, max_length=MAX_LENGTH, num_frames=T, num_audio_clips=S, read_threads=1,
                  read_buffer_size=4)
    fields.update(overrides)
    return DataConfig(**fields)


def iterator(env, mode="train", shard_index=0, shard_count=1, **overrides):
    return make_iterator(config(env, **overrides), mode=mode, tokenizer=env["tok"], shard_index=shard_index,
                         shard_count=shard_count)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (batch_a, ids_a), (batch_b, ids_b) in zip(a, b, strict=True):
        assert ids_a == ids_b
        assert batch_a.keys() == batch_b.keys()
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


@pytest.mark.parametrize("audio,video,transcription", [(True, True, True), (False, True, False),
                                                       (False, False, True)])
def test_batch_keys_dtypes_and_shapes(env, audio, video, transcription):
    it = iterator(env, "eval", use_audio=audio, use_video=video, use_transcription=transcription)
    batch, ids = next(it)
    expected = {"input_ids", "attention_mask", "labels", "label_index", "example_mask"}
    expected |= {"frames"} if video else set()
    expected |= {"fbank"} if audio else set()
    assert set(batch) == expected
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].dtype == np.int32 and batch[key].shape == (2, MAX_LENGTH)
    assert batch["label_index"].dtype == np.int32 and batch["label_index"].tolist() == [0, 1]
    assert batch["example_mask"].dtype == np.int32 and batch["example_mask"].tolist() == [1, 1]
    if video:
        assert batch["frames"].dtype == np.uint8 and batch["frames"].shape == (2, T, 224, 224, 3)
        assert batch["frames"][1].min() == batch["frames"][1].max() == 1  # record 1's frames
    if audio:
        assert batch["fbank"].dtype == np.float32 and batch["fbank"].shape == (2, S, 1, 128, 204)
    assert ids == ["train-000", "train-001"]
    tok = env["tok"]
    for token, count in (("<ImageHere>", 32 * video), ("<AudioHere>", 8 * audio)):
        assert (batch["input_ids"] == tok.convert_tokens_to_ids(token)).sum(1).tolist() == [count] * 2


def test_labels_are_masked_exactly_on_the_prompt(env):
    tok = env["tok"]
    batch, _ = next(iterator(env, "eval"))
    prompt, target = build_prompt(mer_record(0, "train"), config(env).prompt_config(LABELS))
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    p, n = 1 + len(prompt_ids), int(mask.sum())
    assert ids[0] == tok.bos_token_id and ids[1:p].tolist() == prompt_ids
    assert (labels[:p] == -100).all() and (labels[n:] == -100).all()
    np.testing.assert_array_equal(labels[p:n], ids[p:n])
    assert tok.decode(labels[p:n]) == target == "he smiles 0###"
    assert (ids[n:] == tok.pad_token_id).all() and mask[:n].all() and not mask[n:].any()
    for token, count in (("<ImageHere>", 32), ("<AudioHere>", 8)):
        positions = np.flatnonzero(ids == tok.convert_tokens_to_ids(token))
        assert len(positions) == count and positions[-1] - positions[0] == count - 1


def _long_prompt(env, transcription):
    record = mer_record(0, "x", transcription=transcription)
    return build_prompt(record, PromptConfig(labels=tuple(LABELS)))


def test_truncate_transcription_keeps_placeholders_and_target(env):
    tok = env["tok"]
    prompt, target = _long_prompt(env, "we played well today " * 10)
    full = tokenize_example(prompt, target, tok, max_length=400, num_video_tokens=32, num_audio_tokens=8)
    limit = full.num_tokens - 7
    cut = tokenize_example(prompt, target, tok, max_length=limit, num_video_tokens=32, num_audio_tokens=8)
    assert cut.num_tokens == limit and cut.truncated_tokens == 7
    assert tok.decode(cut.labels[cut.labels >= 0]) == target
    text = tok.decode(cut.input_ids[: cut.num_tokens])
    assert "</Transcription> <User>" in text and "<Transcription>we played well today we played" in text
    assert len(text) < len(tok.decode(full.input_ids[: full.num_tokens]))
    assert (cut.input_ids == tok.convert_tokens_to_ids("<ImageHere>")).sum() == 32
    with pytest.raises(OverlongError, match="max_length"):
        tokenize_example(prompt, target, tok, max_length=limit, overlong_policy="error",
                         num_video_tokens=32, num_audio_tokens=8)
    assert tokenize_example(prompt, target, tok, max_length=limit, overlong_policy="drop",
                            num_video_tokens=32, num_audio_tokens=8) is None
    # A target that cannot fit even without the transcription is dropped, never cut.
    assert tokenize_example(prompt, target + LONG_REASONING, tok, max_length=limit,
                            num_video_tokens=32, num_audio_tokens=8) is None


def test_truncation_never_splits_a_character(env):
    tok = env["tok"]
    prompt, target = _long_prompt(env, "we played " + "\u00e9" * 20)  # each é is two byte-fallback tokens
    full = tokenize_example(prompt, target, tok, max_length=400, num_video_tokens=32, num_audio_tokens=8)
    cut = tokenize_example(prompt, target, tok, max_length=full.num_tokens - 3, num_video_tokens=32,
                           num_audio_tokens=8)
    assert cut.truncated_tokens == 4 and cut.num_tokens == full.num_tokens - 4
    assert "<Transcription>we played " + "\u00e9" * 18 + "</Transcription>" in tok.decode(cut.input_ids)


def test_placeholder_count_mismatch_is_an_error(env):
    prompt, target = _long_prompt(env, "hi")
    with pytest.raises(ValueError, match="4 consecutive video placeholder ids .*found 32"):
        tokenize_example(prompt, target, env["tok"], max_length=400, num_video_tokens=4, num_audio_tokens=8)
    with pytest.raises(ValueError, match="0 consecutive audio placeholder ids .*found 8"):
        tokenize_example(prompt, target, env["tok"], max_length=400, num_video_tokens=32, num_audio_tokens=0)


def test_overlong_policies_in_the_pipeline(env):
    # Record 2 has a target longer than max_length; record 3 a transcription that must be shortened.
    it = iterator(env, "eval", split="overlong")
    (b0, ids0), (b1, ids1) = take(it, 2)
    assert ids0 == ["overlong-000", "overlong-001"] and ids1 == [None, "overlong-003"]
    assert b1["example_mask"].tolist() == [0, 1] and (b1["labels"][0] == -100).all()
    assert it.num_dropped == 1 and it.dropped_ids == ["overlong-002"]
    assert b1["attention_mask"][1].sum() == MAX_LENGTH  # truncated to fit exactly
    train = iterator(env, "train", split="overlong", overlong_policy="drop", batch_size=2)
    batches = take(train, 4)  # two epochs of four records
    seen = [i for _, ids in batches for i in ids]
    # 002 and 003 are dropped (policy "drop"): their rows are padding rows, logged and counted.
    assert {i for i in seen if i is not None} == {"overlong-000", "overlong-001"} and seen.count(None) == 4
    for batch, ids in batches:
        assert batch["example_mask"].tolist() == [int(i is not None) for i in ids]
        assert (batch["labels"][batch["example_mask"] == 0] == -100).all()
    assert train.num_dropped == 4 and sorted(set(train.dropped_ids)) == ["overlong-002", "overlong-003"]
    with pytest.raises(OverlongError, match="overlong-00"):
        take(iterator(env, "eval", split="overlong", overlong_policy="error"), 2)


def test_restore_mid_epoch_gives_the_same_next_batches(env):
    it = iterator(env, "train")
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)  # crosses the epoch boundary (5 batches per epoch)
    restored = iterator(env, "train")
    restored.set_state(json.loads(json.dumps(state)))
    assert_same_batches(take(restored, 4), expected)
    with pytest.raises(ValueError, match="batch size"):
        iterator(env, "train", batch_size=5).set_state(state)


def test_orbax_checkpoint_manager_round_trip(env, tmp_path):
    import orbax.checkpoint as ocp

    it = iterator(env, "train", overlong_policy="drop", split="overlong", batch_size=1)
    take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("step", "data_iter")) as manager:
        manager.save(3, args=ocp.args.Composite(step=ocp.args.JsonSave({"step": 3}),
                                                data_iter=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected, dropped = take(it, 3), it.num_dropped
    restored = iterator(env, "train", overlong_policy="drop", split="overlong", batch_size=1)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("step", "data_iter")) as manager:
        out = manager.restore(3, args=ocp.args.Composite(step=ocp.args.JsonRestore(),
                                                         data_iter=grain.checkpoint.CheckpointRestore(restored)))
    assert out["step"] == {"step": 3}
    assert_same_batches(take(restored, 3), expected)
    assert restored.num_dropped == dropped > 0


def test_process_shards_are_disjoint_and_cover_the_split(env):
    eval_ids, train_ids = [], []
    for index in range(2):
        it = iterator(env, "eval", shard_index=index, shard_count=2, split="test")
        batches = list(it)
        assert len(batches) == it.num_batches == 2  # both processes step in lockstep (5 records, 3 + 2)
        eval_ids.append([i for _, ids in batches for i in ids if i is not None])
        first_epoch = next(iterator(env, "train", shard_index=index, shard_count=2, batch_size=5))[1]
        train_ids.append(first_epoch)
    assert not set(eval_ids[0]) & set(eval_ids[1])
    assert sorted(eval_ids[0] + eval_ids[1]) == [f"test-{i:03d}" for i in range(5)]
    assert not set(train_ids[0]) & set(train_ids[1])
    assert sorted(train_ids[0] + train_ids[1]) == [f"train-{i:03d}" for i in range(10)]


def test_train_global_batch_does_not_depend_on_the_process_count(env):
    # Two processes with batch 2 each see, step by step, exactly the batch of 4 of one process.
    single = take(iterator(env, "train", batch_size=4, seed=3), 6)
    halves = [take(iterator(env, "train", shard_index=p, shard_count=2, batch_size=2, seed=3), 6) for p in (0, 1)]
    for step, (batch, ids) in enumerate(single):
        (b0, ids0), (b1, ids1) = halves[0][step], halves[1][step]
        assert ids0 + ids1 == ids
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), batch[key], err_msg=key)


def test_jax_process_is_the_default_shard(env):
    it = make_iterator(config(env, split="test"), mode="eval", tokenizer=env["tok"])
    assert it.num_examples == 5


def test_seed_determines_the_order(env):
    first = take(iterator(env, "train", seed=1), 6)
    assert_same_batches(take(iterator(env, "train", seed=1), 6), first)
    other = take(iterator(env, "train", seed=2), 6)
    assert [ids for _, ids in other] != [ids for _, ids in first]
    epoch = [i for _, ids in first[:5] for i in ids]
    assert sorted(epoch) == [f"train-{i:03d}" for i in range(10)]  # one epoch = each example once
    assert epoch != sorted(epoch)


def test_eval_covers_every_example_once_with_padding(env):
    it = iterator(env, "eval", split="test")
    batches = list(it)
    assert len(batches) == it.num_batches == 3
    ids = [i for _, row_ids in batches for i in row_ids]
    assert ids == [f"test-{i:03d}" for i in range(5)] + [None]
    last, _ = batches[-1]
    assert last["example_mask"].tolist() == [1, 0]
    assert (last["labels"][1] == -100).all() and last["frames"][1].max() == 0
    video_id = env["tok"].convert_tokens_to_ids("<ImageHere>")
    assert (last["input_ids"][1] == video_id).sum() == 32  # padding rows keep valid placeholder runs
    assert it.num_dropped == 0


def test_caption_split(env):
    it = iterator(env, "eval", split="caption", use_audio=False, num_frames=1)
    batch, ids = next(it)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "frames", "label_index", "example_mask"}
    assert batch["frames"].shape == (2, 1, 224, 224, 3) and batch["label_index"].tolist() == [-1, -1]
    labels = batch["labels"][0]
    assert env["tok"].decode(labels[labels >= 0]) == "a man rides a bike 0###"
    with pytest.raises(ValueError, match="caption record"):
        iterator(env, "eval", split="caption", num_frames=1)


def test_record_shape_must_match_config(env):
    with pytest.raises(ValueError, match="num_frames"):
        next(iterator(env, "eval", num_frames=8))


def test_missing_shards_are_reported(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_shards(tmp_path / "nothing", "train")
    present = r"splits present: \['caption', 'overlong', 'test', 'train'\]"
    with pytest.raises(FileNotFoundError, match=present):
        find_shards(env["shards"], "val")
    assert [p.name for p in find_shards(env["shards"], "train")] == [
        "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]


def test_config_from_mapping_and_validation(env):
    from ml_collections import ConfigDict

    mapping = ConfigDict({"shard_dir": "s", "tokenizer_path": "t", "instructions": ["a?"]})
    cfg = DataConfig.from_mapping(mapping)
    assert cfg.instructions == ("a?",)
    with pytest.raises(ValueError, match="unknown keys"):
        DataConfig.from_mapping({"shard_dirs": "s"})
    with pytest.raises(ValueError, match="overlong_policy"):
        iterator(env, overlong_policy="cut")
    with pytest.raises(ValueError, match="too small for the prompt skeleton"):
        iterator(env, max_length=40)
    with pytest.raises(ValueError, match="mode"):
        make_iterator(config(env), mode="test", tokenizer=env["tok"], shard_index=0, shard_count=1)


@pytest.mark.slow
def test_worker_processes_are_deterministic_and_restorable(env):
    it = iterator(env, "train", worker_count=2)
    take(it, 2)
    state = it.get_state()
    expected = take(it, 3)
    it.close()
    restored = iterator(env, "train", worker_count=2)
    restored.set_state(state)
    assert_same_batches(take(restored, 3), expected)
    restored.close()
    evaluation = iterator(env, "eval", split="test", worker_count=2)
    ids = [i for _, row_ids in evaluation for i in row_ids]
    evaluation.close()
    assert sorted(i for i in ids if i is not None) == [f"test-{i:03d}" for i in range(5)]
    assert ids.count(None) == 1
