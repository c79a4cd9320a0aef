"""LLaMA decoder: parity with transformers' LlamaForCausalLM, KV-cache decoding, config and input checks."""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deemo_jax.convert.llama import expected_llama_keys, llama_config_from_hf, llama_params_from_torch
from deemo_jax.models.llama import KVCache, Llama, LlamaConfig, count_params, rope_inv_freq

# MHA with the LLaMA-1 RoPE base, and GQA (4 query heads on 2 kv heads) with a LLaMA-3-style base.
CONFIGS = {
    "mha": LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=64,
    ),
    "gqa": LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=64,
    ),
}  # fmt: skip


def random_state_dict(config: LlamaConfig, seed: int) -> dict[str, np.ndarray]:
    """HF-named fp32 weights scaled so activations stay O(1) (the HF init of std 0.02 would hide errors)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in expected_llama_keys(config).items():
        if key.endswith("norm.weight") or "layernorm" in key:
            out[key] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        elif key.endswith(".bias"):
            out[key] = (0.5 * rng.standard_normal(shape)).astype(np.float32)
        elif key.endswith("embed_tokens.weight"):
            out[key] = rng.standard_normal(shape).astype(np.float32)
        else:
            out[key] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    return out


def load_jax(config: LlamaConfig, state_dict: dict[str, np.ndarray]) -> Llama:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    params = llama_params_from_torch(state_dict, config)
    # The mapping keeps the checkpoint dtype and replace_by_pure_dict does not cast: cast here.
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, config.param_dtype), params))
    return nnx.merge(graphdef, state)


def make_forward(model: Llama):
    """One jitted function for every call of a test model (retraced only per input shape/cache presence)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, kwargs):
        return nnx.merge(graphdef, state)(ids, **kwargs)

    return lambda ids=None, **kwargs: forward(state, ids, kwargs)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
    config = CONFIGS[request.param]
    state_dict = random_state_dict(config, seed=len(request.param))
    model = load_jax(config, state_dict)
    return request.param, config, state_dict, model, make_forward(model)


def test_parity_with_transformers(setup):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    name, config, state_dict, _, forward = setup
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings")  # fmt: skip
    hf_config = transformers.LlamaConfig(
        **{f: getattr(config, f) for f in fields}, attn_implementation="eager"
    )
    assert llama_config_from_hf(hf_config.to_dict()) == config
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)

    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, -5:] = 0  # right padding
    position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.inference_mode():
        ref = hf(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(position_ids).long(),
        ).logits.numpy()
        ref_nomask = hf(input_ids=torch.from_numpy(ids).long()).logits.numpy()

    logits, cache = forward(ids, attention_mask=mask)
    assert cache is None and logits.dtype == jnp.float32 and logits.shape == (3, 12, config.vocab_size)
    diff = float(np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max())
    diff_nomask = float(np.abs(np.asarray(forward(ids)[0]) - ref_nomask).max())
    print(f"[{name}] max |logits - HF| with padding mask: {diff:.2e}; without mask: {diff_nomask:.2e}")
    assert diff <= 1e-4
    assert diff_nomask <= 1e-4
    # The logits are far from trivial, so the bound above is meaningful.
    assert float(np.abs(ref).max()) > 1.0


@pytest.mark.parametrize("padding", ["left", "right"])
def test_kv_cache_decoding_matches_full_recompute(setup, padding):
    _, config, _, model, forward = setup
    rng = np.random.default_rng(2)
    lengths = [6, 3, 1]  # real prompt tokens per row
    batch, prompt_len, new_tokens = len(lengths), max(lengths), 4
    prompt = rng.integers(0, config.vocab_size, size=(batch, prompt_len)).astype(np.int32)
    prompt_mask = np.zeros_like(prompt)
    for row, n in enumerate(lengths):
        if padding == "left":
            prompt_mask[row, prompt_len - n :] = 1
        else:
            prompt_mask[row, :n] = 1
    new = rng.integers(0, config.vocab_size, size=(batch, new_tokens)).astype(np.int32)

    full_ids = np.concatenate([prompt, new], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones_like(new)], axis=1)
    full, _ = forward(full_ids, attention_mask=full_mask)

    cache = model.init_cache(batch, prompt_len + new_tokens)
    logits, cache = forward(prompt, attention_mask=prompt_mask, cache=cache)
    real = prompt_mask.astype(bool)
    errors = [np.abs(np.asarray(logits) - np.asarray(full[:, :prompt_len]))[real].max()]
    for t in range(new_tokens):
        logits, cache = forward(new[:, t : t + 1], cache=cache)
        errors.append(np.abs(np.asarray(logits[:, 0]) - np.asarray(full[:, prompt_len + t])).max())
    print(f"[{padding} padding] max |cached - full| over prefill and {new_tokens} steps: {max(errors):.2e}")
    assert max(errors) <= 1e-5
    assert int(cache.index) == prompt_len + new_tokens
    np.testing.assert_array_equal(np.asarray(cache.positions), np.asarray(lengths) + new_tokens)
    np.testing.assert_array_equal(np.asarray(cache.mask), full_mask.astype(bool))

    # Inside jit the overflow cannot raise: the logits turn NaN. Outside jit it raises.
    overflow_logits, _ = forward(new[:, :1], cache=cache)
    assert np.isnan(np.asarray(overflow_logits)).all()
    with pytest.raises(ValueError, match="cache overflow.*max_length 10"):
        model(new[:, :1], cache=cache)


def test_cache_carries_through_a_jitted_fori_loop(tiny):
    """Greedy decoding with the cache inside lax.fori_loop agrees with a full forward over its output."""
    model, forward, _ = tiny
    graphdef, state = nnx.split(model)
    steps = 3

    @jax.jit
    def greedy(state, prompt, mask):
        model = nnx.merge(graphdef, state)
        cache = model.init_cache(prompt.shape[0], prompt.shape[1] + steps)
        logits, cache = model(prompt, attention_mask=mask, cache=cache)

        def body(i, carry):
            cache, tokens, out = carry
            out = out.at[:, i].set(tokens)
            logits, cache = model(tokens[:, None], cache=cache)
            return cache, jnp.argmax(logits[:, -1], -1).astype(jnp.int32), out

        first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)
        out = jnp.zeros((prompt.shape[0], steps), jnp.int32)
        return jax.lax.fori_loop(0, steps, body, (cache, first, out))[2]

    prompt = np.array([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int32)
    got = np.asarray(greedy(state, prompt, mask))
    full, _ = forward(
        np.concatenate([prompt, got], 1), attention_mask=np.pad(mask, ((0, 0), (0, steps)), constant_values=1)
    )
    expected = np.argmax(np.asarray(full[:, prompt.shape[1] - 1 : -1]), -1)
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def tiny():
    state_dict = random_state_dict(LlamaConfig.tiny(), seed=3)
    model = load_jax(LlamaConfig.tiny(), state_dict)
    return model, make_forward(model), state_dict


def test_inputs_embeds_equals_input_ids(tiny):
    model, forward, _ = tiny
    ids = jnp.array([[3, 4, 5, 6], [7, 8, 9, 10]], jnp.int32)
    mask = jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]], jnp.int32)
    from_ids, _ = forward(ids, attention_mask=mask)
    from_embeds, _ = forward(inputs_embeds=model.embed(ids), attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(from_ids), np.asarray(from_embeds))


def test_logits_to_keep_returns_the_last_columns(tiny):
    model, _, _ = tiny
    ids = jnp.array([[3, 4, 5, 6], [7, 8, 9, 10]], jnp.int32)
    mask = jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]], jnp.int32)
    full, _ = model(ids, attention_mask=mask)
    last, _ = model(ids, attention_mask=mask, logits_to_keep=1)
    assert last.shape == (2, 1, 128)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1:]), atol=1e-6)
    with pytest.raises(ValueError, match=r"logits_to_keep must be an int in \[0, 4\], got 5"):
        model(ids, logits_to_keep=5)


def test_explicit_positions_are_used(tiny):
    _, forward, _ = tiny
    ids = jnp.array([[3, 4, 5, 6]], jnp.int32)
    default, _ = forward(ids, positions=jnp.arange(4)[None])
    shifted, _ = forward(ids, positions=jnp.arange(4)[None] + 7)
    far, _ = forward(ids, positions=jnp.array([[0, 1, 2, 30]]))
    # RoPE is relative: shifting all positions keeps the logits up to rounding, but not bit-exactly.
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(default), atol=1e-4)
    assert not np.array_equal(np.asarray(shifted), np.asarray(default))
    np.testing.assert_allclose(np.asarray(far[:, :3]), np.asarray(default[:, :3]), atol=1e-5)
    assert np.abs(np.asarray(far[:, 3] - default[:, 3])).max() > 1e-2


def test_remat_wraps_layers_and_keeps_numbers(tiny):
    plain, forward, state_dict = tiny
    config = LlamaConfig.tiny(remat=True)
    remat = load_jax(config, state_dict)
    ids = jnp.array([[1, 2, 3, 4, 5]], jnp.int32)

    def checkpoint_count(model):
        jaxpr = jax.make_jaxpr(lambda m: nnx.grad(lambda m: m(ids)[0].sum())(m))(model)
        return len(re.findall(r"= remat\w*\[", str(jaxpr)))  # jax.checkpoint's primitive is remat2

    assert checkpoint_count(plain) == 0
    assert checkpoint_count(remat) >= config.num_hidden_layers
    np.testing.assert_array_equal(np.asarray(forward(ids)[0]), np.asarray(make_forward(remat)(ids)[0]))


def test_bf16_compute_stays_close_and_returns_float32_logits(tiny):
    _, forward, state_dict = tiny
    bf16 = load_jax(LlamaConfig.tiny(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16), state_dict)
    assert bf16.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16
    ids = jnp.array([[1, 2, 3, 4, 5, 6]], jnp.int32)
    ref, _ = forward(ids)
    out, cache = make_forward(bf16)(ids, cache=bf16.init_cache(1, 8))
    assert cache.keys[0].dtype == jnp.bfloat16
    assert out.dtype == jnp.float32
    rel = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    print(f"bf16 vs fp32 relative max logit error: {rel:.3f}")
    assert rel < 0.05


def test_vicuna_7b_parameter_count_without_allocation():
    abstract = nnx.eval_shape(lambda: Llama(LlamaConfig.vicuna_7b(), rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert count_params(abstract) == 6_738_415_616
    assert abstract.lm_head.kernel.get_metadata()["logical_axes"] == ("embed", "vocab")
    assert abstract.layers[0].self_attn.k_proj.kernel.get_metadata()["logical_axes"] == ("embed", "kv_heads")
    assert abstract.embed_tokens.embedding.get_metadata()["logical_axes"] == ("vocab", "embed")


def test_named_configs():
    vicuna = LlamaConfig.vicuna_7b()
    assert (vicuna.head_dim, vicuna.rms_norm_eps, vicuna.max_position_embeddings) == (128, 1e-6, 2048)
    llama2 = LlamaConfig.llama2_7b()
    assert (llama2.rms_norm_eps, llama2.max_position_embeddings) == (1e-5, 4096)
    tiny = LlamaConfig.tiny()
    assert tiny.num_key_value_heads < tiny.num_attention_heads
    # Reading a HF config.json is conversion logic: tests/convert/test_llama_mapping.py.
    with pytest.raises(ValueError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        LlamaConfig.tiny(num_key_value_heads=3)


def test_bad_inputs_raise_value_errors(tiny):
    model, forward, _ = tiny
    ids = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\], got shape \(5,\)"):
        model(ids[0])
    with pytest.raises(ValueError, match=r"attention_mask must have the input shape \(2, 5\), got \(2, 4\)"):
        model(ids, attention_mask=jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model(ids, inputs_embeds=model.embed(ids))
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model()
    with pytest.raises(ValueError, match="input_ids must be integers, got dtype float32"):
        model(ids.astype(jnp.float32))
    with pytest.raises(
        ValueError, match=r"inputs_embeds must be \[batch, length, 32\], got shape \(2, 5, 8\)"
    ):
        model(inputs_embeds=jnp.zeros((2, 5, 8)))
    with pytest.raises(ValueError, match=r"positions must have the input shape \(2, 5\), got \(5,\)"):
        model(ids, positions=jnp.arange(5))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 128\), got range \[1, 128\]"):
        model(ids.at[0, 0].set(128))
    with pytest.raises(ValueError, match=r"cache keys have shape \(3, 8, 2, 8\), expected \(2, 8, 2, 8\)"):
        model(ids, cache=model.init_cache(3, 8))
    with pytest.raises(ValueError, match="cache overflow: 5 new tokens do not fit a cache of max_length 4"):
        model(ids, cache=model.init_cache(2, 4))
    _, cache = forward(ids, cache=model.init_cache(2, 8))
    with pytest.raises(
        ValueError, match="cache overflow: writing 5 tokens at slot 5 needs 10 slots.*max_length 8"
    ):
        model(ids, cache=cache)
    assert isinstance(model.init_cache(2, 8), KVCache)


# ------------------------------------------------------------------------ the LLaMA family of config.json
# Each case is a transformers config (model_type, fields beyond HF_BASE); the HF model is the reference, its
# state dict the weights, and llama_config_from_hf(its config.to_dict()) our config.
HF_BASE = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64,
)  # fmt: skip
# rope_theta 1e4, head_dim 8 (wavelengths 6.3, 63, 628, 6283), original context 32, band edges 32/4 = 8 and
# 32/0.25 = 128: the frequencies fall in all three llama3 bands (kept, interpolated, divided by the factor).
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=0.25, high_freq_factor=4.0,
                   original_max_position_embeddings=32)  # fmt: skip
HF_CASES = {
    "tied": ("llama", dict(tie_word_embeddings=True)),
    "llama3_rope": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "linear_rope": ("llama", dict(rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    "head_dim": ("llama", dict(head_dim=16)),  # 4 heads of 16 on a width of 32
    "biases": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "qwen2": ("qwen2", dict(rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    "mistral": ("mistral", dict(sliding_window=None, head_dim=16)),
    # Everything at once: what the KV-cache test decodes with.
    "combined": ("llama", dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE, head_dim=16,
                               attention_bias=True, mlp_bias=True)),
}  # fmt: skip
EXPECTED = {  # what each case must turn into (beyond the base fields)
    "tied": dict(tie_word_embeddings=True),
    "llama3_rope": dict(rope_type="llama3", rope_factor=8.0, rope_low_freq_factor=0.25,
                        rope_original_max_position_embeddings=32),
    "linear_rope": dict(rope_type="linear", rope_factor=4.0),
    "head_dim": dict(head_dim_override=16),
    "biases": dict(qkv_bias=True, o_proj_bias=True, mlp_bias=True),
    "qwen2": dict(qkv_bias=True, o_proj_bias=False, mlp_bias=False, rope_theta=1e6),
    "mistral": dict(head_dim_override=16),
    "combined": dict(tie_word_embeddings=True, rope_type="llama3", head_dim_override=16, qkv_bias=True,
                     o_proj_bias=True, mlp_bias=True),
}  # fmt: skip


def randomize_hf_(model, seed: int) -> None:
    """Weights scaled so activations stay O(1), biases clearly non-zero (HF's init would hide errors)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.5 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def hf_model(case: str, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    model_type, fields = HF_CASES[case]
    hf_config = transformers.AutoConfig.for_model(model_type, **HF_BASE, **fields, attn_implementation="eager")
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    randomize_hf_(model, seed)
    return model


@functools.cache
def build_case(name: str):
    """(name, HF model, our config, our model, its jitted forward), built once per test session."""
    pytest.importorskip("torch")
    hf = hf_model(name)
    config = llama_config_from_hf(hf.config.to_dict())
    state_dict = {k: v.numpy().copy() for k, v in hf.state_dict().items()}  # tied: lm_head == embedding
    model = load_jax(config, state_dict)
    return name, hf, config, model, make_forward(model)


@pytest.fixture(params=sorted(HF_CASES))
def hf_case(request):
    return build_case(request.param)


def test_config_json_family_parity_with_transformers(hf_case):
    import torch

    name, hf, config, model, forward = hf_case
    assert {k: getattr(config, k) for k in HF_BASE} == HF_BASE
    assert {k: getattr(config, k) for k in EXPECTED[name]} == EXPECTED[name]
    if config.tie_word_embeddings:  # no lm_head parameter at all
        assert not hasattr(model, "lm_head")
        assert not any("lm_head" in str(path) for path, _ in nnx.to_flat_state(nnx.state(model)))
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, size=(3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, -5:] = 0  # right padding
    position_ids = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.inference_mode():
        ref = hf(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(position_ids).long(),
        ).logits.numpy()
    logits, _ = forward(ids, attention_mask=mask)
    diff = float(np.abs(np.asarray(logits) - ref)[mask.astype(bool)].max())
    print(f"[{name}] max |logits - {type(hf).__name__}|: {diff:.2e}")
    assert diff <= 1e-4
    assert float(np.abs(ref).max()) > 1.0


def test_llama3_rope_frequencies_cover_every_band():
    """The llama3 case really exercises the three bands, and matches transformers' frequencies."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for case in ("llama3_rope", "linear_rope"):
        model_type, fields = HF_CASES[case]
        hf_config = transformers.AutoConfig.for_model(model_type, **HF_BASE, **fields)
        config = llama_config_from_hf(hf_config.to_dict())
        ref, _ = ROPE_INIT_FUNCTIONS[config.rope_type](hf_config)
        ours = np.asarray(rope_inv_freq(config))
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
        plain = np.asarray(rope_inv_freq(LlamaConfig(**HF_BASE, rope_theta=config.rope_theta)))
        ratio = plain / ours
        if case == "linear_rope":
            np.testing.assert_allclose(ratio, 4.0, rtol=1e-6)
        else:  # kept (ratio 1), interpolated (between 1 and 8), divided by the factor (8)
            assert ratio[0] == 1.0 and 1.0 < ratio[1] < 8.0 and np.allclose(ratio[2:], 8.0, rtol=1e-6)


def test_kv_cache_decoding_with_every_new_field():
    """Tied embeddings, llama3 RoPE, a decoupled head_dim and all biases: cached decode = full recompute."""
    name, _, config, model, forward = build_case("combined")  # its parity with HF is checked above
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, config.vocab_size, size=(2, 5)).astype(np.int32)
    prompt_mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    new = rng.integers(0, config.vocab_size, size=(2, 3)).astype(np.int32)
    full_mask = np.pad(prompt_mask, ((0, 0), (0, 3)), constant_values=1)
    full, _ = forward(np.concatenate([prompt, new], 1), attention_mask=full_mask)
    cache = model.init_cache(2, 8)
    assert cache.keys[0].shape == (2, 8, config.num_key_value_heads, 16)
    logits, cache = forward(prompt, attention_mask=prompt_mask, cache=cache)
    errors = [np.abs(np.asarray(logits) - np.asarray(full[:, :5]))[prompt_mask.astype(bool)].max()]
    for t in range(3):
        logits, cache = forward(new[:, t : t + 1], cache=cache)
        errors.append(np.abs(np.asarray(logits[:, 0]) - np.asarray(full[:, 5 + t])).max())
    print(f"[{name}] max |cached - full|: {max(errors):.2e}")
    assert max(errors) <= 1e-5


def test_new_params_carry_logical_axes():
    config = LlamaConfig.tiny(qkv_bias=True, o_proj_bias=True, mlp_bias=True, tie_word_embeddings=True,
                              head_dim_override=16)  # fmt: skip
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    attn, mlp = abstract.layers[0].self_attn, abstract.layers[0].mlp
    axes = {
        "q": attn.q_proj.bias, "k": attn.k_proj.bias, "v": attn.v_proj.bias, "o": attn.o_proj.bias,
        "gate": mlp.gate_proj.bias, "up": mlp.up_proj.bias, "down": mlp.down_proj.bias,
    }  # fmt: skip
    assert {k: v.get_metadata()["logical_axes"] for k, v in axes.items()} == {
        "q": ("heads",), "k": ("kv_heads",), "v": ("kv_heads",), "o": ("embed",),
        "gate": ("mlp",), "up": ("mlp",), "down": ("embed",),
    }  # fmt: skip
    assert attn.q_proj.kernel.shape == (32, 4 * 16) and attn.o_proj.kernel.shape == (4 * 16, 32)
    assert not hasattr(abstract, "lm_head")
    # Tied: the embedding is the only vocab-sized parameter.
    plain = nnx.eval_shape(lambda: Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0)))
    tied_only = nnx.eval_shape(lambda: Llama(LlamaConfig.tiny(tie_word_embeddings=True), rngs=nnx.Rngs(0)))
    assert count_params(plain) - count_params(tied_only) == 128 * 32


def test_bad_new_config_fields():
    with pytest.raises(ValueError, match="rope_type 'yarn' is not one of"):
        LlamaConfig.tiny(rope_type="yarn", rope_factor=2.0)
    with pytest.raises(ValueError, match="rope_factor 2.0 needs rope_type 'linear' or 'llama3'"):
        LlamaConfig.tiny(rope_factor=2.0)
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by num_attention_heads 4"):
        LlamaConfig.tiny(hidden_size=30)
    assert LlamaConfig.tiny(hidden_size=30, head_dim_override=8).head_dim == 8
    # A derived head_dim follows the width (a preset override of hidden_size keeps working).
    assert dataclasses.replace(LlamaConfig.tiny(), hidden_size=64).head_dim == 16


def test_tied_head_given_once_equals_attend_and_is_checked():
    """A decode loop passes ``embed_tokens.T`` made once (XLA:CPU's transposed-operand dot is ~10x slower)."""
    _, _, config, model, _ = build_case("tied")
    ids = np.random.default_rng(3).integers(0, config.vocab_size, size=(2, 4)).astype(np.int32)
    head = model.tied_head()
    assert head.shape == (config.hidden_size, config.vocab_size)
    np.testing.assert_allclose(np.asarray(model(ids, head=head)[0]), np.asarray(model(ids)[0]), atol=1e-6)
    with pytest.raises(ValueError, match="head is for tied models"):
        model(ids, head=head[:, :-1])
    untied = Llama(LlamaConfig.tiny(), rngs=nnx.Rngs(0))
    assert untied.tied_head() is None
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        untied(ids % untied.config.vocab_size, head=jnp.zeros((untied.config.hidden_size, untied.config.vocab_size)))
