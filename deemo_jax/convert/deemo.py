"""Video-LLaMA / AffectGPT / DEEMO fine-tuned ``.pth`` (``["model"]``) -> the trainable parts of ``DeemoLlama``.

Those checkpoints hold ``state_dict()`` minus the frozen parameters, so besides the trainable keys of the video
and/or audio branch they carry buffers (``*.position_ids``, ``*log_logit_scale``, ``*rotary_emb.inv_freq``,
``audio_encoder.modality_preprocessors.text.mask``), which are expected and skipped (reference_spec §4, §6, §8).

| torch keys | DeemoLlama attribute |
|---|---|
| ``video_Qformer.bert.*``, ``video_query_tokens`` | ``video_qformer`` (queries included) |
| ``video_frame_position_embedding.weight`` [T, 768] | ``video_frame_position_embedding.embedding`` |
| ``llama_proj.weight/bias`` | ``llama_proj.kernel`` (transposed) / ``.bias`` |
| ``audio_Qformer.bert.*``, ``audio_query_tokens`` | ``audio_qformer`` |
| ``audio_position_embedding.weight`` [8, 1024] | ``audio_position_embedding.embedding`` |
| ``audio_llama_proj.weight/bias`` | ``audio_llama_proj.kernel`` / ``.bias`` |

A file may hold one branch or both; :func:`branches_in` tells which.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from deemo_jax.convert.common import TensorRule, linear_kernel
from deemo_jax.convert.qformer import qformer_ignorable_keys, qformer_key_table
from deemo_jax.models.qformer import QFormerConfig


@dataclass(frozen=True)
class Branch:
    """Torch names of one trainable branch and the DeemoLlama attributes they load into."""

    name: str
    qformer_prefix: str  # "video_Qformer.bert."
    query_tokens_key: str  # "video_query_tokens"
    position_key: str  # "video_frame_position_embedding.weight"
    proj_key: str  # "llama_proj"
    qformer_attr: str
    position_attr: str
    proj_attr: str

    @property
    def key_prefixes(self) -> tuple[str, ...]:
        root = self.qformer_prefix.removesuffix("bert.")
        return root, self.query_tokens_key, self.position_key, f"{self.proj_key}."

    @property
    def attributes(self) -> tuple[str, str, str]:
        return self.qformer_attr, self.position_attr, self.proj_attr


VIDEO = Branch(
    "video", "video_Qformer.bert.", "video_query_tokens", "video_frame_position_embedding.weight", "llama_proj",
    "video_qformer", "video_frame_position_embedding", "llama_proj",
)
AUDIO = Branch(
    "audio", "audio_Qformer.bert.", "audio_query_tokens", "audio_position_embedding.weight", "audio_llama_proj",
    "audio_qformer", "audio_position_embedding", "audio_llama_proj",
)
BRANCHES = {"video": VIDEO, "audio": AUDIO}

# Buffers that Video-LLaMA's _save_checkpoint keeps (reference_spec §8); read by nobody here.
BUFFER_PATTERNS = (
    r"(.+\.)?position_ids",
    r"(.+\.)?log_logit_scale",
    r"(.+\.)?rotary_emb\.inv_freq",
    r"audio_encoder\.modality_preprocessors\.text\.mask",
)


def branches_in(keys: Iterable[str]) -> list[Branch]:
    """The branches of which the checkpoint holds at least one trainable key (buffers do not count)."""
    keys = list(keys)
    return [
        b for b in (VIDEO, AUDIO) if any(k == p or k.startswith(p) for k in keys for p in b.key_prefixes)
    ]


def branch_key_table(
    branch: Branch, qformer: QFormerConfig, num_positions: int, llm_hidden_size: int
) -> dict[str, TensorRule]:
    """torch key -> rule whose target path starts with the DeemoLlama attribute name."""
    table = {
        key: TensorRule((branch.qformer_attr, *rule.target), rule.shape, rule.transform)
        for key, rule in qformer_key_table(qformer, branch.qformer_prefix, branch.query_tokens_key).items()
    }
    table[branch.position_key] = TensorRule(
        (branch.position_attr, "embedding"), (num_positions, qformer.encoder_width)
    )
    table[f"{branch.proj_key}.weight"] = TensorRule(
        (branch.proj_attr, "kernel"), (llm_hidden_size, qformer.hidden_size), linear_kernel
    )
    table[f"{branch.proj_key}.bias"] = TensorRule((branch.proj_attr, "bias"), (llm_hidden_size,))
    return table


def deemo_ignorable_keys(branches: Iterable[Branch] = (VIDEO, AUDIO)) -> list[str]:
    """Buffers plus the keys LAVIS Q-Formers carry but a queries-only Q-Former never reads."""
    patterns = list(BUFFER_PATTERNS)
    for b in branches:
        patterns += qformer_ignorable_keys(b.qformer_prefix)
    return patterns
