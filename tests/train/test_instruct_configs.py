"""configs/instruct.py's variants load and say what they promise (no data, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import load_config

from deemo_jax.models.deemo_llama import PAPER_TRAINABLE
from deemo_jax.models.llama import LlamaConfig
from deemo_jax.train import config as config_module
from deemo_jax.train.config import FROZEN_CHECKPOINTS, model_config, tokenizer_path
from deemo_jax.train.partition import TrainableFilter


@pytest.mark.parametrize("variant", [None, "paper", "demo", "demo_frozen_llm"])
def test_every_variant_loads_locked(variant):
    cfg = load_config("instruct.py", variant)
    with pytest.raises(AttributeError):
        cfg.no_such_key = 1


def test_frozen_llm_demo_trains_only_the_paper_modules_on_the_converted_smollm2():
    cfg = load_config("instruct.py", "demo_frozen_llm")
    trainable = TrainableFilter(cfg.trainable)
    assert not trainable.matches("llama/") and all(trainable.matches(m + "/") for m in PAPER_TRAINABLE)
    llm = Path(cfg.checkpoints.llm)
    assert llm.parts == ("demo_data", "smollm2")  # relative to the checkout, like the demo corpus
    assert tokenizer_path(cfg) == str(llm / "tokenizer") and cfg.data.template == ""
    assert "gguf" in FROZEN_CHECKPOINTS["llm"][1]
    assert cfg.model.random_frozen and cfg.model.frozen_dtype == "float32"  # random encoders only: see below
    assert cfg.data.task == "both" and cfg.eval.at_end and cfg.eval.split == "test"
    assert cfg.eval.max_new_tokens >= 32  # room for reasoning after the label
    assert cfg.workdir != load_config("instruct.py", "demo").workdir


def test_the_converted_llm_replaces_the_small_presets_llm(monkeypatch):
    cfg = load_config("instruct.py", "demo_frozen_llm")
    smollm2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, tie_word_embeddings=True)
    monkeypatch.setattr(config_module, "llm_config_from_manifest", lambda directory: smollm2)
    model = model_config(cfg, vocab_size=49152)
    assert model.llm.hidden_size == 576 and model.llm.num_hidden_layers == 30
    assert model.vit.depth == 2 and model.num_video_tokens == 8 and model.num_audio_tokens == 4  # tiny encoders
