"""DeemoLlama assembly: splicing, frozen/trainable gradient flow, shapes, real-size branch counts, presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deemo_jax.models.deemo_llama import (
    PAPER_TRAINABLE,
    PRESETS,
    DeemoLlama,
    DeemoLlamaConfig,
    check_inputs,
)
from deemo_jax.models.llama import LlamaConfig
from deemo_jax.train.step import model_logits, token_loss_sum


def param_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def tiny(numpy_init):
    config = DeemoLlamaConfig.tiny()
    return config, numpy_init(lambda: DeemoLlama(config, rngs=nnx.Rngs(0)))


def make_batch(config: DeemoLlamaConfig, batch: int = 2, frames: int = 2, clips: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    nv, na = config.num_video_tokens, config.num_audio_tokens
    vocab = config.llm.vocab_size
    prefix = rng.integers(3, vocab, size=3)
    suffix = rng.integers(3, vocab, size=5)
    row = np.concatenate(
        [[1], prefix, [config.audio_placeholder_id] * na, prefix, [config.video_placeholder_id] * nv, suffix]
    )
    ids = np.tile(row, (batch, 1)).astype(np.int32)
    ids[:, -5:] = rng.integers(3, vocab, size=(batch, 5))
    labels = np.full_like(ids, -100)
    labels[:, -4:] = ids[:, -4:]
    size, audio = config.vit.img_size, config.audio_encoder
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "labels": labels,
        "frames": rng.integers(0, 256, size=(batch, frames, size, size, 3), dtype=np.uint8),
        "fbank": rng.normal(size=(batch, clips, 1, audio.num_mel_bins, audio.target_len)).astype(np.float32),
    }


def test_placeholders_are_replaced_by_projected_tokens(tiny):
    config, model = tiny
    batch = make_batch(config)

    @nnx.jit
    def run(model, ids, frames, fbank):
        return (
            model.embed_inputs(ids, frames, fbank),
            model.encode_video(frames),
            model.encode_audio(fbank),
            model.llama.embed(ids),
        )

    embeds, video, audio, plain = run(model, batch["input_ids"], batch["frames"], batch["fbank"])
    ids = batch["input_ids"]
    vpos = np.flatnonzero(ids[0] == config.video_placeholder_id)
    apos = np.flatnonzero(ids[0] == config.audio_placeholder_id)
    np.testing.assert_allclose(embeds[:, vpos], video, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embeds[:, apos], audio, rtol=0, atol=1e-6)
    text = (ids != config.video_placeholder_id) & (ids != config.audio_placeholder_id)
    np.testing.assert_array_equal(np.asarray(embeds)[text], np.asarray(plain)[text])


def test_absent_modalities_run_text_only(tiny):
    config, model = tiny
    ids = np.array([[1, 5, 6, 7, 8]], np.int32)
    logits = nnx.jit(lambda m, i: m(i, jnp.ones_like(i)))(model, ids)
    assert logits.shape == (1, 5, config.llm.vocab_size)


def test_gradients_reach_trainable_branches_through_frozen_llm(tiny):
    config, model = tiny
    batch = {k: jnp.asarray(v) for k, v in make_batch(config).items()}
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(params):
        return token_loss_sum(model_logits(nnx.merge(graphdef, params), batch, None), batch["labels"])

    grads = jax.jit(jax.grad(loss_fn))(params)

    def max_abs(tree):
        return max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(tree))

    for name in PAPER_TRAINABLE:
        assert max_abs(grads[name]) > 0, f"no gradient reached {name} through the LLM"
    # The frozen encoders sit behind stop_gradient: even when differentiated, they get exactly zero.
    for name in ("visual_encoder", "ln_vision", "image_qformer", "audio_encoder"):
        assert max_abs(grads[name]) == 0.0, name


def test_bad_inputs_name_expected_and_actual(tiny):
    config, model = tiny
    batch = make_batch(config)
    with pytest.raises(ValueError, match=r"expected 8 video placeholder tokens .* got 7"):
        ids = batch["input_ids"].copy()
        ids[0, np.flatnonzero(ids[0] == config.video_placeholder_id)[0]] = 5
        check_inputs(config, ids, batch["frames"], batch["fbank"])
    with pytest.raises(ValueError, match=r"frames: batch size 1 does not match input_ids batch size 2"):
        model.embed_inputs(batch["input_ids"], batch["frames"][:1], batch["fbank"])
    with pytest.raises(ValueError, match=r"expected 32x32 images, got 48x48|expected \d+x\d+ images, got 48x48"):
        model.encode_video(jnp.zeros((1, 1, 48, 48, 3), jnp.uint8))
    with pytest.raises(ValueError, match=r"no video input was given"):
        check_inputs(config, batch["input_ids"], None, batch["fbank"])
    with pytest.raises(ValueError, match=r"at most 32 frames"):
        model.encode_video(jnp.zeros((1, 33, config.vit.img_size, config.vit.img_size, 3), jnp.uint8))


def test_real_size_branch_parameter_counts():
    config = DeemoLlamaConfig.deemo_7b()
    abstract = nnx.eval_shape(lambda: DeemoLlama(config, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    video = sum(param_count(state[k]) for k in ("video_qformer", "llama_proj", "video_frame_position_embedding"))
    audio = sum(param_count(state[k]) for k in ("audio_qformer", "audio_llama_proj", "audio_position_embedding"))
    assert video == 22_104_064
    assert audio == 22_855_680
    assert param_count(state["llama"]) == 6_738_415_616
    # bf16 frozen parts, fp32 trainable parts.
    assert {x.dtype for x in jax.tree.leaves(state["llama"])} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state["video_qformer"])} == {jnp.dtype(jnp.float32)}


def test_presets_and_overrides():
    assert DeemoLlamaConfig.preset("deemo_7b") == DeemoLlamaConfig.deemo_7b()
    assert DeemoLlamaConfig.preset("tiny") == DeemoLlamaConfig.tiny()
    demo = DeemoLlamaConfig.preset("demo", {"llm": {"vocab_size": 1000}, "frozen_dtype": jnp.bfloat16})
    assert (demo.llm.hidden_size, demo.llm.intermediate_size, demo.llm.vocab_size) == (128, 256, 1000)
    assert demo.frozen_dtype == jnp.bfloat16 and demo.vit == DeemoLlamaConfig.tiny().vit
    one = PRESETS["tiny_1layer"]()
    assert one.vit.depth == one.audio_encoder.depth == one.llm.num_hidden_layers == 1
    assert one.image_qformer.num_layers == one.video_qformer.num_layers == one.audio_qformer.num_layers == 1
    llm = LlamaConfig.tiny(vocab_size=77)
    replaced = DeemoLlamaConfig.preset("tiny", {"llm": llm, "audio_encoder": None, "audio_qformer": None})
    assert replaced.llm is llm and replaced.audio_encoder is None
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; one of \['deemo_7b', 'demo', 'tiny', 'tiny_1"):
        DeemoLlamaConfig.preset("huge")
    with pytest.raises(ValueError, match=r"DeemoLlamaConfig.vit has no field 'layers'"):
        DeemoLlamaConfig.preset("tiny", {"vit": {"layers": 1}})
    with pytest.raises(ValueError, match=r"DeemoLlamaConfig.vit is None, not a config"):
        DeemoLlamaConfig.preset("tiny", {"vit": None}).with_overrides({"vit": {"depth": 1}})


def test_attention_impl_reaches_every_attention_caller():
    config = dataclasses.replace(DeemoLlamaConfig.tiny(), audio_encoder=None, audio_qformer=None)
    config = config.with_attention_impl("xla")
    assert config.vit.attention_impl == config.llm.attention_impl == "xla" and config.audio_encoder is None
    model = nnx.eval_shape(lambda: DeemoLlama(DeemoLlamaConfig.tiny().with_attention_impl("cudnn"), rngs=nnx.Rngs(0)))
    assert model.visual_encoder.blocks[0].attn.implementation == "cudnn"
    assert model.audio_encoder.blocks[0].attn.implementation == "cudnn"
    assert model.llama.config.attention_impl == "cudnn"
