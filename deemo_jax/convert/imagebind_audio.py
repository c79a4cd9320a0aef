"""``imagebind_huge.pth`` (raw state dict, all six modalities) -> audio tower :class:`ImageBindAudio`.

Only the audio keys of reference_spec §5.2 are read; every other modality's preprocessor, trunk, head and
postprocessor is ignorable. ``modality_postprocessors.audio.1.log_logit_scale`` (a buffer) is read and checked
against ``config.logit_scale`` instead of being stored: the model keeps the scale as a constant.
"""

from __future__ import annotations

import math
import re

import numpy as np

from deemo_jax.convert.common import TensorRule, conv_kernel, linear_kernel
from deemo_jax.models.imagebind_audio import ImageBindAudioConfig

LOG_LOGIT_SCALE_KEY = "modality_postprocessors.audio.1.log_logit_scale"


def _flatten(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


def _logit_scale_check(config: ImageBindAudioConfig, key: str):
    def check(value: np.ndarray) -> np.ndarray:
        scale = min(math.exp(float(value)), 100.0)  # ImageBind clips exp(log_logit_scale) at 100
        if not math.isclose(scale, min(config.logit_scale, 100.0), rel_tol=1e-5):
            raise ValueError(
                f"{key}: the checkpoint's logit scale exp({float(value):.6f}) = {scale:.6f} differs from "
                f"ImageBindAudioConfig.logit_scale = {config.logit_scale}; set logit_scale to {scale:.6f}"
            )
        return value

    return check


def imagebind_audio_key_table(config: ImageBindAudioConfig, prefix: str = "") -> dict[str, TensorRule]:
    """torch key -> (NNX path, torch shape, transform) for every tensor the audio tower reads."""
    c, w, k = config, config.width, config.kernel_size
    pre, trunk, head = (f"{prefix}modality_{part}.audio." for part in ("preprocessors", "trunks", "heads"))
    table = {
        f"{pre}cls_token": TensorRule(("cls_token",), (1, 1, w)),
        f"{pre}rgbt_stem.proj.weight": TensorRule(("stem", "kernel"), (w, 1, k, k), conv_kernel),
        f"{pre}rgbt_stem.norm_layer.weight": TensorRule(("stem_norm", "scale"), (w,)),
        f"{pre}rgbt_stem.norm_layer.bias": TensorRule(("stem_norm", "bias"), (w,)),
        f"{pre}pos_embedding_helper.pos_embed": TensorRule(("pos_embed",), (1, c.num_tokens, w)),
    }
    for i in range(c.depth):
        b, t = f"{trunk}blocks.{i}.", ("blocks", i)
        table[f"{b}attn.in_proj_weight"] = TensorRule((*t, "attn", "in_proj", "kernel"), (3 * w, w), linear_kernel)
        table[f"{b}attn.in_proj_bias"] = TensorRule((*t, "attn", "in_proj", "bias"), (3 * w,))
        table[f"{b}attn.bias_k"] = TensorRule((*t, "attn", "bias_k"), (1, 1, w), _flatten)
        table[f"{b}attn.bias_v"] = TensorRule((*t, "attn", "bias_v"), (1, 1, w), _flatten)
        table[f"{b}attn.out_proj.weight"] = TensorRule((*t, "attn", "out_proj", "kernel"), (w, w), linear_kernel)
        table[f"{b}attn.out_proj.bias"] = TensorRule((*t, "attn", "out_proj", "bias"), (w,))
        for norm in ("norm_1", "norm_2"):
            table[f"{b}{norm}.weight"] = TensorRule((*t, norm, "scale"), (w,))
            table[f"{b}{norm}.bias"] = TensorRule((*t, norm, "bias"), (w,))
        table[f"{b}mlp.fc1.weight"] = TensorRule((*t, "mlp", "fc1", "kernel"), (c.mlp_dim, w), linear_kernel)
        table[f"{b}mlp.fc1.bias"] = TensorRule((*t, "mlp", "fc1", "bias"), (c.mlp_dim,))
        table[f"{b}mlp.fc2.weight"] = TensorRule((*t, "mlp", "fc2", "kernel"), (w, c.mlp_dim), linear_kernel)
        table[f"{b}mlp.fc2.bias"] = TensorRule((*t, "mlp", "fc2", "bias"), (w,))
    table[f"{head}0.weight"] = TensorRule(("head_norm", "scale"), (w,))
    table[f"{head}0.bias"] = TensorRule(("head_norm", "bias"), (w,))
    table[f"{head}2.weight"] = TensorRule(("head_proj", "kernel"), (c.out_dim, w), linear_kernel)
    scale_key = f"{prefix}{LOG_LOGIT_SCALE_KEY}"
    table[scale_key] = TensorRule(None, (), _logit_scale_check(c, scale_key))
    return table


def imagebind_audio_ignorable_keys(prefix: str = "") -> list[str]:
    """Regexes (full match): everything of the vision, text, depth, thermal and IMU modalities."""
    return [rf"{re.escape(prefix)}modality_(preprocessors|trunks|heads|postprocessors)\.(?!audio\.)\w+\..+"]
