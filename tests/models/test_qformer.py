"""Q-Former in NNX vs ``transformers.Blip2QFormerModel``, through the LAVIS checkpoint key mapping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_params import qformer_params_from_torch
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from deemo_jax.convert.torch_reference import randomize_
from deemo_jax.models.qformer import QFormer, QFormerConfig

PREFIX = "Qformer.bert."
MEMORY_LEN = 7


def hf_to_lavis(sd: dict[str, np.ndarray], query_tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Rename a Blip2QFormerModel state dict to the BLIP-2 checkpoint names (``Qformer.bert.*``, ``query_tokens``)."""
    out = {"query_tokens": query_tokens}
    for key, value in sd.items():
        new = key.replace("layernorm.", "embeddings.LayerNorm.", 1) if key.startswith("layernorm.") else key
        new = new.replace(".attention.attention.", ".attention.self.")
        new = new.replace(".crossattention.attention.", ".crossattention.self.")
        out[PREFIX + new] = value
    return out


def _build(freq: int):
    config = QFormerConfig.tiny(num_layers=3, encoder_width=24, num_queries=5, cross_attention_freq=freq)
    hf = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=config.hidden_size, num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size, encoder_hidden_size=config.encoder_width,
            cross_attention_frequency=freq, layer_norm_eps=config.layer_norm_eps, hidden_act="gelu",
            attn_implementation="eager",
        )
    )
    randomize_(hf, seed=freq)
    query_tokens = np.random.default_rng(freq).normal(size=(1, config.num_queries, config.hidden_size))
    query_tokens = query_tokens.astype(np.float32)
    sd = hf_to_lavis({k: v.numpy() for k, v in hf.state_dict().items()}, query_tokens)
    pure = qformer_params_from_torch(sd, config, PREFIX, "query_tokens")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: QFormer(config, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))  # no random init: every param mapped
    model = nnx.merge(graphdef, state)
    return config, hf, query_tokens, model


@pytest.fixture(scope="module")
def forward():
    return nnx.jit(lambda m, x, rngs=None: m(x, rngs=rngs))


@pytest.fixture(scope="module", params=[1, 2], ids=["freq1", "freq2"])
def pair(request):
    return _build(request.param)


def test_matches_blip2_qformer_model(pair, forward):
    config, hf, query_tokens, model = pair
    memory = np.random.default_rng(3).normal(size=(2, MEMORY_LEN, config.encoder_width)).astype(np.float32)
    with torch.no_grad():
        want = hf(
            query_embeds=torch.from_numpy(query_tokens).expand(2, -1, -1),
            encoder_hidden_states=torch.from_numpy(memory),
        ).last_hidden_state.numpy()
    got = np.asarray(forward(model, jnp.asarray(memory)))
    assert got.shape == (2, config.num_queries, config.hidden_size) == want.shape
    diff = float(np.max(np.abs(got - want)))
    freq = config.cross_attention_freq
    print(f"Q-Former (cross_attention_freq={freq}) vs Blip2QFormerModel: max abs diff {diff:.2e}")
    assert diff <= 1e-5
    has_cross = [layer.crossattention is not None for layer in model.layer]
    assert has_cross == [i % config.cross_attention_freq == 0 for i in range(config.num_layers)]


def test_dropout_only_with_rngs(forward):
    config = QFormerConfig.tiny(num_layers=1)
    # rbg keys: same dropout semantics, ~3x cheaper to compile on CPU than the default threefry.
    model = QFormer(config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    memory = jnp.asarray(np.random.default_rng(0).normal(size=(2, MEMORY_LEN, config.encoder_width)), jnp.float32)
    eval_a, eval_b = forward(model, memory), forward(model, memory)
    np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
    train_a, train_b, train_c = (
        forward(model, memory, nnx.Rngs(dropout=jax.random.key(seed, impl="rbg"))) for seed in (1, 1, 2)
    )
    assert float(jnp.max(jnp.abs(train_a - eval_a))) > 1e-3
    np.testing.assert_array_equal(np.asarray(train_a), np.asarray(train_b))
    assert float(jnp.max(jnp.abs(train_a - train_c))) > 1e-3


def test_rejects_wrong_memory_width():
    config = QFormerConfig.tiny(encoder_width=24)
    model = nnx.eval_shape(lambda: QFormer(config, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"expected encoder_hidden_states \[N, M, 24\].*got shape \(2, 3, 32\)"):
        model(jnp.zeros((2, 3, 32)))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("image", 105_162_240), ("video", 18_929_664), ("audio", 19_697_664)],
)
def test_real_size_parameter_counts(name, expected):
    config = getattr(QFormerConfig, name)()
    abstract = nnx.eval_shape(lambda: QFormer(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(int(np.prod(x.shape)) for x in leaves) == expected
    assert abstract.query_tokens.shape == (1, config.num_queries, 768)
