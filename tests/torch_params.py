"""Whole-state-dict mappings for tests: a torch state dict (numpy values) -> the pure dict of one module.

The converter streams tensors one at a time through the key tables of ``deemo_jax.convert`` (``*_key_table``,
``TensorRule``); tests that build a module from a state dict in memory use these functions, which apply the
same tables with the same strict key check (``check_keys``: missing, unexpected and mis-shaped keys all
listed). ``llama_params_from_torch`` stays in ``deemo_jax.convert.llama`` because the benchmarks use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from deemo_jax.convert.common import TensorRule, check_keys, set_path
from deemo_jax.convert.deemo import AUDIO, VIDEO, branch_key_table, deemo_ignorable_keys
from deemo_jax.convert.eva_vit import eva_vit_ignorable_keys, eva_vit_key_table
from deemo_jax.convert.imagebind_audio import imagebind_audio_ignorable_keys, imagebind_audio_key_table
from deemo_jax.convert.qformer import _module_root, ln_vision_key_table, qformer_ignorable_keys, qformer_key_table
from deemo_jax.models.eva_vit import EvaViTConfig
from deemo_jax.models.imagebind_audio import ImageBindAudioConfig
from deemo_jax.models.qformer import QFormerConfig


def convert_tensor(rule: TensorRule, value: np.ndarray, dtype=None) -> np.ndarray:
    """Apply one rule (shape already checked) and cast to the storage ``dtype`` when given."""
    out = np.asarray(rule.transform(np.asarray(value)))
    return out if dtype is None else out.astype(dtype)


def params_from_table(
    state_dict: Mapping[str, np.ndarray],
    table: Mapping[str, TensorRule],
    ignorable: Iterable[str] = (),
    *,
    in_scope: Callable[[str], bool] = lambda key: True,
    dtype=None,
    context: str = "",
) -> dict:
    """Check the keys of ``state_dict`` that are ``in_scope`` against ``table``, then build the pure dict.

    Keys outside the scope belong to other components of a combined checkpoint and are not looked at.
    """
    available = {k: tuple(np.shape(v)) for k, v in state_dict.items() if in_scope(k)}
    check_keys(available, {k: r.shape for k, r in table.items()}, ignorable, context=context)
    out: dict = {}
    for key, rule in table.items():
        value = convert_tensor(rule, state_dict[key], dtype)
        if rule.target is not None:
            set_path(out, rule.target, value)
    return out


def eva_vit_params_from_torch(
    state_dict: Mapping[str, np.ndarray], config: EvaViTConfig, prefix: str = ""
) -> dict:
    """Pure dict for ``nnx.replace_by_pure_dict(nnx.state(EvaViT(config)), ...)`` (keys under ``prefix`` only)."""
    return params_from_table(
        state_dict,
        eva_vit_key_table(config, prefix),
        list(eva_vit_ignorable_keys(config, prefix)),
        in_scope=lambda key: key.startswith(prefix),
        dtype=config.param_dtype,
        context=f"EVA ViT ({prefix or 'eva_vit_g.pth'})",
    )


def qformer_params_from_torch(
    state_dict: Mapping[str, np.ndarray],
    config: QFormerConfig,
    prefix: str = "Qformer.bert.",
    query_tokens_key: str = "query_tokens",
) -> dict:
    """Pure dict for ``nnx.replace_by_pure_dict(nnx.state(QFormer(config)), ...)``, query tokens included."""
    root = _module_root(prefix)
    return params_from_table(
        state_dict,
        qformer_key_table(config, prefix, query_tokens_key),
        qformer_ignorable_keys(prefix),
        in_scope=lambda key: key.startswith(root) or key == query_tokens_key,
        dtype=config.param_dtype,
        context=f"Q-Former ({prefix or 'no prefix'}, {query_tokens_key})",
    )


def ln_vision_params_from_torch(
    state_dict: Mapping[str, np.ndarray], *, width: int = 1408, prefix: str = "", param_dtype=np.float32
) -> dict:
    """BLIP-2 ``ln_vision.weight/bias`` -> pure dict of ``layers.LayerNorm(width, eps=1e-5)``."""
    scope = f"{prefix}ln_vision."
    return params_from_table(
        state_dict,
        ln_vision_key_table(width, prefix),
        in_scope=lambda key: key.startswith(scope),
        dtype=param_dtype,
        context="ln_vision",
    )


def imagebind_audio_params_from_torch(
    state_dict: Mapping[str, np.ndarray], config: ImageBindAudioConfig, prefix: str = ""
) -> dict:
    """Pure dict for ``nnx.replace_by_pure_dict(nnx.state(ImageBindAudio(config)), ...)``.

    Raises ``ValueError`` (from the table's check) when the checkpoint's logit scale differs from the config's.
    """
    return params_from_table(
        state_dict,
        imagebind_audio_key_table(config, prefix),
        imagebind_audio_ignorable_keys(prefix),
        in_scope=lambda key: key.startswith(prefix),
        dtype=config.param_dtype,
        context=f"ImageBind audio ({prefix or 'imagebind_huge.pth'})",
    )


def deemo_trainable_params_from_torch(
    state_dict: Mapping[str, np.ndarray],
    *,
    video_qformer: QFormerConfig | None,
    audio_qformer: QFormerConfig | None,
    llm_hidden_size: int,
    max_frame_positions: int = 32,
    max_audio_clips: int = 8,
) -> dict:
    """Pure dict ``{attribute: params}`` for the branches whose config is given (None: branch not read)."""
    table: dict[str, TensorRule] = {}
    branches = []
    if video_qformer is not None:
        branches.append(VIDEO)
        table.update(branch_key_table(VIDEO, video_qformer, max_frame_positions, llm_hidden_size))
    if audio_qformer is not None:
        branches.append(AUDIO)
        table.update(branch_key_table(AUDIO, audio_qformer, max_audio_clips, llm_hidden_size))
    return params_from_table(
        state_dict, table, deemo_ignorable_keys(branches), context="Video-LLaMA fine-tuned checkpoint"
    )
