"""Useful-FLOP counts against hand counts of the tiny configs."""

from __future__ import annotations

import pytest

from deemo_jax.models.deemo_llama import DeemoLlamaConfig
from deemo_jax.train.flops import (
    example_flops,
    imagebind_forward,
    llm_flops_per_token,
    peak_flops_per_device,
    vit_forward,
)

TINY = DeemoLlamaConfig.tiny()


def test_imagebind_hand_count():
    # tiny: width 32, depth 2, mlp 128, out 24, 16x16 kernel stride 10 on 128x204 -> 12 x 19 = 228 patches.
    tokens = 229
    stem = 2 * 228 * 16 * 16 * 1 * 32
    block = 2 * tokens * 4 * 32 * 32 + 2 * tokens * 32 * 128 * 2 + 2 * 2 * tokens * (tokens + 1) * 32
    assert imagebind_forward(TINY.audio_encoder) == stem + 2 * block + 2 * 32 * 24


def test_vit_hand_count():
    # tiny: width 32, depth 2, mlp 64, 224 px / patch 14 -> 256 patches + CLS.
    tokens = 257
    patch = 2 * 256 * 3 * 14 * 14 * 32
    block = 2 * tokens * 4 * 32 * 32 + 2 * tokens * 32 * 64 * 2 + 2 * 2 * tokens * tokens * 32
    assert vit_forward(TINY.vit) == patch + 2 * block


def test_llm_and_example_totals():
    llm = TINY.llm  # hidden 32, 2 layers, 4 heads / 2 kv heads of 8, mlp 64, vocab 128
    per_layer = 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64)
    assert llm_flops_per_token(llm) == 2 * per_layer + 2 * 32 * 128
    seq = 40
    attention = 2 * (2 * 2 * seq * seq * 32 / 2)  # two layers, causal half
    frozen = example_flops(TINY, seq, num_frames=0, num_clips=0)
    assert frozen.llm == pytest.approx(2 * llm_flops_per_token(llm) * seq + 3 * attention)  # fwd + act. bwd
    trained = example_flops(TINY, seq, num_frames=0, num_clips=0, llm_trainable=True)
    assert trained.llm == pytest.approx(3 * llm_flops_per_token(llm) * seq + 3 * attention)
    full = example_flops(TINY, seq, num_frames=2, num_clips=3)
    assert full.frozen_encoders > 2 * vit_forward(TINY.vit) + 3 * imagebind_forward(TINY.audio_encoder)
    assert full.trainable > 0 and full.total == full.frozen_encoders + full.trainable + full.llm


def test_peak_by_device_kind():
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("cpu") is None
