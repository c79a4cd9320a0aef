"""The tokenizer and prompt template of a converted LLM: the manifest's ``llm`` section (docs/convert.md).

Every kind that converts an LLM (``hf-llama``, ``gguf``) writes ``DIR/tokenizer/`` and records::

    "llm": {"family": "llama" | "qwen2" | "mistral",          # config.json's model_type
            "template": PromptTemplate.to_record(),            # deemo_jax.data.templates
            "tokenizer": {"kind": "sentencepiece" | "bpe", "legacy": true | false | null,
                          "chat_template": bool, "vocab_size": int} | null}   # null: the source had none

The template is resolved from the converted tokenizer folder (``--template``: ``""`` = its chat template if it
has one, else ``vicuna``; or a built-in name), so training and evaluation read it instead of guessing
(:func:`deemo_jax.convert.converted.llm_record`). ``legacy`` is the measured SentencePiece behaviour after added
tokens (:func:`deemo_jax.data.tokenizer.legacy_spaces`); a LLaMA SentencePiece ``tokenizer_config.json`` that
states no ``legacy`` gets ``"legacy": true``, the behaviour of the transformers < 4.31 that Vicuna and AffectGPT
were trained with (an explicit value is kept; likewise ``add_bos_token: true``, 4.x's default).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deemo_jax.data import templates
from deemo_jax.data.prompts import VIDEO_PLACEHOLDER

SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
# transformers' class for LLaMA-family SentencePiece tokenizers: the one that honours ``legacy`` and adds BOS.
SENTENCEPIECE_CLASS = "LlamaTokenizer"


def check_template_option(template: str, kind: str, converts_llm: bool) -> None:
    """Refuse an unknown ``--template``, or one given for a kind that converts no LLM (one line, exit 2)."""
    if template not in ("", *templates.NAMES):
        raise ValueError(
            f"--template {template!r}: choose one of {list(templates.NAMES)}, or leave it out for the tokenizer's "
            "chat template (vicuna when it has none)"
        )
    if template and not converts_llm:
        raise ValueError(f"--template {template!r}: --source {kind} converts no LLM or tokenizer; leave it out")


def complete_sentencepiece_config(tokenizer_dir: Path) -> list[str]:
    """Make a copied SentencePiece tokenizer load in transformers 5 as the transformers < 4.31 it was written
    for did: ``legacy: true``, ``add_bos_token: true`` and ``tokenizer_class: LlamaTokenizer`` where its
    ``tokenizer_config.json`` states none (5's defaults differ); returns notes on what was set (none for BPE)."""
    if not (tokenizer_dir / SENTENCEPIECE_MODEL).is_file():
        return []
    path = tokenizer_dir / TOKENIZER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name} of the source tokenizer is not valid JSON ({e}); fix or replace it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path.name} of the source tokenizer is not a JSON object; fix or replace it")
    added = {}
    if "legacy" not in config:
        added["legacy"] = True
    if "add_bos_token" not in config:
        added["add_bos_token"] = True
    if not config.get("tokenizer_class"):
        added["tokenizer_class"] = SENTENCEPIECE_CLASS
    if not added:
        return []
    path.write_text(json.dumps({**config, **added}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes = []
    if "legacy" in added:
        notes.append(
            f"{TOKENIZER_CONFIG} states no legacy: set legacy=true (SentencePiece '\u2581' after added tokens, "
            "as Vicuna/AffectGPT were trained with transformers < 4.31)"
        )
    if "add_bos_token" in added:
        notes.append(f"{TOKENIZER_CONFIG} states no add_bos_token: set add_bos_token=true (LLaMA's <s> first)")
    if "tokenizer_class" in added:
        notes.append(f"{TOKENIZER_CONFIG} names no tokenizer_class: set {SENTENCEPIECE_CLASS}")
    return notes


def build_llm_record(
    tokenizer_dir: Path | None, template: str, hf_config: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The manifest's ``llm`` section and notes (e.g. placeholder ids that do not fit the LLM's vocabulary).

    ``tokenizer_dir`` is the converted ``DIR/tokenizer`` (None when the source has no tokenizer). Raises a
    one-line ``ValueError`` when the tokenizer does not load or the template does not fit it.
    """
    family = str(hf_config.get("model_type", "llama"))
    if tokenizer_dir is None:
        if template == templates.CHAT_TEMPLATE:
            raise ValueError(
                "--template chat_template needs the tokenizer's chat template, but the source has no tokenizer "
                f"files; use one of {list(templates.BUILTIN)}"
            )
        return {"family": family, "template": templates.resolve(template).to_record(), "tokenizer": None}, []
    from deemo_jax.data.tokenizer import load_tokenizer, tokenizer_record  # transformers: seconds to import

    try:
        tokenizer = load_tokenizer(tokenizer_dir, check_placeholders=False)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"the source's tokenizer does not load ({' '.join(str(e).split())}); fix its tokenizer files, or remove "
            "them to convert the weights without a tokenizer"
        ) from None
    chosen = templates.resolve(template, tokenizer)
    record = tokenizer_record(tokenizer)
    notes = []
    vocab = hf_config.get("vocab_size")
    placeholder = tokenizer.convert_tokens_to_ids(VIDEO_PLACEHOLDER)
    if vocab is not None and placeholder != int(vocab):
        notes.append(
            f"the tokenizer gives <ImageHere>/<AudioHere> the ids {placeholder}/{placeholder + 1}, but the LLM has "
            f"vocab_size {vocab}: training needs them at {vocab}/{int(vocab) + 1} "
            "(deemo_jax.data.tokenizer.placeholder_ids), so use a tokenizer that fits this LLM"
        )
    return {"family": family, "template": chosen.to_record(), "tokenizer": record}, notes


def describe(record: Mapping[str, Any], template_option: str) -> str:
    """One summary line: family, the chosen template (and why), the tokenizer."""
    template = templates.PromptTemplate.from_record(record["template"])
    tokenizer = record["tokenizer"]
    why = f"--template {template_option}" if template_option else (
        "the tokenizer's chat template" if template.name == templates.CHAT_TEMPLATE else "default, no chat template"
    )
    if tokenizer is None:
        tok = "no tokenizer"
    else:
        legacy = "" if tokenizer["legacy"] is None else f", legacy {str(tokenizer['legacy']).lower()}"
        chat = "with" if tokenizer["chat_template"] else "no"
        tok = f"tokenizer {tokenizer['kind']}{legacy}, vocab {tokenizer['vocab_size']}, {chat} chat template"
    return f"llm: family {record['family']}; prompt template {template.describe()} ({why}); {tok}"
