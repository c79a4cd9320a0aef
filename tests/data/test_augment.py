"""Train-time crop of deemo_jax.data.augment (reference_spec §9.1) and its place in the Grain train pipeline:
crop statistics, one box per clip, PyTorch's bicubic, determinism (restarts, epochs, process counts), and no
change to the frames with ``augment=False`` or in eval mode."""

import json

import numpy as np
import pytest

from deemo_jax.data.augment import bicubic_weights, random_resized_crop_clip, resize_bicubic, sample_crop
from deemo_jax.data.pipeline import DataConfig, make_iterator
from tests.data.test_pipeline import LABELS, S, T, mer_record, small_tokenizer, take, write_shard
from tests.train.train_helpers import load_config

SIZE = 224
INSTRUCTIONS = ("From what clues can we infer the emotional state?", "the athlete looks down, we infer what?",
                "he speaks slowly: what state?")


def pattern_frames(i: int, t_count: int = T) -> np.ndarray:
    """Record ``i``'s frames: channel 0 = x, channel 1 = y, channel 2 = a smooth per-record/frame gradient."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    frames = np.empty((t_count, SIZE, SIZE, 3), np.uint8)
    for t in range(t_count):
        frames[t, ..., 0], frames[t, ..., 1] = x, y
        frames[t, ..., 2] = (x + y) // 2 + 2 * i + 10 * t
    return frames


# ---------------------------------------------------------------- crop parameters


def test_crop_parameter_statistics():
    rng = np.random.default_rng(0)
    boxes = np.array([sample_crop(rng, SIZE, SIZE) for _ in range(4000)])
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= SIZE).all() and (left + w <= SIZE).all()
    area = h * w / SIZE**2
    ratio = w / h
    # Rounding the sides to pixels moves area and ratio by < 1 % from their sampled values.
    assert area.min() >= 0.49 and area.max() <= 1.0
    assert ratio.min() >= 0.74 and ratio.max() <= 1.35
    assert area.min() < 0.51 and area.max() > 0.95  # the whole scale range is drawn
    assert ratio.min() < 0.76 and ratio.max() > 1.31  # and the whole ratio range
    # Area uniform in the scale (where every ratio fits: area < 0.75): equal mass in equal bins.
    low = np.histogram(area, bins=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75])[0]
    assert low.max() / low.min() < 1.25
    # Log-uniform ratio: symmetric around 1 in log space (uniform in ratio would put ~43 % below 1).
    assert abs(np.mean(ratio < 1) - 0.5) < 0.03
    assert abs(np.mean(np.log(ratio))) < 0.02
    # Placement uniform over the free range: both ends are reached.
    assert top.min() == 0 and left.min() == 0 and (SIZE - h - top).min() == 0 and (SIZE - w - left).min() == 0


def test_crop_fallback_is_the_central_box_clamped_to_the_ratio():
    rng = np.random.default_rng(0)
    assert sample_crop(rng, SIZE, SIZE, attempts=0) == (0, 0, SIZE, SIZE)
    assert sample_crop(rng, 100, 300, attempts=0) == (0, (300 - 133) // 2, 100, 133)  # 3:1 clamped to 4:3
    assert sample_crop(rng, 300, 100, attempts=0) == ((300 - 133) // 2, 0, 133, 100)  # 1:3 clamped to 3:4
    # Crops no try can fit (scale > 1) fall back too.
    assert sample_crop(rng, 100, 300, scale=(2.0, 3.0)) == (0, 83, 100, 133)


def test_crop_draws_follow_the_generator():
    a = [sample_crop(np.random.default_rng(5), SIZE, SIZE) for _ in range(2)]
    b = sample_crop(np.random.default_rng(6), SIZE, SIZE)
    assert a[0] == a[1] and a[0] != b


# ---------------------------------------------------------------- the clip transform


def test_one_crop_for_all_frames_of_a_clip():
    frames = pattern_frames(3, t_count=4)
    frames[3] = frames[0]  # an identical copy
    for seed in range(8):
        out = random_resized_crop_clip(frames, np.random.default_rng(seed))
        assert out.shape == (4, SIZE, SIZE, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[3], out[0])
        np.testing.assert_array_equal(out[..., :2], np.broadcast_to(out[:1, ..., :2], out[..., :2].shape))
        # Frames 0..2 differ by +10 per frame in channel 2: the same box and weights keep that offset exactly.
        for t in (1, 2):
            np.testing.assert_array_equal(out[t, ..., 2].astype(int) - out[0, ..., 2], 10 * t)
        # Channels 0/1 hold the input's x/y: the output spans exactly the sampled box.
        top, left, h, w = sample_crop(np.random.default_rng(seed), SIZE, SIZE)
        assert (h, w) != (SIZE, SIZE)
        x, y = out[0, ..., 0].astype(int), out[0, ..., 1].astype(int)
        assert abs(x[:, 0] - left).max() <= 1 and abs(x[:, -1] - (left + w - 1)).max() <= 1
        assert abs(y[0] - top).max() <= 1 and abs(y[-1] - (top + h - 1)).max() <= 1


def test_resize_is_pytorchs_bicubic_truncated_to_uint8():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    frames[1] = pattern_frames(0, 1)[0]  # a smooth frame besides the noise
    for seed in range(3):
        out = random_resized_crop_clip(frames, np.random.default_rng(seed))
        top, left, h, w = sample_crop(np.random.default_rng(seed), SIZE, SIZE)
        crop = torch.from_numpy(frames[:, top:top + h, left:left + w]).permute(3, 0, 1, 2).float()
        ref = torch.nn.functional.interpolate(crop, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
        ref = ref.permute(1, 2, 3, 0).numpy().astype(np.float64)
        expected = np.floor(np.clip(ref, 0, 255)).astype(np.uint8)  # ToUint8 truncates (overshoot clipped here)
        differ = out != expected
        # Only float32 rounding of torch's own result can tip a value over an integer.
        assert differ.mean() < 1e-3
        assert (np.abs(out[differ].astype(int) - expected[differ]) == 1).all()
        assert (np.abs(ref[differ] - np.round(ref[differ])) < 5e-3).all()
        assert (out[ref > 255.5] == 255).all() and (out[ref < -0.5] == 0).all() and (ref > 255.5).any()


def test_bicubic_weights():
    np.testing.assert_array_equal(bicubic_weights(SIZE, SIZE), np.eye(SIZE))  # full box: frames unchanged
    weights = bicubic_weights(150, SIZE)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
    assert weights.min() < 0  # cubic lobes (a = -0.75), unlike bilinear
    frames = np.full((1, 150, 170, 3), 77, np.uint8)
    np.testing.assert_array_equal(resize_bicubic(frames), 77)  # constants survive the float rounding


# ---------------------------------------------------------------- in the train pipeline


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """test_pipeline's records (ids train-000..009, test-000..002), with patterned frames."""
    root = tmp_path_factory.mktemp("augment")
    shards = root / "shards"
    shards.mkdir()
    write_shard(shards / "train.array_record",
                [{**mer_record(i, "train"), "frames": pattern_frames(i)} for i in range(10)])
    write_shard(shards / "test.array_record",
                [{**mer_record(i, "test"), "frames": pattern_frames(i)} for i in range(3)])
    (shards / "metadata.json").write_text(json.dumps({"labels": LABELS}))
    return {"shards": shards, **small_tokenizer(root / "tok")}


def iterator(env, mode="train", shard_index=0, shard_count=1, **overrides):
    fields = dict(shard_dir=str(env["shards"]), split="train", tokenizer_path=str(env["tok_dir"]), batch_size=2,
                  max_length=160, num_frames=T, num_audio_clips=S, read_threads=1, read_buffer_size=4,
                  instructions=INSTRUCTIONS)
    fields.update(overrides)
    return make_iterator(DataConfig(**fields), mode=mode, tokenizer=env["tok"], shard_index=shard_index,
                         shard_count=shard_count)


def rows(batches):
    """``[(id, {key: row})]`` of the examples of ``batches`` in order."""
    return [(i, {k: v[r] for k, v in batch.items()}) for batch, ids in batches for r, i in enumerate(ids)]


def record_frames(example_id):
    return pattern_frames(int(example_id.split("-")[1]))


def test_train_frames_are_cropped_deterministically(env):
    first, again = take(iterator(env), 5), take(iterator(env), 5)  # one epoch: 10 examples
    for (id_a, a), (id_b, b) in zip(rows(first), rows(again), strict=True):
        assert id_a == id_b
        np.testing.assert_array_equal(a["frames"], b["frames"])
        assert a["frames"].shape == (T, SIZE, SIZE, 3) and a["frames"].dtype == np.uint8
        assert not np.array_equal(a["frames"], record_frames(id_a))  # cropped
        xy = a["frames"][..., :2]
        np.testing.assert_array_equal(xy, np.broadcast_to(xy[:1], xy.shape))  # one box for the clip
    other_seed = rows(take(iterator(env, seed=1), 5))
    by_id = dict(rows(first))
    assert all(not np.array_equal(row["frames"], by_id[i]["frames"]) for i, row in other_seed)


def test_each_epoch_draws_new_crops(env):
    two_epochs = rows(take(iterator(env), 10))
    epochs = [dict(two_epochs[:10]), dict(two_epochs[10:])]
    assert sorted(epochs[0]) == sorted(epochs[1]) == [f"train-{i:03d}" for i in range(10)]
    for example_id, row in epochs[0].items():
        assert not np.array_equal(row["frames"], epochs[1][example_id]["frames"]), example_id


def test_restore_mid_epoch_gives_the_same_crops(env):
    it = iterator(env)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)  # crosses into the second epoch
    restored = iterator(env)
    restored.set_state(state)
    for (id_a, a), (id_b, b) in zip(rows(take(restored, 4)), rows(expected), strict=True):
        assert id_a == id_b
        np.testing.assert_array_equal(a["frames"], b["frames"])


def test_crops_do_not_depend_on_the_process_count(env):
    single = take(iterator(env, batch_size=4, seed=3), 4)
    halves = [take(iterator(env, shard_index=p, shard_count=2, batch_size=2, seed=3), 4) for p in (0, 1)]
    for step, (batch, ids) in enumerate(single):
        (b0, ids0), (b1, ids1) = halves[0][step], halves[1][step]
        assert ids0 + ids1 == ids
        np.testing.assert_array_equal(np.concatenate([b0["frames"], b1["frames"]]), batch["frames"])
        assert not np.array_equal(batch["frames"][0], record_frames(ids[0]))


def test_augment_off_gives_the_record_frames_and_the_same_prompts(env):
    on, off = rows(take(iterator(env), 10)), rows(take(iterator(env, augment=False), 10))
    for (id_on, a), (id_off, b) in zip(on, off, strict=True):
        assert id_on == id_off
        np.testing.assert_array_equal(b["frames"], record_frames(id_off))
        for key in ("input_ids", "labels", "attention_mask", "fbank", "label_index", "example_mask"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # the prompt's draws are unchanged
    # The prompt does draw from the rng (several instructions): another seed picks other instructions.
    off_ids = {i: row["input_ids"] for i, row in off[:10]}
    other = dict(rows(take(iterator(env, augment=False, seed=1), 5)))
    assert any(not np.array_equal(row["input_ids"], off_ids[i]) for i, row in other.items())


def test_eval_never_augments(env):
    batches = list(iterator(env, "eval", split="test", augment=True))
    examples = [(i, row) for i, row in rows(batches) if i is not None]
    assert len(examples) == 3
    for example_id, row in examples:
        np.testing.assert_array_equal(row["frames"], record_frames(example_id))


def test_config_flag():
    assert DataConfig().augment is True
    assert load_config("instruct.py").data.augment is True  # the reference's recipe
    assert load_config("pretrain.py").data.augment is True
    assert load_config("instruct.py", "demo").data.augment is False
    assert load_config("instruct.py", "demo_frozen_llm").data.augment is False
    assert DataConfig.from_mapping(load_config("instruct.py", "demo").data).augment is False
