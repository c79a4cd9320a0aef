"""What a run was trained with: its prompt template and its LLM, recorded in every checkpoint and checked on use.

Every checkpoint's ``meta`` item holds ``"template"`` (:meth:`PromptTemplate.to_record`) and ``"llm"``: the
converted LLM's manifest ``llm`` section (family, template, tokenizer) plus its ``sources`` (file name and
sha256), or ``{"random": preset, "vocab_size": n}`` for a randomly initialised LLM (the demo). Resuming
training (:mod:`deemo_jax.train.trainer`) and loading a run for evaluation or inference
(:func:`deemo_jax.train.runs.load_run`) compare the template and LLM they would use now with the record and
refuse another one with :class:`TemplateMismatchError` naming both. Checkpoints written before these keys
existed load as before (a log line says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from deemo_jax.data import templates
from deemo_jax.data.templates import PromptTemplate, TemplateMismatchError
from deemo_jax.train.config import configured_template, llm_manifest

logger = logging.getLogger(__name__)

TEMPLATE_KEY = "template"
LLM_KEY = "llm"


def run_template(cfg: ConfigDict, tokenizer: Any, name: str | None = None) -> PromptTemplate:
    """The prompt template of the run config ``cfg`` (``name`` overrides ``data.template``): the data pipeline's
    rule, i.e. ``""`` = the converted LLM's record, else the tokenizer's chat template, else vicuna."""
    template = configured_template(cfg, name)
    return template if isinstance(template, PromptTemplate) else templates.resolve(template, tokenizer)


def llm_identity(cfg: ConfigDict, vocab_size: int) -> dict[str, Any]:
    """The LLM of ``cfg``: its converted manifest's ``llm`` section and source files, or the random preset."""
    converted = llm_manifest(cfg)
    if converted is None:
        return {"random": cfg.model.preset, "vocab_size": vocab_size}
    manifest, section = converted
    sources = [{"name": s.get("name"), "sha256": s.get("sha256")} for s in manifest.get("sources") or ()]
    return {**(section or {}), "sources": sources}


def meta_record(template: PromptTemplate, llm: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint ``meta`` entries recording ``template`` and ``llm``."""
    return {TEMPLATE_KEY: template.to_record(), LLM_KEY: dict(llm)}


def _llm_key(identity: Mapping[str, Any]) -> tuple:
    """What makes two LLMs the same: the random preset and vocabulary, or the converted source files."""
    if "random" in identity:
        return ("random", identity["random"], identity.get("vocab_size"))
    return ("converted", tuple((s.get("name"), s.get("sha256")) for s in identity.get("sources") or ()))


def describe_llm(identity: Mapping[str, Any]) -> str:
    """One phrase naming an LLM identity, for logs and error messages."""
    if "random" in identity:
        return f"a randomly initialised {identity['random']!r} LLM (vocabulary {identity.get('vocab_size')})"
    files = ", ".join(f"{s.get('name')} (sha256 {s.get('sha256')})" for s in identity.get("sources") or ())
    return f"the converted {identity.get('family') or 'LLM'} from {files or 'unrecorded source files'}"


def check_trained_with(meta: Mapping[str, Any], template: PromptTemplate, llm: Mapping[str, Any], where: str) -> None:
    """Raise :class:`TemplateMismatchError` (naming both) when ``template`` or ``llm`` is not what the checkpoint
    ``meta`` records; a checkpoint that records neither (older deemo-jax) passes, with a log line."""
    if TEMPLATE_KEY not in meta and LLM_KEY not in meta:
        logger.info("%s records no prompt template or LLM (written by an older deemo-jax): loaded as before, with "
                    "prompt template %s and %s", where, template.describe(), describe_llm(llm))
        return
    templates.check_same(meta.get(TEMPLATE_KEY), template, where)
    trained = meta.get(LLM_KEY)
    if trained is not None and _llm_key(trained) != _llm_key(llm):
        raise TemplateMismatchError(
            f"{where} was trained with {describe_llm(trained)}, but the config now builds {describe_llm(llm)}; "
            "set checkpoints.llm and model.preset back to the LLM it was trained with, or start a new workdir"
        )
