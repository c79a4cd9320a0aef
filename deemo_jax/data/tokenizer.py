"""Tokenizer loading and training (docs/DESIGN.md §4).

The LLM tokenizer is a Hugging Face tokenizer directory loaded with ``AutoTokenizer.from_pretrained(dir)``
(transformers 5 quirk: ``LlamaTokenizer(vocab_file=...)`` silently returns empty ids, the directory route
works). ``<ImageHere>`` and ``<AudioHere>`` are added as special tokens when missing, so their ids are the
LLM vocabulary size ``V`` and ``V + 1`` (32000/32001 for Vicuna); the LLM embedding is not resized. Pad is EOS
(AffectGPT).

SentencePiece ``legacy`` (``tokenizer_config.json``): with ``true`` every piece of text that follows an added
token (a placeholder, ``</s>``) starts with SentencePiece's ``"▁"``, as in the slow ``LlamaTokenizer`` of
transformers < 4.31 that Vicuna and AffectGPT were trained with; ``false`` (transformers 5's default) leaves it
out, which changes the ids right after every placeholder run (before ``</Audio>``, ``</Video>``). transformers 5
honours the flag (``Metaspace`` ``prepend_scheme`` ``always`` / ``first``); :func:`load_tokenizer` checks that
it did, and ``scripts/convert_checkpoint.py`` writes ``legacy: true`` for a LLaMA SentencePiece tokenizer whose
config predates the flag.

:func:`train_sentencepiece_tokenizer` trains a small LLaMA-like SentencePiece BPE model (unk 0, bos 1, eos 2,
byte fallback, ``###`` kept as one piece) for the demo corpus and the tests.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from deemo_jax.data.prompts import AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER
from deemo_jax.data.templates import BUILTIN

PLACEHOLDER_TOKENS = (VIDEO_PLACEHOLDER, AUDIO_PLACEHOLDER)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
SPACE_MARK = "\u2581"  # SentencePiece's "▁": a space, and the prefix of a word-initial piece


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} does not exist; pass the LLM's Hugging Face tokenizer "
            "directory (tokenizer.model or tokenizer.json + tokenizer_config.json) or create a small one "
            "with deemo_jax.data.tokenizer.train_sentencepiece_tokenizer"
        )
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"tokenizer directory {str(path)!r} holds neither of {list(_TOKENIZER_FILES)}; it contains "
            f"{present}. Point to the directory that holds the LLM's tokenizer files"
        )


def placeholder_ids(tokenizer: PreTrainedTokenizerBase, llm_vocab_size: int | None = None) -> tuple[int, int]:
    """``(video_id, audio_id)`` of ``<ImageHere>``/``<AudioHere>``, checked to be ``(V, V + 1)``.

    ``V`` is ``llm_vocab_size`` when given (the LLM's embedding rows), otherwise the tokenizer's base
    vocabulary size. Raises ``ValueError`` if a placeholder is missing or has another id, which would make
    the model look up an embedding row that is not a placeholder slot.
    """
    vocab = tokenizer.vocab_size if llm_vocab_size is None else int(llm_vocab_size)
    ids = []
    for token in PLACEHOLDER_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"tokenizer has no {token} token; load it with deemo_jax.data.tokenizer.load_tokenizer"
            )
        ids.append(int(token_id))
    if ids != [vocab, vocab + 1]:
        raise ValueError(
            f"placeholder ids {dict(zip(PLACEHOLDER_TOKENS, ids, strict=True))} must be {vocab} and "
            f"{vocab + 1} "
            f"(the LLM vocabulary size and the next id); the tokenizer has {len(tokenizer)} tokens in total. "
            "The tokenizer does not belong to this LLM (check the LLM config's vocab_size), or it carries "
            "extra added tokens before the placeholders"
        )
    return ids[0], ids[1]


def load_tokenizer(
    path: str | os.PathLike, llm_vocab_size: int | None = None, *, check_placeholders: bool = True
) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory, add the placeholder tokens when missing, set pad = EOS.

    The placeholder ids are checked against ``llm_vocab_size`` (the tokenizer's own vocabulary size when None;
    see :func:`placeholder_ids`) unless ``check_placeholders`` is false (the converter reports a misfit instead).
    The returned tokenizer is a fast (``tokenizers``-backed) one, as the pipeline needs offset mappings. An EOS
    token is required (it ends padding); BOS is not (ChatML models have none: their template says ``bos`` false,
    and :func:`deemo_jax.data.templates.resolve` refuses a BOS template for them). A ``legacy`` flag in
    ``tokenizer_config.json`` is checked to be honoured (see the module docstring).
    """
    path = Path(path)
    _check_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a broken directory
        raise ValueError(
            f"could not load a tokenizer from {str(path)!r}: {type(e).__name__}: {e}. The directory must be "
            "a Hugging Face tokenizer directory (tokenizer_config.json with tokenizer.model or "
            "tokenizer.json)"
        ) from e
    if not tokenizer.is_fast:
        raise ValueError(
            f"tokenizer from {str(path)!r} is a slow (Python) tokenizer ({type(tokenizer).__name__}); the "
            "pipeline needs a tokenizers-backed one: add a tokenizer.json or a sentencepiece tokenizer.model"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"tokenizer from {str(path)!r} defines no EOS token (LLaMA: </s> 2); set eos_token in its "
            "tokenizer_config.json"
        )
    missing = [t for t in PLACEHOLDER_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.pad_token = tokenizer.eos_token
    if check_placeholders:
        placeholder_ids(tokenizer, llm_vocab_size)
    _check_legacy(tokenizer, path)
    return tokenizer


def tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> str:
    """``"sentencepiece"`` when spaces become ``"▁"`` (LLaMA, Vicuna, Mistral), else ``"bpe"`` (byte-level:
    GPT-2, SmolLM2, Qwen2). Measured on a short text, so a ``tokenizer.json`` of either kind is told apart."""
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("a b", add_special_tokens=False)["input_ids"])
    return "sentencepiece" if any(SPACE_MARK in piece for piece in pieces) else "bpe"


def legacy_spaces(tokenizer: PreTrainedTokenizerBase) -> bool | None:
    """Whether text right after an added token starts with ``"▁"`` (SentencePiece ``legacy`` behaviour, see the
    module docstring); None for a BPE tokenizer. Needs the placeholders (:func:`load_tokenizer` adds them)."""
    if tokenizer_kind(tokenizer) != "sentencepiece":
        return None
    if tokenizer.convert_tokens_to_ids(VIDEO_PLACEHOLDER) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the tokenizer has no {VIDEO_PLACEHOLDER} token; load it with load_tokenizer")
    ids = tokenizer(VIDEO_PLACEHOLDER + "a", add_special_tokens=False)["input_ids"]
    after = tokenizer.convert_ids_to_tokens(ids[1:2])
    return bool(after) and after[0].startswith(SPACE_MARK)


def tokenizer_record(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a converted LLM's manifest records about its tokenizer: kind, legacy spaces, chat template, vocab."""
    return {
        "kind": tokenizer_kind(tokenizer),
        "legacy": legacy_spaces(tokenizer),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "vocab_size": int(tokenizer.vocab_size),
    }


def _check_legacy(tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Refuse a tokenizer whose ids ignore the ``legacy`` flag of its config (they would differ from training)."""
    config = path / "tokenizer_config.json"
    flag = json.loads(config.read_text(encoding="utf-8")).get("legacy") if config.is_file() else None
    if not isinstance(flag, bool):
        return
    measured = legacy_spaces(tokenizer)
    if measured is not None and measured != flag:
        raise ValueError(
            f"{config} sets legacy={str(flag).lower()}, but {type(tokenizer).__name__} tokenizes "
            f"{'without' if flag else 'with'} the '\u2581' after added tokens, so its ids differ from the ones "
            "the LLM was trained with; set tokenizer_class to LlamaTokenizer in that file (it honours the flag)"
        )


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    output_dir: str | os.PathLike,
    vocab_size: int = 1000,
    *,
    model_type: str = "bpe",
) -> Path:
    """Train a LLaMA-like SentencePiece model on ``texts`` and write a HF tokenizer directory.

    Ids: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, pad = EOS; byte fallback (so any text is encodable) and
    ``###`` as a user-defined piece (the end symbol is always one token). The directory holds
    ``tokenizer.model`` (the SentencePiece model), ``tokenizer.json`` and ``tokenizer_config.json``, with the
    placeholders at ids ``vocab_size`` and ``vocab_size + 1``. Returns the directory.
    """
    import sentencepiece as spm  # only for training a tokenizer (demo, tests); loading one never needs it

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    minimum = 3 + 256 + 1  # specials + byte fallback pieces + "###"
    if vocab_size <= minimum:
        raise ValueError(
            f"vocab_size must be larger than {minimum} (specials, 256 byte pieces, '###'), got {vocab_size}"
        )
    sentences = [t for t in texts if isinstance(t, str) and t.strip()]
    if not sentences:
        raise ValueError("train_sentencepiece_tokenizer needs at least one non-empty text")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            byte_fallback=True,
            user_defined_symbols=[BUILTIN["vicuna"].end_symbol],
            character_coverage=1.0,
            split_digits=True,
            normalization_rule_name="identity",
            shuffle_input_sentence=False,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,
        )
    except RuntimeError as e:
        raise ValueError(
            f"SentencePiece training failed for vocab_size={vocab_size} on {len(sentences)} texts: "
            f"{str(e).rstrip('.')}. "
            "A small corpus supports only a small vocabulary: lower vocab_size or add text"
        ) from e
    (output_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "model_max_length": 2048,
    }
    (output_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = load_tokenizer(output_dir)
    tokenizer.save_pretrained(str(output_dir))
    placeholder_ids(load_tokenizer(output_dir), vocab_size)
    return output_dir
