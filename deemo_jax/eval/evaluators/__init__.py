"""End-of-training evaluators, one module each, named by a training config's ``eval.type``.

``deemo_jax.train.evaluators`` imports ``deemo_jax.eval.evaluators.<type>`` by that name (big_vision's
``evaluators/common.py``), so the trainer never imports the evaluation package. A module here defines
``evaluate(cfg, model_config, model, workdir) -> dict`` (the metrics summary it wrote).
"""
