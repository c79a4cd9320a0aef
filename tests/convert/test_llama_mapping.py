"""HF LLaMA state dict -> NNX pure dict: structure, transposes, dtypes and strict key errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from deemo_jax.convert.common import CheckpointKeyError
from deemo_jax.convert.llama import (
    convert_llama_tensor,
    expected_llama_keys,
    llama_config_from_hf,
    llama_key_to_target,
    llama_params_from_torch,
)
from deemo_jax.models.llama import Llama, LlamaConfig

CONFIG = LlamaConfig.tiny()  # GQA: k/v projections are narrower than q


@pytest.fixture(scope="module")
def abstract_pure_dict():
    model = nnx.eval_shape(lambda: Llama(CONFIG, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model))


def state_dict(prefix: str = "", dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in expected_llama_keys(CONFIG, prefix).items()}


def test_params_fit_the_model_state_exactly(abstract_pure_dict):
    sd = state_dict()
    params = llama_params_from_torch(sd, CONFIG)
    shapes = jax.tree.map(np.shape, params)
    assert shapes == jax.tree.map(lambda x: x.shape, abstract_pure_dict)
    # nnx.List indices are int keys in the pure dict.
    assert sorted(params["layers"]) == list(range(CONFIG.num_hidden_layers))
    np.testing.assert_array_equal(params["layers"][1]["self_attn"]["k_proj"]["kernel"],
                                  sd["model.layers.1.self_attn.k_proj.weight"].T)  # fmt: skip
    np.testing.assert_array_equal(params["layers"][0]["mlp"]["down_proj"]["kernel"],
                                  sd["model.layers.0.mlp.down_proj.weight"].T)  # fmt: skip
    np.testing.assert_array_equal(params["lm_head"]["kernel"], sd["lm_head.weight"].T)
    np.testing.assert_array_equal(params["embed_tokens"]["embedding"], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(params["layers"][1]["post_attention_layernorm"]["scale"],
                                  sd["model.layers.1.post_attention_layernorm.weight"])  # fmt: skip
    # The loading path of the converter: abstract model (no allocation), fill in, merge.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(CONFIG, rngs=nnx.Rngs(1))))
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(model.norm.scale[...]), sd["model.norm.weight"])


def test_dtype_is_kept():
    params = llama_params_from_torch(state_dict(dtype=np.float16), CONFIG)
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float16)}


def test_inv_freq_is_ignored_and_prefix_is_honoured():
    prefix = "llama_model."
    sd = state_dict(prefix)
    sd[f"{prefix}model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    params = llama_params_from_torch(sd, CONFIG, prefix)
    assert len(jax.tree.leaves(params)) == len(expected_llama_keys(CONFIG))
    assert (
        llama_key_to_target(f"{prefix}model.layers.1.self_attn.rotary_emb.inv_freq", CONFIG, prefix) is None
    )
    # Other modules' keys in a combined state dict are unexpected unless explicitly allowed.
    sd["video_Qformer.bert.embeddings.position_ids"] = np.zeros((1, 512), np.int64)
    with pytest.raises(CheckpointKeyError) as info:
        llama_params_from_torch(sd, CONFIG, prefix)
    assert info.value.unexpected == ["video_Qformer.bert.embeddings.position_ids"]
    assert llama_params_from_torch(sd, CONFIG, prefix, allow_unexpected=True).keys() == params.keys()


def test_missing_unexpected_and_mis_shaped_keys_are_all_reported():
    sd = state_dict()
    del sd["model.layers.1.mlp.up_proj.weight"]
    sd["model.layers.2.mlp.up_proj.weight"] = np.zeros((64, 32), np.float32)  # layer beyond num_hidden_layers
    sd["model.layers.0.self_attn.v_proj.weight"] = np.zeros((32, 32), np.float32)  # MHA shape in a GQA model
    with pytest.raises(CheckpointKeyError) as info:
        llama_params_from_torch(sd, CONFIG)
    err = info.value
    assert err.missing == ["model.layers.1.mlp.up_proj.weight"]
    assert err.unexpected == ["model.layers.2.mlp.up_proj.weight"]
    assert err.shape_mismatches == [("model.layers.0.self_attn.v_proj.weight", (16, 32), (32, 32))]
    text = str(err)
    for key in ("model.layers.1.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight", "v_proj"):
        assert key in text


def test_single_tensor_conversion_for_streaming():
    weight = np.arange(16 * 32, dtype=np.float32).reshape(16, 32)
    path, kernel = convert_llama_tensor("model.layers.1.self_attn.v_proj.weight", weight, CONFIG)
    assert path == ("layers", 1, "self_attn", "v_proj", "kernel")
    np.testing.assert_array_equal(kernel, weight.T)
    assert kernel.flags["C_CONTIGUOUS"]
    target = llama_key_to_target("model.norm.weight", CONFIG)
    assert (target.path, target.torch_shape) == (("norm", "scale"), (32,))
    mismatch = r"1 shape mismatch: \[lm_head.weight: expected \(128, 32\), got \(32, 128\)\]"
    with pytest.raises(CheckpointKeyError, match=mismatch):
        convert_llama_tensor("lm_head.weight", np.zeros((32, 128), np.float32), CONFIG)
    for bad in ("model.layers.2.mlp.up_proj.weight", "model.layers.01.mlp.up_proj.weight",
                "model.layers.0.mlp.up_proj.bias", "llama_model.lm_head.weight"):  # fmt: skip
        with pytest.raises(CheckpointKeyError, match="1 unexpected keys"):
            llama_key_to_target(bad, CONFIG)


def test_hf_config_reading():
    """Moved here with the function (it was ``LlamaConfig.from_hf_config``): reading config.json is conversion."""
    # An old-style (transformers 4.x) Vicuna config.json: no num_key_value_heads, no rope_theta.
    old = {
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 2048, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_scaling": None, "torch_dtype": "float16",
    }  # fmt: skip
    assert llama_config_from_hf(old) == LlamaConfig.vicuna_7b()
    assert llama_config_from_hf({**old, "rope_theta": 500000.0}).rope_theta == 500000.0
    assert llama_config_from_hf(old, remat=True).remat
    assert not hasattr(LlamaConfig, "from_hf_config")  # one place for it: deemo_jax.convert.llama

    with pytest.raises(ValueError, match="rope_scaling.*'linear'"):
        llama_config_from_hf({**old, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="rope_parameters.*'llama3'"):
        llama_config_from_hf({**old, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        llama_config_from_hf({**old, "tie_word_embeddings": True})
    with pytest.raises(ValueError, match=r"config.json lacks \['vocab_size'\]"):
        llama_config_from_hf({k: v for k, v in old.items() if k != "vocab_size"})
