"""``eva_vit_g.pth`` (LAVIS EVA-CLIP ViT-g, raw state dict, no prefix) -> :class:`~deemo_jax.models.eva_vit.EvaViT`.

Blocks beyond ``config.depth`` (``blocks.39.*`` of the 40-block checkpoint) are ignorable on purpose: BLIP-2 uses
the second-to-last layer's features (reference_spec §2.1, §2.4). So are EVA-CLIP's final ``norm.*`` and ``head.*``
(1408 -> 1024), which the released file still holds and LAVIS ignores (``strict=False``; ``fc_norm`` likewise).
"""

from __future__ import annotations

import re

from deemo_jax.convert.common import TensorRule, conv_kernel, linear_kernel
from deemo_jax.models.eva_vit import EvaViTConfig


def eva_vit_key_table(config: EvaViTConfig, prefix: str = "") -> dict[str, TensorRule]:
    """torch key -> (NNX path, torch shape, transform) for every tensor the model reads."""
    c, p, w = config, prefix, config.width
    table = {
        f"{p}cls_token": TensorRule(("cls_token",), (1, 1, w)),
        f"{p}pos_embed": TensorRule(("pos_embed",), (1, c.num_tokens, w)),
        f"{p}patch_embed.proj.weight": TensorRule(
            ("patch_embed", "kernel"), (w, 3, c.patch_size, c.patch_size), conv_kernel
        ),
        f"{p}patch_embed.proj.bias": TensorRule(("patch_embed", "bias"), (w,)),
    }
    for i in range(c.depth):
        b = f"{p}blocks.{i}."
        t = ("blocks", i)
        for norm in ("norm1", "norm2"):
            table[f"{b}{norm}.weight"] = TensorRule((*t, norm, "scale"), (w,))
            table[f"{b}{norm}.bias"] = TensorRule((*t, norm, "bias"), (w,))
        table[f"{b}attn.qkv.weight"] = TensorRule((*t, "attn", "qkv"), (3 * w, w), linear_kernel)
        table[f"{b}attn.q_bias"] = TensorRule((*t, "attn", "q_bias"), (w,))
        table[f"{b}attn.v_bias"] = TensorRule((*t, "attn", "v_bias"), (w,))
        table[f"{b}attn.proj.weight"] = TensorRule((*t, "attn", "proj", "kernel"), (w, w), linear_kernel)
        table[f"{b}attn.proj.bias"] = TensorRule((*t, "attn", "proj", "bias"), (w,))
        table[f"{b}mlp.fc1.weight"] = TensorRule((*t, "mlp", "fc1", "kernel"), (c.mlp_dim, w), linear_kernel)
        table[f"{b}mlp.fc1.bias"] = TensorRule((*t, "mlp", "fc1", "bias"), (c.mlp_dim,))
        table[f"{b}mlp.fc2.weight"] = TensorRule((*t, "mlp", "fc2", "kernel"), (w, c.mlp_dim), linear_kernel)
        table[f"{b}mlp.fc2.bias"] = TensorRule((*t, "mlp", "fc2", "bias"), (w,))
    return table


def expected_eva_vit_keys(config: EvaViTConfig, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {k: r.shape for k, r in eva_vit_key_table(config, prefix).items()}


# Keys of the released file that LAVIS's 39-block tower does not have; it loads with strict=False, so they are
# ignored there. EVA-CLIP's final norm and projection head (1408 -> 1024) are commented out in LAVIS.
FINAL_LAYERS_REASON = (
    "EVA-CLIP's final norm / head: not part of LAVIS's tower (commented out there, loaded with strict=False)"
)


def eva_vit_ignorable_keys(config: EvaViTConfig, prefix: str = "") -> dict[str, str]:
    """Regexes (full match) of keys skipped on purpose -> why.

    Every tensor of a block whose index is not in ``range(config.depth)`` (``blocks.39.*`` of the 40-block
    ``eva_vit_g.pth``: BLIP-2 uses the second-to-last layer), and EVA-CLIP's ``norm``, ``fc_norm`` and ``head``
    weights and biases. Anything else that is not in the table is an unexpected key.
    """
    p = re.escape(prefix)
    used = "|".join(str(i) for i in range(config.depth))
    return {
        rf"{p}blocks\.(?!(?:{used})\.)\d+\..+": (
            f"block beyond the first {config.depth}: LAVIS builds {EvaViTConfig.giant().depth} blocks and loads "
            "with strict=False (BLIP-2 uses the second-to-last layer)"
        ),
        rf"{p}(norm|fc_norm|head)\.(weight|bias)": FINAL_LAYERS_REASON,
    }
