"""Tokenizer loading and training (docs/DESIGN.md §4).

The LLM tokenizer is a Hugging Face tokenizer directory loaded with ``AutoTokenizer.from_pretrained(dir)``
(transformers 5 quirk: ``LlamaTokenizer(vocab_file=...)`` silently returns empty ids, the directory route
works). ``<ImageHere>`` and ``<AudioHere>`` are added as special tokens when missing, so their ids are the
LLM vocabulary size ``V`` and ``V + 1`` (32000/32001 for Vicuna); the LLM embedding is not resized. Pad is EOS
(AffectGPT).

:func:`train_sentencepiece_tokenizer` trains a small LLaMA-like SentencePiece BPE model (unk 0, bos 1, eos 2,
byte fallback, ``###`` kept as one piece) for the demo corpus and the tests.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from deemo_jax.data.prompts import AUDIO_PLACEHOLDER, END_SYMBOL, VIDEO_PLACEHOLDER

PLACEHOLDER_TOKENS = (VIDEO_PLACEHOLDER, AUDIO_PLACEHOLDER)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


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


def load_tokenizer(path: str | os.PathLike, llm_vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory, add the placeholder tokens when missing, set pad = EOS.

    With ``llm_vocab_size`` the placeholder ids are checked against the LLM (see :func:`placeholder_ids`).
    The returned tokenizer is a fast (``tokenizers``-backed) one, as the pipeline needs offset mappings.
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
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer from {str(path)!r} defines no BOS or EOS token (LLaMA: <s> 1, </s> 2)")
    missing = [t for t in PLACEHOLDER_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.pad_token = tokenizer.eos_token
    placeholder_ids(tokenizer, llm_vocab_size)
    return tokenizer


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
            user_defined_symbols=[END_SYMBOL],
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
