"""EVA ViT-g (LAVIS variant) in NNX vs ``transformers.Blip2VisionModel``, through the eva_vit_g.pth key mapping."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_params import eva_vit_params_from_torch
from transformers import Blip2VisionConfig, Blip2VisionModel

from deemo_jax.convert.torch_reference import randomize_
from deemo_jax.models.eva_vit import EvaViT, EvaViTConfig

CONFIG = EvaViTConfig.tiny(img_size=56)


def hf_to_lavis(sd: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Rename a Blip2VisionModel state dict to the original ``eva_vit_g.pth`` names (no prefix)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("post_layernorm."):
            continue  # BLIP-2's ln_vision, not part of eva_vit_g.pth
        if key == "embeddings.class_embedding":
            out["cls_token"] = value
        elif key == "embeddings.position_embedding":
            out["pos_embed"] = value
        elif key.startswith("embeddings.patch_embedding."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.endswith("self_attn.qkv.bias"):
            block = key.split(".")[2]
            assert not value[width : 2 * width].any(), "HF k bias must be zero like EVA's"
            out[f"blocks.{block}.attn.q_bias"] = value[:width]
            out[f"blocks.{block}.attn.v_bias"] = value[2 * width :]
        else:
            new = key.replace("encoder.layers.", "blocks.").replace(".self_attn.projection.", ".attn.proj.")
            new = new.replace(".self_attn.qkv.", ".attn.qkv.").replace(".layer_norm1.", ".norm1.")
            out[new.replace(".layer_norm2.", ".norm2.")] = value
    return out


def module_from_pure_dict(ctor, pure: dict):
    """Build the module abstractly (no random init) and fill every parameter from a mapping's pure dict."""
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure))
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def pair():
    c = CONFIG
    hf = Blip2VisionModel(
        Blip2VisionConfig(
            hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
            num_attention_heads=c.num_heads, image_size=c.img_size, patch_size=c.patch_size,
            layer_norm_eps=c.layer_norm_eps, qkv_bias=True, hidden_act="gelu", attn_implementation="eager",
        )
    )
    randomize_(hf, seed=1)
    with torch.no_grad():
        for layer in hf.encoder.layers:
            layer.self_attn.qkv.bias[c.width : 2 * c.width] = 0.0  # EVA has no k bias
    hf.post_layernorm = torch.nn.Identity()  # compare the token sequence before BLIP-2's ln_vision
    sd = hf_to_lavis({k: v.numpy() for k, v in hf.state_dict().items()}, c.width)
    model = module_from_pure_dict(lambda: EvaViT(c, rngs=nnx.Rngs(0)), eva_vit_params_from_torch(sd, c))
    forward = nnx.jit(lambda m, x: m(x))
    return hf, model, forward


def test_matches_blip2_vision_model(pair):
    hf, model, forward = pair
    pixels = np.random.default_rng(0).normal(size=(2, 3, CONFIG.img_size, CONFIG.img_size)).astype(np.float32)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    got = np.asarray(forward(model, jnp.asarray(pixels.transpose(0, 2, 3, 1))))
    assert got.shape == (2, CONFIG.num_tokens, CONFIG.width) == want.shape
    diff = float(np.max(np.abs(got - want)))
    print(f"EVA ViT vs Blip2VisionModel: max abs diff {diff:.2e} (output scale {np.abs(want).max():.2f})")
    assert diff <= 1e-4


@pytest.mark.parametrize(
    "shape", [(1, 42, 56, 3), (1, 56, 56, 1), (56, 56, 3)], ids=["wrong-size", "wrong-channels", "no-batch"]
)
def test_rejects_bad_pixels(pair, shape):
    _, model, _ = pair
    with pytest.raises(ValueError, match=rf"expected pixels \[N, 56, 56, 3\].*got shape \({shape[0]}, "):
        model(jnp.zeros(shape))


def test_attention_impl_reaches_the_attention():
    config = dataclasses.replace(CONFIG, attention_impl="flash")  # an unknown name: the dispatcher must see it
    with pytest.raises(ValueError, match=r"attention implementation must be one of .*got 'flash'"):
        nnx.eval_shape(lambda: EvaViT(config, rngs=nnx.Rngs(0))(jnp.zeros((1, 56, 56, 3))))


def test_giant_parameter_count_without_allocation():
    abstract = nnx.eval_shape(lambda: EvaViT(EvaViTConfig.giant(), rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(int(np.prod(x.shape)) for x in leaves) == 985_894_528
    assert abstract.pos_embed.shape == (1, 257, 1408) and len(abstract.blocks) == 39
    assert abstract.blocks[0].attn.qkv.get_metadata()["logical_axes"] == ("embed", "heads")
