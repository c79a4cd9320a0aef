"""What a run was trained with (deemo_jax.train.identity): the prompt template rule, the LLM identity of a random
or converted LLM, and the check that refuses another template or LLM naming both (older checkpoints pass)."""

from __future__ import annotations

import json
import logging

import pytest

from deemo_jax.convert.converted import FORMAT, FORMAT_VERSION
from deemo_jax.data.templates import BUILTIN, TemplateMismatchError
from deemo_jax.train.config import base_config
from deemo_jax.train.identity import check_trained_with, llm_identity, meta_record, run_template

WHERE = "checkpoint runs/x/checkpoints/4"


def converted_llm(directory, sha: str, template: str = "chatml"):
    """A converted hf-llama directory as far as its manifest goes (what identity reads)."""
    directory.mkdir()
    (directory / "params").mkdir()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "hf-llama", "components": {},
                "sources": [{"name": "model.safetensors", "bytes": 10, "sha256": sha}],
                "llm": {"family": "qwen2", "template": BUILTIN[template].to_record(), "tokenizer": {}}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory)


def test_run_template_follows_the_pipeline_rule(tmp_path):
    cfg = base_config()
    assert run_template(cfg, tokenizer=None) == BUILTIN["vicuna"]  # no LLM record, no chat template
    assert run_template(cfg, None, name="llama2") == BUILTIN["llama2"]
    cfg.checkpoints.llm = converted_llm(tmp_path / "llm", "a" * 64)
    assert run_template(cfg, None) == BUILTIN["chatml"]  # "" = the converted LLM's record
    cfg.data.template = "vicuna"
    assert run_template(cfg, None) == BUILTIN["vicuna"]  # a name wins
    with pytest.raises(ValueError, match="unknown prompt template 'alpaca'"):
        run_template(cfg, None, name="alpaca")


def test_llm_identity_of_a_random_and_a_converted_llm(tmp_path):
    cfg = base_config()
    cfg.model.preset = "tiny_1layer"
    assert llm_identity(cfg, 300) == {"random": "tiny_1layer", "vocab_size": 300}
    cfg.checkpoints.llm = converted_llm(tmp_path / "llm", "b" * 64)
    identity = llm_identity(cfg, 300)
    assert identity["family"] == "qwen2" and identity["template"]["name"] == "chatml"
    assert identity["sources"] == [{"name": "model.safetensors", "sha256": "b" * 64}]


def test_another_template_or_llm_is_refused_naming_both(tmp_path):
    cfg = base_config()
    cfg.checkpoints.llm = converted_llm(tmp_path / "a", "a" * 64)
    trained = meta_record(BUILTIN["vicuna"], llm_identity(cfg, 300))
    check_trained_with(trained, BUILTIN["vicuna"], llm_identity(cfg, 300), WHERE)  # the same: fine
    with pytest.raises(TemplateMismatchError) as error:
        check_trained_with(trained, BUILTIN["llama2"], llm_identity(cfg, 300), WHERE)
    message = str(error.value)
    assert WHERE in message and "'vicuna'" in message and "'llama2'" in message and "\n" not in message
    cfg.checkpoints.llm = converted_llm(tmp_path / "b", "b" * 64)
    with pytest.raises(TemplateMismatchError) as error:
        check_trained_with(trained, BUILTIN["vicuna"], llm_identity(cfg, 300), WHERE)
    message = str(error.value)
    assert f"sha256 {'a' * 64}" in message and f"sha256 {'b' * 64}" in message and "checkpoints.llm" in message
    random = {"random": "tiny_1layer", "vocab_size": 300}
    with pytest.raises(TemplateMismatchError, match="randomly initialised 'tiny_1layer' LLM"):
        check_trained_with(trained, BUILTIN["vicuna"], random, WHERE)


def test_a_checkpoint_written_before_the_record_loads_as_before(caplog):
    old_meta = {"layout_version": 1, "step": 4, "model_config": "..."}
    with caplog.at_level(logging.INFO, logger="deemo_jax.train.identity"):
        check_trained_with(old_meta, BUILTIN["llama2"], {"random": "demo", "vocab_size": 300}, WHERE)
    assert "records no prompt template or LLM" in caplog.text and "loaded as before" in caplog.text
