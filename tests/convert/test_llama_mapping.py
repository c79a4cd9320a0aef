"""HF LLaMA state dict -> NNX pure dict: structure, transposes, dtypes and strict key errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from deemo_jax.convert.common import CheckpointKeyError
from deemo_jax.convert.llama import (
    convert_llama_tensor,
    expected_llama_keys,
    llama_config_from_hf,
    llama_config_to_hf,
    llama_key_table,
    llama_key_to_target,
    llama_optional_keys,
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

    with pytest.raises(ValueError, match=r"config.json lacks \['vocab_size'\]"):
        llama_config_from_hf({k: v for k, v in old.items() if k != "vocab_size"})


# An old-style LLaMA config.json, the base of the cases below.
OLD = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048,
    "hidden_act": "silu", "tie_word_embeddings": False, "rope_scaling": None,
}  # fmt: skip
LLAMA31_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}  # fmt: skip


def test_hf_config_family_fields():
    """tie_word_embeddings, RoPE scaling in every spelling, head_dim, biases, qwen2 and mistral."""
    vicuna = LlamaConfig.vicuna_7b()
    assert llama_config_from_hf({**OLD, "tie_word_embeddings": True}).tie_word_embeddings
    # Linear: transformers 4's "type" key under rope_scaling, and transformers 5's rope_parameters.
    for d in ({**OLD, "rope_scaling": {"type": "linear", "factor": 2.0}},
              {**OLD, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}):  # fmt: skip
        c = llama_config_from_hf(d)
        assert (c.rope_type, c.rope_factor, c.rope_theta) == ("linear", 2.0, 10000.0)
    # Llama 3.1 as written by transformers 4 (rope_scaling + rope_theta) and 5 (rope_parameters).
    for d in ({**OLD, "rope_theta": 5e5, "rope_scaling": LLAMA31_SCALING},
              {**OLD, "rope_parameters": {**LLAMA31_SCALING, "rope_theta": 5e5}}):  # fmt: skip
        c = llama_config_from_hf(d)
        assert (c.rope_type, c.rope_factor, c.rope_low_freq_factor, c.rope_high_freq_factor) == ("llama3", 8, 1, 4)
        assert (c.rope_original_max_position_embeddings, c.rope_theta) == (8192, 5e5)
    # transformers' fallback for a missing original_max_position_embeddings: the context length.
    no_original = {k: v for k, v in LLAMA31_SCALING.items() if k != "original_max_position_embeddings"}
    assert llama_config_from_hf({**OLD, "rope_scaling": no_original}).rope_original_max_position_embeddings == 2048
    assert llama_config_from_hf({**OLD, "rope_scaling": {"type": "default"}}) == vicuna
    # head_dim: equal to hidden/heads is the plain config; another value is kept.
    assert llama_config_from_hf({**OLD, "head_dim": 128}) == vicuna
    assert llama_config_from_hf({**OLD, "head_dim": 64}).head_dim == 64
    c = llama_config_from_hf({**OLD, "attention_bias": True, "mlp_bias": True})
    assert (c.qkv_bias, c.o_proj_bias, c.mlp_bias) == (True, True, True)
    # Qwen2: q/k/v biases (whatever attention_bias says, as in transformers), tied per config.
    qwen = {**OLD, "model_type": "qwen2", "num_key_value_heads": 8, "use_sliding_window": False,
            "sliding_window": 4096, "max_window_layers": 28, "tie_word_embeddings": True, "attention_bias": False,
            "layer_types": ["full_attention"] * 32, "rope_theta": 1e6}  # fmt: skip
    c = llama_config_from_hf(qwen)
    assert (c.qkv_bias, c.o_proj_bias, c.mlp_bias) == (True, False, False)
    assert (c.tie_word_embeddings, c.rope_theta, c.num_key_value_heads) == (True, 1e6, 8)
    mistral = {**OLD, "model_type": "mistral", "sliding_window": None}
    assert llama_config_from_hf(mistral).num_key_value_heads == 8  # MistralConfig's default
    assert llama_config_from_hf({**mistral, "num_key_value_heads": 32}) == vicuna
    # SmolLM2-135M-Instruct (what the GGUF converter reads): tied, head_dim spelled out, rope_theta 1e5.
    smol = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
            "hidden_size": 576, "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192,
            "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
            "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": False,
            "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True, "vocab_size": 49152}  # fmt: skip
    c = llama_config_from_hf(smol)
    assert (c.head_dim, c.head_dim_override, c.tie_word_embeddings, c.rope_theta) == (64, None, True, 1e5)
    assert "lm_head.weight" not in expected_llama_keys(c)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}},
         r"rope_scaling.rope_type 'yarn' is not supported"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, r"rope_scaling.rope_type 'dynamic' is not supported"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
         r"rope_parameters.rope_type 'longrope' is not supported"),
        ({"rope_scaling": {"type": "linear"}}, r"lacks rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"lacks rope_scaling.low_freq_factor"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0, "mscale": 1.0}},
         r"rope_scaling.mscale is not understood for rope_type 'linear'"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default"}}},
         r"rope_parameters.full_attention is a per-layer-type RoPE table"),
        ({"rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
         r"rope_theta 10000.0 disagrees with rope_parameters.rope_theta 500000.0"),
        ({"partial_rotary_factor": 0.5}, r"partial_rotary_factor 0.5 is not supported"),
        ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported"),
        ({"model_type": "gemma"}, r"model_type 'gemma' is not supported"),
        ({"model_type": "qwen2", "use_sliding_window": True}, r"use_sliding_window=true"),
        ({"model_type": "qwen2", "layer_types": ["full_attention", "sliding_attention"]},
         r"layer_types has \['sliding_attention'\]"),
        ({"model_type": "mistral"}, r"sliding_window 4096 .*is not supported"),  # MistralConfig's default
        ({"model_type": "mistral", "sliding_window": 4096}, r"sliding_window 4096"),
        ({"quantization_config": {"quant_method": "gptq"}}, r"quantization_config is set"),
        ({"tie_word_embeddings": "yes"}, r"tie_word_embeddings must be true or false, got 'yes'"),
    ],
)  # fmt: skip
def test_hf_config_refuses_what_it_does_not_compute(change, message):
    with pytest.raises(ValueError, match=r"^config\.json: .*" + message) as info:
        llama_config_from_hf({**OLD, **change})
    assert "\n" not in str(info.value)


def test_config_to_hf_is_the_inverse():
    transformers = pytest.importorskip("transformers")
    cases = {
        "llama": LlamaConfig.tiny(),
        "llama3+tied+head_dim+biases": LlamaConfig.tiny(
            rope_type="llama3", rope_factor=8.0, rope_original_max_position_embeddings=64, tie_word_embeddings=True,
            head_dim_override=16, qkv_bias=True, o_proj_bias=True, mlp_bias=True,
        ),
        "linear": LlamaConfig.tiny(rope_type="linear", rope_factor=2.0),
        "qwen2": LlamaConfig.tiny(qkv_bias=True, tie_word_embeddings=True),
    }  # fmt: skip
    for name, config in cases.items():
        d = llama_config_to_hf(config)
        assert d["model_type"] == ("qwen2" if name == "qwen2" else "llama")
        assert llama_config_from_hf(d) == config, name
        # transformers reads it the same way (through its own config class).
        assert llama_config_from_hf(transformers.AutoConfig.for_model(**d).to_dict()) == config, name
    with pytest.raises(ValueError, match="no Hugging Face LLaMA-family equivalent"):
        llama_config_to_hf(LlamaConfig.tiny(qkv_bias=True, mlp_bias=True))


def _random(keys: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in keys.items()}


def test_bias_and_head_dim_keys():
    config = LlamaConfig.tiny(qkv_bias=True, o_proj_bias=False, mlp_bias=True, head_dim_override=16)
    keys = expected_llama_keys(config)
    layer0 = {k.removeprefix("model.layers.0."): s for k, s in keys.items() if k.startswith("model.layers.0.")}
    assert {k: s for k, s in layer0.items() if k.endswith(".bias")} == {
        "self_attn.q_proj.bias": (64,), "self_attn.k_proj.bias": (32,), "self_attn.v_proj.bias": (32,),
        "mlp.gate_proj.bias": (64,), "mlp.up_proj.bias": (64,), "mlp.down_proj.bias": (32,),
    }  # fmt: skip
    assert (layer0["self_attn.q_proj.weight"], layer0["self_attn.o_proj.weight"]) == ((64, 32), (32, 64))
    sd = _random(keys)
    params = llama_params_from_torch(sd, config)
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(model)))
    np.testing.assert_array_equal(params["layers"][1]["self_attn"]["k_proj"]["bias"],
                                  sd["model.layers.1.self_attn.k_proj.bias"])  # fmt: skip
    # A bias the config does not have is unexpected, not silently dropped.
    with pytest.raises(CheckpointKeyError, match="1 unexpected keys.*o_proj.bias"):
        llama_key_to_target("model.layers.0.self_attn.o_proj.bias", config)
    with pytest.raises(CheckpointKeyError) as info:
        llama_params_from_torch({**sd, "model.layers.0.self_attn.o_proj.bias": np.zeros(32, np.float32)}, config)
    assert info.value.unexpected == ["model.layers.0.self_attn.o_proj.bias"]


def test_tied_lm_head_absent_equal_or_refused():
    config = LlamaConfig.tiny(tie_word_embeddings=True)
    keys = expected_llama_keys(config)
    assert "lm_head.weight" not in keys and llama_optional_keys(config) == {"lm_head.weight": (128, 32)}
    sd = _random(keys)
    without = llama_params_from_torch(sd, config)  # what save_pretrained writes: no lm_head.weight
    assert "lm_head" not in without
    equal = llama_params_from_torch({**sd, "lm_head.weight": sd["model.embed_tokens.weight"].copy()}, config)
    assert jax.tree.map(np.shape, equal) == jax.tree.map(np.shape, without)
    stale = {**sd, "lm_head.weight": sd["model.embed_tokens.weight"] + 1}
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight.*tie_word_embeddings"):
        llama_params_from_torch(stale, config)
    # The streaming table checks it one tensor at a time, in either order.
    for order in (["lm_head.weight", "model.embed_tokens.weight"], ["model.embed_tokens.weight", "lm_head.weight"]):
        table = llama_key_table(config, available=stale)
        assert table["lm_head.weight"].target is None
        table[order[0]].transform(stale[order[0]])
        with pytest.raises(ValueError, match="differs"):
            table[order[1]].transform(stale[order[1]])
        table = llama_key_table(config, available=sd)  # no lm_head in the file: nothing to check
        assert "lm_head.weight" not in table
    # An untied config still needs lm_head.weight.
    with pytest.raises(CheckpointKeyError, match="1 missing keys: \\[lm_head.weight\\]"):
        llama_params_from_torch(sd, LlamaConfig.tiny())


# --------------------------------------------------------------- save_pretrained -> --source hf-llama -> load
def _hf_tiny(model_type: str, **fields):
    transformers = pytest.importorskip("transformers")
    import torch

    hf_config = transformers.AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **fields,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else noise if p.ndim == 1 or "embed" in name else noise / 6)
    return model


@pytest.mark.parametrize(
    "model_type, fields",
    [("llama", {"tie_word_embeddings": True, "head_dim": 16, "rope_scaling": {"type": "linear", "factor": 2.0}}),
     ("qwen2", {"tie_word_embeddings": True})],
    ids=["llama-tied", "qwen2-tied"],
)  # fmt: skip
def test_save_pretrained_convert_load_round_trip(tmp_path, model_type, fields):
    torch = pytest.importorskip("torch")
    from deemo_jax.convert.cli import main
    from deemo_jax.convert.converted import restore_into

    hf = _hf_tiny(model_type, **fields)
    hf.save_pretrained(tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "np") as f:
        assert "lm_head.weight" not in f.keys()  # transformers leaves the tied head out
    out = tmp_path / "converted"
    argv = ["--source", "hf-llama", "--input", str(tmp_path / "hf"), "--output", str(out), "--dtype", "float32"]
    assert main([*argv, "--verify"]) == 0
    config = llama_config_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text()))
    assert config.tie_word_embeddings and config.qkv_bias == (model_type == "qwen2")
    model = Llama(config, rngs=nnx.Rngs(1))
    restore_into(model, out)
    ids = np.random.default_rng(0).integers(0, 64, size=(2, 9)).astype(np.int32)
    with torch.inference_mode():
        ref = hf(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x)[0])(model, ids))
    diff = float(np.abs(got - ref).max())
    print(f"[{model_type}] converted vs {type(hf).__name__}: max |dlogits| {diff:.2e}")
    assert diff <= 1e-4 and float(np.abs(ref).max()) > 1.0

    # A tied file that also carries an lm_head.weight: accepted when equal, refused (exit 2) when not.
    from safetensors.numpy import save_file

    tensors = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    assert "lm_head.weight" in tensors
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    assert main([*argv, "--overwrite"]) == 0
    assert "lm_head.weight" in json.loads((out / "manifest.json").read_text())["checked_keys"]
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    assert main([*argv, "--overwrite"]) == 2
