"""Useful FLOPs of one DEEMO-LLaMA training example, for tokens/s and model-FLOPs utilisation.

Only work the paper's recipe needs is counted (matmuls, 2 FLOPs per multiply-add):
- frozen encoders (EVA ViT, image Q-Former, ImageBind audio): forward only;
- trainable Q-Formers and projections: forward + backward (3x forward);
- frozen LLM: forward (2N per token) + activation backward (2N per token), no weight gradients; attention
  scores/values are causal (half of the square) and their backward costs 2x their forward. Sequences are
  counted at their padded length (what the step computes), like MaxText.
MaxText counts a frozen LLM x3 like full training, which overstates useful work (jax_ecosystem §1.4); we don't.
"""

from __future__ import annotations

import dataclasses

# Dense bf16 peak FLOP/s per chip, for MFU (device_kind substring -> peak).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v6": 918e12,
    "TPU v4": 275e12,
}


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of a device kind (None when unknown, e.g. CPU)."""
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None


def _attention(q_len: int, k_len: int, width: int, causal: bool = False) -> float:
    """Forward FLOPs of softmax(QK^T)V over all heads (2 matmuls)."""
    flops = 2 * 2 * q_len * k_len * width
    return flops / 2 if causal else flops


def _transformer_block(tokens: int, width: int, mlp: int, keys: int | None = None) -> float:
    """Forward FLOPs of one pre-LN ViT block on ``tokens`` tokens (q/k/v/o projections, 2-matmul MLP, attention)."""
    proj = 2 * tokens * 4 * width * width
    ffn = 2 * tokens * width * mlp * 2
    return proj + ffn + _attention(tokens, keys or tokens, width)


def qformer_forward(cfg, memory_tokens: int) -> float:
    """Forward FLOPs of one Q-Former call (queries attend to ``memory_tokens`` encoder tokens)."""
    q, h, i, e = cfg.num_queries, cfg.hidden_size, cfg.intermediate_size, cfg.encoder_width
    total = 0.0
    for layer in range(cfg.num_layers):
        total += 2 * q * 4 * h * h + _attention(q, q, h)  # self-attention
        if layer % cfg.cross_attention_freq == 0:
            total += 2 * q * 2 * h * h + 2 * memory_tokens * 2 * e * h + _attention(q, memory_tokens, h)
        total += 2 * q * 2 * h * i  # query FFN
    return total


@dataclasses.dataclass(frozen=True)
class ExampleFlops:
    frozen_encoders: float
    trainable: float
    llm: float

    @property
    def total(self) -> float:
        return self.frozen_encoders + self.trainable + self.llm


def llm_flops_per_token(llm) -> float:
    """Forward matmul FLOPs of one token through the LLaMA projections, MLP and LM head (no attention)."""
    d = llm.hidden_size
    kv = llm.num_key_value_heads * llm.head_dim
    per_layer = 2 * (d * d * 2 + d * kv * 2 + 3 * d * llm.intermediate_size)
    return llm.num_hidden_layers * per_layer + 2 * d * llm.vocab_size


def vit_forward(vit) -> float:
    """Forward FLOPs of the EVA ViT on one frame (patch conv + blocks)."""
    tokens = vit.num_tokens
    patch = 2 * (tokens - 1) * 3 * vit.patch_size**2 * vit.width
    return patch + vit.depth * _transformer_block(tokens, vit.width, vit.mlp_dim)


def imagebind_forward(ab) -> float:
    """Forward FLOPs of the ImageBind audio tower on one clip (stem conv, blocks with the bias_kv key, head)."""
    tokens = ab.num_tokens  # CLS + mel x time patches
    stem = 2 * (tokens - 1) * ab.kernel_size**2 * ab.width  # one input channel
    blocks = ab.depth * _transformer_block(tokens, ab.width, ab.mlp_dim, keys=tokens + 1)
    return stem + blocks + 2 * ab.width * ab.out_dim


def example_flops(
    config, seq_len: int, num_frames: int, num_clips: int, *, llm_trainable: bool = False
) -> ExampleFlops:
    """Useful FLOPs of one training example of ``seq_len`` LLM tokens with the given frames/clips (0 = off).

    ``config`` is a ``DeemoLlamaConfig``. ``llm_trainable`` (the demo trains its tiny LLM) adds the LLM's
    weight-gradient matmuls (2N per token), i.e. counts it like full training.
    """
    frozen = trainable = 0.0
    llm = config.llm
    d = llm.hidden_size
    if num_frames and config.vit is not None:
        image_qformer = config.image_qformer
        per_frame = vit_forward(config.vit) + qformer_forward(image_qformer, config.vit.num_tokens)
        frozen += num_frames * per_frame
        video_memory = num_frames * image_qformer.num_queries
        vq = config.video_qformer
        trainable += 3 * (qformer_forward(vq, video_memory) + 2 * vq.num_queries * vq.hidden_size * d)
    if num_clips and config.audio_encoder is not None:
        frozen += num_clips * imagebind_forward(config.audio_encoder)
        aq = config.audio_qformer
        trainable += 3 * (qformer_forward(aq, num_clips) + 2 * aq.num_queries * aq.hidden_size * d)
    attention = llm.num_hidden_layers * _attention(seq_len, seq_len, d, causal=True)
    passes = 3 if llm_trainable else 2  # forward + activation backward (+ weight backward)
    llm_flops = passes * llm_flops_per_token(llm) * seq_len + 3 * attention
    return ExampleFlops(frozen_encoders=frozen, trainable=trainable, llm=llm_flops)
