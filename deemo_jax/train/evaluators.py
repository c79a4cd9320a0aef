"""End-of-run evaluation, looked up by the name the config gives (``eval.type``), never imported by the trainer.

``eval.type = "recognition"`` names ``deemo_jax.eval.evaluators.recognition`` (big_vision's
``evaluators/common.py`` does the same): training stays below evaluation in the layer order, and a new
evaluator is a new module there, not an edit of the trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from ml_collections import ConfigDict

from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig

PACKAGE = "deemo_jax.eval.evaluators"
Evaluator = Callable[[ConfigDict, DeemoLlamaConfig, DeemoLlama, Path], dict]


def evaluator_exists(name: str) -> bool:
    """Whether ``eval.type = name`` names an evaluator module (checked by the config check)."""
    return bool(name) and name.isidentifier() and importlib.util.find_spec(f"{PACKAGE}.{name}") is not None


def get_evaluator(name: str) -> Evaluator:
    """The ``evaluate`` function of the evaluator module ``name``."""
    return importlib.import_module(f"{PACKAGE}.{name}").evaluate
