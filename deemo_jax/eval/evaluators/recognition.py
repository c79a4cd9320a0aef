"""Emotion recognition (accuracy / weighted and macro F1) on ``eval.split`` with the trained model."""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from deemo_jax.data.shards import read_label_set
from deemo_jax.eval.evaluate import evaluate_recognition
from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.train.config import data_config


def evaluate(cfg: ConfigDict, model_config: DeemoLlamaConfig, model: DeemoLlama, workdir: Path) -> dict:
    """Run ``cfg.eval`` on ``model``; results go to ``{workdir}/eval``."""
    data = data_config(cfg, model_config, batch_size=cfg.eval.batch_size, split=cfg.eval.split)
    labels = tuple(cfg.data.labels) or read_label_set(data.shard_dir)
    return evaluate_recognition(
        model, data, labels=labels, output_dir=workdir / "eval", batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
    )
