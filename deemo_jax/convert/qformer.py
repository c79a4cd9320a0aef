"""LAVIS Q-Former checkpoints -> :class:`~deemo_jax.models.qformer.QFormer` (plus ``ln_vision``).

One function serves the three Q-Formers of Video-LLaMA / AffectGPT checkpoints (reference_spec §3.3, §4, §6):

| branch | prefix | query tokens key |
|---|---|---|
| image (BLIP-2 ``blip2_pretrained_flant5xxl.pth``) | ``Qformer.bert.`` | ``query_tokens`` |
| video | ``video_Qformer.bert.`` | ``video_query_tokens`` |
| audio | ``audio_Qformer.bert.`` | ``audio_query_tokens`` |

A mapping looks at the keys of its own module (``prefix`` without the trailing ``bert.``, e.g. ``Qformer.``) and
its query tokens; everything else in a combined checkpoint belongs to other components. Inside that scope the
word/position embeddings, ``position_ids``, the text FFN (``layer.{l}.intermediate.*`` / ``layer.{l}.output.*``,
unused with queries only) and the MLM head ``cls.*`` are ignorable. ``layer.{l}.attention.output.*`` is the
attention output block and is required.
"""

from __future__ import annotations

import re

from deemo_jax.convert.common import TensorRule, linear_kernel
from deemo_jax.models.qformer import QFormerConfig


def _module_root(prefix: str) -> str:
    return prefix[: -len("bert.")] if prefix.endswith("bert.") else prefix


def _attention_rules(table: dict, key: str, target: tuple, hidden: int, kv_width: int) -> None:
    for name, in_width in (("query", hidden), ("key", kv_width), ("value", kv_width)):
        table[f"{key}.self.{name}.weight"] = TensorRule((*target, name, "kernel"), (hidden, in_width), linear_kernel)
        table[f"{key}.self.{name}.bias"] = TensorRule((*target, name, "bias"), (hidden,))
    _output_rules(table, f"{key}.output", (*target, "output"), hidden, hidden)


def _output_rules(table: dict, key: str, target: tuple, hidden: int, in_width: int) -> None:
    table[f"{key}.dense.weight"] = TensorRule((*target, "dense", "kernel"), (hidden, in_width), linear_kernel)
    table[f"{key}.dense.bias"] = TensorRule((*target, "dense", "bias"), (hidden,))
    table[f"{key}.LayerNorm.weight"] = TensorRule((*target, "layernorm", "scale"), (hidden,))
    table[f"{key}.LayerNorm.bias"] = TensorRule((*target, "layernorm", "bias"), (hidden,))


def qformer_key_table(
    config: QFormerConfig, prefix: str = "Qformer.bert.", query_tokens_key: str = "query_tokens"
) -> dict[str, TensorRule]:
    """torch key -> (NNX path, torch shape, transform) for every tensor the model reads."""
    c, p, h = config, prefix, config.hidden_size
    table = {
        query_tokens_key: TensorRule(("query_tokens",), (1, c.num_queries, h)),
        f"{p}embeddings.LayerNorm.weight": TensorRule(("embeddings_layernorm", "scale"), (h,)),
        f"{p}embeddings.LayerNorm.bias": TensorRule(("embeddings_layernorm", "bias"), (h,)),
    }
    for i in range(c.num_layers):
        key, target = f"{p}encoder.layer.{i}", ("layer", i)
        _attention_rules(table, f"{key}.attention", (*target, "attention"), h, h)
        if c.has_cross_attention(i):
            _attention_rules(table, f"{key}.crossattention", (*target, "crossattention"), h, c.encoder_width)
        table[f"{key}.intermediate_query.dense.weight"] = TensorRule(
            (*target, "intermediate_query", "kernel"), (c.intermediate_size, h), linear_kernel
        )
        table[f"{key}.intermediate_query.dense.bias"] = TensorRule(
            (*target, "intermediate_query", "bias"), (c.intermediate_size,)
        )
        _output_rules(table, f"{key}.output_query", (*target, "output_query"), h, c.intermediate_size)
    return table


def expected_qformer_keys(
    config: QFormerConfig, prefix: str = "Qformer.bert.", query_tokens_key: str = "query_tokens"
) -> dict[str, tuple[int, ...]]:
    return {k: r.shape for k, r in qformer_key_table(config, prefix, query_tokens_key).items()}


def qformer_ignorable_keys(prefix: str = "Qformer.bert.") -> list[str]:
    """Regexes (full match) of keys that LAVIS checkpoints hold but the queries-only Q-Former never reads."""
    p, root = re.escape(prefix), re.escape(_module_root(prefix))
    return [
        rf"{p}embeddings\.(word_embeddings|position_embeddings)\..+",
        rf"{p}embeddings\.position_ids",
        rf"{p}encoder\.layer\.\d+\.(intermediate|output)\..+",  # text FFN; not attention.output
        rf"{root}cls\..+",
    ]


def ln_vision_key_table(width: int = 1408, prefix: str = "") -> dict[str, TensorRule]:
    return {
        f"{prefix}ln_vision.weight": TensorRule(("scale",), (width,)),
        f"{prefix}ln_vision.bias": TensorRule(("bias",), (width,)),
    }
