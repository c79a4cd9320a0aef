"""Key handling of the encoder mappings: coverage of every parameter, ignorable keys, errors that name keys."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from torch_params import (
    convert_tensor,
    eva_vit_params_from_torch,
    imagebind_audio_params_from_torch,
    ln_vision_params_from_torch,
    qformer_params_from_torch,
)

from deemo_jax.convert import torch_reference
from deemo_jax.convert.common import CheckpointKeyError
from deemo_jax.convert.eva_vit import expected_eva_vit_keys
from deemo_jax.convert.imagebind_audio import LOG_LOGIT_SCALE_KEY, imagebind_audio_key_table
from deemo_jax.convert.qformer import expected_qformer_keys
from deemo_jax.models.eva_vit import EvaViT, EvaViTConfig
from deemo_jax.models.imagebind_audio import ImageBindAudio, ImageBindAudioConfig
from deemo_jax.models.qformer import QFormer, QFormerConfig


def random_state_dict(expected: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=shape).astype(np.float32) for k, shape in expected.items()}


def flat_shapes(tree) -> dict[tuple, tuple[tuple[int, ...], np.dtype]]:
    return {
        tuple(getattr(p, "key", getattr(p, "idx", None)) for p in path): (tuple(np.shape(x)), np.dtype(x.dtype))
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_covers_module(pure: dict, ctor) -> None:
    """The mapping's pure dict has exactly the module's parameter paths, shapes and dtypes."""
    target = nnx.to_pure_dict(nnx.state(nnx.eval_shape(ctor), nnx.Param))
    assert flat_shapes(pure) == flat_shapes(target)


def total_numel(expected: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in expected.values())


# ------------------------------------------------------------------------------------------------- EVA ViT
def test_eva_giant_keys_match_checkpoint_layout():
    expected = expected_eva_vit_keys(EvaViTConfig.giant())
    assert expected["blocks.38.attn.qkv.weight"] == (4224, 1408)
    assert expected["patch_embed.proj.weight"] == (1408, 3, 14, 14)
    assert "blocks.39.norm1.weight" not in expected and "blocks.0.attn.k_bias" not in expected
    assert total_numel(expected) == 985_894_528  # one torch tensor per NNX parameter


def test_eva_mapping_covers_model_and_ignores_extra_blocks():
    config = EvaViTConfig.tiny(depth=2)
    sd = random_state_dict(expected_eva_vit_keys(config))
    extra = random_state_dict(expected_eva_vit_keys(EvaViTConfig.tiny(depth=4)), seed=1)
    sd.update({k: v for k, v in extra.items() if k.startswith(("blocks.2.", "blocks.3."))})  # like blocks.39
    pure = eva_vit_params_from_torch(sd, config)
    assert_covers_module(pure, lambda: EvaViT(config, rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(pure["blocks"][1]["attn"]["qkv"], sd["blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(pure["patch_embed"]["kernel"], sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(pure["blocks"][0]["norm2"]["scale"], sd["blocks.0.norm2.weight"])


def test_eva_mapping_errors_name_the_keys():
    config = EvaViTConfig.tiny(depth=2)
    sd = random_state_dict(expected_eva_vit_keys(config))
    del sd["blocks.1.attn.v_bias"]
    sd["blocks.0.attn.k_bias"] = np.zeros(config.width, np.float32)
    sd["pos_embed"] = np.zeros((1, 50, config.width), np.float32)
    with pytest.raises(CheckpointKeyError) as info:
        eva_vit_params_from_torch(sd, config)
    err = info.value
    assert err.missing == ["blocks.1.attn.v_bias"]
    assert err.unexpected == ["blocks.0.attn.k_bias"]
    assert err.shape_mismatches == [("pos_embed", (1, 257, 32), (1, 50, 32))]
    assert "blocks.1.attn.v_bias" in str(err) and "blocks.0.attn.k_bias" in str(err)


def test_eva_mapping_with_prefix_and_bf16_storage():
    config = EvaViTConfig.tiny(depth=1, param_dtype=jnp.bfloat16)
    sd = random_state_dict(expected_eva_vit_keys(config, "visual_encoder."))
    sd["llama_proj.weight"] = np.zeros((4, 4), np.float32)  # another component's key: out of scope
    pure = eva_vit_params_from_torch(sd, config, prefix="visual_encoder.")
    assert_covers_module(pure, lambda: EvaViT(config, rngs=nnx.Rngs(0)))
    assert pure["cls_token"].dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------ Q-Former
def blip2_like_state_dict(config: QFormerConfig) -> dict[str, np.ndarray]:
    """A BLIP-2 checkpoint's Q-Former part plus the keys the queries-only model must skip or leave alone."""
    sd = random_state_dict(expected_qformer_keys(config))
    h = config.hidden_size
    p = "Qformer.bert."
    ignorable = {
        f"{p}embeddings.word_embeddings.weight": (30, h),
        f"{p}embeddings.position_embeddings.weight": (12, h),
        f"{p}embeddings.position_ids": (1, 12),
        f"{p}encoder.layer.0.intermediate.dense.weight": (config.intermediate_size, h),
        f"{p}encoder.layer.1.output.dense.bias": (h,),
        f"{p}encoder.layer.2.output.LayerNorm.weight": (h,),
        "Qformer.cls.predictions.bias": (30,),
        # Other components of the same checkpoint: out of this mapping's scope.
        "ln_vision.weight": (16,),
        "t5_proj.weight": (8, h),
        "video_Qformer.bert.embeddings.LayerNorm.weight": (h,),
        "video_query_tokens": (1, 3, h),
    }
    sd.update(random_state_dict(ignorable, seed=2))
    return sd


def test_qformer_mapping_covers_model_and_skips_text_parts():
    config = QFormerConfig.tiny(num_layers=3, cross_attention_freq=2, encoder_width=24)
    sd = blip2_like_state_dict(config)
    pure = qformer_params_from_torch(sd, config)
    assert_covers_module(pure, lambda: QFormer(config, rngs=nnx.Rngs(0)))
    assert set(pure["layer"][0]) == {"attention", "crossattention", "intermediate_query", "output_query"}
    assert "crossattention" not in pure["layer"][1]
    cross_key = sd["Qformer.bert.encoder.layer.2.crossattention.self.key.weight"]
    assert cross_key.shape == (config.hidden_size, 24)
    np.testing.assert_array_equal(pure["layer"][2]["crossattention"]["key"]["kernel"], cross_key.T)
    np.testing.assert_array_equal(
        pure["layer"][1]["attention"]["output"]["layernorm"]["bias"],
        sd["Qformer.bert.encoder.layer.1.attention.output.LayerNorm.bias"],
    )


def test_qformer_attention_output_is_required_and_cross_layers_are_strict():
    config = QFormerConfig.tiny(num_layers=3, cross_attention_freq=2, encoder_width=24)
    sd = blip2_like_state_dict(config)
    del sd["Qformer.bert.encoder.layer.1.attention.output.dense.weight"]
    sd["Qformer.bert.encoder.layer.1.crossattention.self.query.weight"] = np.zeros((32, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as info:
        qformer_params_from_torch(sd, config)
    assert info.value.missing == ["Qformer.bert.encoder.layer.1.attention.output.dense.weight"]
    assert info.value.unexpected == ["Qformer.bert.encoder.layer.1.crossattention.self.query.weight"]


@pytest.mark.parametrize(
    ("name", "prefix", "tokens_key", "kv_width", "numel"),
    [
        ("image", "Qformer.bert.", "query_tokens", 1408, 105_162_240),
        ("video", "video_Qformer.bert.", "video_query_tokens", 768, 18_929_664),
        ("audio", "audio_Qformer.bert.", "audio_query_tokens", 1024, 19_697_664),
    ],
)
def test_qformer_branch_keys(name, prefix, tokens_key, kv_width, numel):
    config = getattr(QFormerConfig, name)()
    expected = expected_qformer_keys(config, prefix, tokens_key)
    assert expected[tokens_key] == (1, config.num_queries, 768)
    assert expected[f"{prefix}encoder.layer.0.crossattention.self.value.weight"] == (768, kv_width)
    assert total_numel(expected) == numel


def test_qformer_branch_prefix_conversion():
    config = QFormerConfig.tiny(num_queries=3, encoder_width=16)
    sd = random_state_dict(expected_qformer_keys(config, "audio_Qformer.bert.", "audio_query_tokens"))
    sd["audio_Qformer.bert.embeddings.position_ids"] = np.arange(12)[None]
    sd["query_tokens"] = np.zeros((1, 32, 768), np.float32)  # the image Q-Former's: not this mapping's
    pure = qformer_params_from_torch(sd, config, "audio_Qformer.bert.", "audio_query_tokens")
    assert_covers_module(pure, lambda: QFormer(config, rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(pure["query_tokens"], sd["audio_query_tokens"])


def test_ln_vision_mapping():
    sd = {"ln_vision.weight": np.full(6, 2.0, np.float32), "ln_vision.bias": np.ones(6, np.float32)}
    sd["Qformer.bert.embeddings.LayerNorm.weight"] = np.ones(4, np.float32)  # out of scope
    pure = ln_vision_params_from_torch(sd, width=6)
    np.testing.assert_array_equal(pure["scale"], sd["ln_vision.weight"])
    np.testing.assert_array_equal(pure["bias"], sd["ln_vision.bias"])
    with pytest.raises(CheckpointKeyError, match="ln_vision.bias"):
        ln_vision_params_from_torch({"ln_vision.weight": sd["ln_vision.weight"]}, width=6)


# ------------------------------------------------------------------------------------------ ImageBind audio
@pytest.fixture(scope="module")
def imagebind_checkpoint():
    """The torch reference's state dict (real audio key names) plus other modalities' keys, like the real file."""
    c = ImageBindAudioConfig.tiny()
    ref = torch_reference.ImageBindAudioReference(
        width=c.width, depth=c.depth, heads=c.num_heads, mlp_dim=c.mlp_dim, out_dim=c.out_dim
    )
    sd = {k: v.numpy() for k, v in torch_reference.randomize_(ref, seed=5).state_dict().items()}
    sd["modality_trunks.vision.blocks.0.attn.in_proj_weight"] = np.zeros((96, 32), np.float32)
    sd["modality_preprocessors.text.mask"] = np.zeros((77, 77), np.float32)
    sd["modality_postprocessors.text.1.log_logit_scale"] = np.float32(math.log(100.0))
    sd["modality_heads.vision.2.weight"] = np.zeros((24, 32), np.float32)
    return c, sd


def test_imagebind_mapping_covers_model_and_ignores_other_modalities(imagebind_checkpoint):
    config, sd = imagebind_checkpoint
    pure = imagebind_audio_params_from_torch(sd, config)
    assert_covers_module(pure, lambda: ImageBindAudio(config, rngs=nnx.Rngs(0)))
    key = "modality_trunks.audio.blocks.1.attn.bias_k"
    np.testing.assert_array_equal(pure["blocks"][1]["attn"]["bias_k"], sd[key].reshape(-1))
    # Per-tensor conversion (for a streaming converter) gives the same leaf.
    table = imagebind_audio_key_table(config)
    key = "modality_trunks.audio.blocks.0.attn.in_proj_weight"
    np.testing.assert_array_equal(convert_tensor(table[key], sd[key]), pure["blocks"][0]["attn"]["in_proj"]["kernel"])
    assert table[key].target == ("blocks", 0, "attn", "in_proj", "kernel")


def test_imagebind_mapping_errors(imagebind_checkpoint):
    config, sd = imagebind_checkpoint
    broken = dict(sd)
    del broken["modality_trunks.audio.blocks.0.attn.bias_v"]
    broken["modality_trunks.audio.blocks.0.attn.k_proj_weight"] = np.zeros((32, 32), np.float32)
    with pytest.raises(CheckpointKeyError) as info:
        imagebind_audio_params_from_torch(broken, config)
    assert info.value.missing == ["modality_trunks.audio.blocks.0.attn.bias_v"]
    assert info.value.unexpected == ["modality_trunks.audio.blocks.0.attn.k_proj_weight"]
    wrong_scale = dict(sd, **{LOG_LOGIT_SCALE_KEY: np.float32(math.log(10.0))})
    with pytest.raises(ValueError, match=r"log_logit_scale.*10\.0.*logit_scale = 20\.0"):
        imagebind_audio_params_from_torch(wrong_scale, config)


def test_imagebind_huge_keys():
    expected = {k: r.shape for k, r in imagebind_audio_key_table(ImageBindAudioConfig.huge()).items()}
    assert expected["modality_preprocessors.audio.rgbt_stem.proj.weight"] == (768, 1, 16, 16)
    assert expected["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] == (1, 229, 768)
    assert expected["modality_heads.audio.2.weight"] == (1024, 768)
    assert expected[LOG_LOGIT_SCALE_KEY] == ()
    assert total_numel(expected) == 86_235_648 + 1  # + the scalar logit-scale buffer
