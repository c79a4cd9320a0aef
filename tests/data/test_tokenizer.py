"""Tokenizer training/loading of deemo_jax.data.tokenizer (DESIGN.md §4); ids and masks on both tokenizer kinds.

Two tokenizers besides the demo one: a SentencePiece BPE model normalised like LLaMA's (whitespace kept, no
user-defined pieces, byte fallback) with Vicuna v0's ``tokenizer_config.json`` (no ``legacy`` key), and a
byte-level BPE ``tokenizer.json`` (GPT-2 / SmolLM2 style, ChatML special tokens).
"""

import hashlib
import io
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from deemo_jax.convert.llm_tokenizer import complete_sentencepiece_config
from deemo_jax.data import tokenizer as tokenizer_lib
from deemo_jax.data.pipeline import IGNORE_INDEX, tokenize_example
from deemo_jax.data.prompts import PromptConfig, build_prompt
from deemo_jax.data.templates import BUILTIN, PromptTemplate, resolve
from deemo_jax.data.tokenizer import (
    load_tokenizer,
    placeholder_ids,
    tokenizer_record,
    train_sentencepiece_tokenizer,
)

VOCAB = 400
VICUNA_TOKENIZER_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                           "unk_token": "<unk>"}
# SmolLM2's chat template: ChatML with a default system prompt.
CHATML_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
RECORD = {"kind": "mer", "id": "pinned", "transcription": "I am disappointed with the result.", "label": "sad",
          "reasoning": "He folds his arms and his voice is low."}
# AffectGPT's training prompt (32 <ImageHere>, 8 <AudioHere>) + target on the LLaMA-like tokenizer: BOS + prompt
# + target ids of AffectGPT's slow legacy LlamaTokenizer (the oracle below). Pinned: a change of tokenizer
# behaviour (transformers, sentencepiece, the legacy flag) shows up here.
PINNED_NUM_IDS = 360
PINNED_SHA256 = "7cf6fc4520d453e1"


def corpus(n=300):
    rng = random.Random(0)
    words = ("the athlete said we played well today but I am disappointed with the result he smiles and "
             "folds his arms her voice is low").split()
    return [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_sentencepiece_tokenizer(corpus(), tmp_path_factory.mktemp("tok"), vocab_size=VOCAB)


def test_trained_directory_loads_with_autotokenizer(tok_dir):
    files = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= files
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.vocab_size == VOCAB
    assert tok.convert_tokens_to_ids(["<ImageHere>", "<AudioHere>"]) == [VOCAB, VOCAB + 1]
    loaded = load_tokenizer(tok_dir, llm_vocab_size=VOCAB)
    assert loaded.pad_token_id == 2
    assert placeholder_ids(loaded) == (VOCAB, VOCAB + 1)


def test_decode_round_trips_and_end_symbol_is_one_token(tok_dir):
    tok = load_tokenizer(tok_dir)
    for text in ["Hello world.", "the athlete said we played well today.", "Résumé: 3.5 s \u2013 ok?"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    end_id = tok.convert_tokens_to_ids("###")
    assert tok("###", add_special_tokens=False)["input_ids"] == [end_id]
    target = tok("he smiles###", add_special_tokens=False)["input_ids"]
    assert target[-1] == end_id and tok.decode(target) == "he smiles###"
    assert tok("x", add_special_tokens=True)["input_ids"][0] == 1


def test_placeholders_are_single_tokens_in_text(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = tok("<Video>" + "<ImageHere>" * 3 + "</Video> <AudioHere>", add_special_tokens=False)["input_ids"]
    assert ids.count(VOCAB) == 3 and ids.count(VOCAB + 1) == 1


def test_vocab_size_mismatch_is_reported(tok_dir):
    tok = load_tokenizer(tok_dir)
    with pytest.raises(ValueError, match="must be 32000 and 32001"):
        placeholder_ids(tok, 32000)
    with pytest.raises(ValueError, match="vocab_size"):
        load_tokenizer(tok_dir, llm_vocab_size=VOCAB - 1)


def test_sentencepiece_only_directory_gets_placeholders(tok_dir, tmp_path):
    """A Vicuna-style directory (tokenizer.model + config, no added tokens) gets the ids V and V + 1."""
    shutil.copy(tok_dir / "tokenizer.model", tmp_path / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(str(tmp_path)).convert_tokens_to_ids("<ImageHere>") in (0, None)
    tok = load_tokenizer(tmp_path, llm_vocab_size=VOCAB)
    assert placeholder_ids(tok, VOCAB) == (VOCAB, VOCAB + 1)
    assert tok.pad_token_id == tok.eos_token_id == 2


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="notes.txt"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    with pytest.raises(ValueError, match="could not load a tokenizer"):
        load_tokenizer(tmp_path)


def test_training_input_validation(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be larger"):
        train_sentencepiece_tokenizer(corpus(5), tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="at least one non-empty text"):
        train_sentencepiece_tokenizer(["", "  "], tmp_path, vocab_size=400)
    with pytest.raises(ValueError, match="lower vocab_size"):
        train_sentencepiece_tokenizer(["a b"], tmp_path, vocab_size=5000)


# ------------------------------------------------------------------------------------ LLaMA-like SentencePiece
def llama_like_dir(directory: Path, vocab_size: int = VOCAB) -> Path:
    """A SentencePiece BPE model trained like LLaMA's, as a Vicuna-v0-like HF folder (config without legacy)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        shuffle_input_sentence=False, num_threads=1, minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text(json.dumps(VICUNA_TOKENIZER_CONFIG))
    return directory


def legacy_oracle(model_file: Path, prompt: str, target: str) -> list[int]:
    """AffectGPT's ids (transformers 4.28 slow LlamaTokenizer): BOS, then the prompt split at the placeholders,
    every text segment encoded by SentencePiece on its own (with its dummy "▁" prefix), then the target."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    v = sp.get_piece_size()
    ids = [sp.bos_id()]
    for segment in re.split("(<ImageHere>|<AudioHere>)", prompt):
        if segment in ("<ImageHere>", "<AudioHere>"):
            ids.append(v if segment == "<ImageHere>" else v + 1)
        elif segment:
            ids.extend(sp.encode(segment))
    return ids + sp.encode(target)


@pytest.fixture(scope="module")
def vicuna_dir(tmp_path_factory):
    return llama_like_dir(tmp_path_factory.mktemp("vicuna"))


def affectgpt_ids(tokenizer) -> tuple[list[int], str, str]:
    prompt, target = build_prompt(RECORD, PromptConfig(template=BUILTIN["affectgpt"]))
    example = tokenize_example(prompt, target, tokenizer, max_length=512, num_video_tokens=32, num_audio_tokens=8)
    return example.input_ids[: example.num_tokens].tolist(), prompt, target


def test_affectgpt_prompt_ids_equal_the_reference_legacy_tokenizer(vicuna_dir, tmp_path):
    """The converted tokenizer (legacy=true set by the converter) gives AffectGPT's ids exactly; transformers 5's
    default (legacy=false) drops the "▁" after the placeholder runs, right before </Audio> and </Video>."""
    converted = Path(shutil.copytree(vicuna_dir, tmp_path / "converted"))
    complete_sentencepiece_config(converted)
    ours, prompt, target = affectgpt_ids(load_tokenizer(converted, llm_vocab_size=VOCAB))
    oracle = legacy_oracle(vicuna_dir / "tokenizer.model", prompt, target)
    assert ours == oracle
    assert (len(oracle), hashlib.sha256(np.asarray(oracle, np.int32).tobytes()).hexdigest()[:16]) == (
        PINNED_NUM_IDS, PINNED_SHA256)

    plain = load_tokenizer(vicuna_dir, llm_vocab_size=VOCAB)
    default, _, _ = affectgpt_ids(plain)
    first = next(i for i, (a, b) in enumerate(zip(default, oracle, strict=False)) if a != b)
    assert default[first - 1] == VOCAB + 1 and plain.decode(default[first:first + 2]).startswith("</")
    assert oracle[first] == plain.convert_tokens_to_ids("\u2581")
    assert len(oracle) - len(default) == 2  # the "▁" before </Audio> and before </Video>


# ------------------------------------------------------------------------------------- byte-level BPE (tokenizer.json)
def bpe_dir(directory: Path, *, bos: str | None, chat_template: str | None = CHATML_SYSTEM) -> Path:
    """A GPT-2-style byte-level BPE ``tokenizer.json`` folder: ``<|endoftext|>`` 0 (unk), ``<|im_start|>`` 1,
    ``<|im_end|>`` 2 (EOS); ``bos`` is the BOS token (SmolLM2: ``<|im_start|>``; Qwen2: none)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def smollm_dir(tmp_path_factory):
    return bpe_dir(tmp_path_factory.mktemp("smollm"), bos="<|im_start|>")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return bpe_dir(tmp_path_factory.mktemp("qwen"), bos=None)


def check_masks(tokenizer, template: PromptTemplate, vocab: int) -> None:
    """BOS (as the template says) + prompt ids + target ids; labels ignore everything but exactly the target,
    which decodes to the answer + end symbol; the placeholders form one run each at ids V and V + 1."""
    prompt, target = build_prompt(RECORD, PromptConfig(template=template))
    assert target == RECORD["reasoning"] + template.end_symbol
    example = tokenize_example(prompt, target, tokenizer, max_length=512, num_video_tokens=32, num_audio_tokens=8,
                               bos=template.bos)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    lead = [tokenizer.bos_token_id] if template.bos else []
    n = example.num_tokens
    assert example.input_ids[:n].tolist() == lead + prompt_ids + target_ids and n == len(lead + prompt_ids + target_ids)
    assert (example.input_ids[n:] == tokenizer.eos_token_id).all() and example.attention_mask.sum() == n
    labels = example.labels
    assert labels[n - len(target_ids):n].tolist() == target_ids
    assert (labels[: n - len(target_ids)] == IGNORE_INDEX).all() and (labels[n:] == IGNORE_INDEX).all()
    assert tokenizer.decode(target_ids) == target
    for token_id, count in ((vocab, 32), (vocab + 1, 8)):
        where = np.flatnonzero(example.input_ids == token_id)
        assert len(where) == count and where[-1] - where[0] == count - 1
        assert (labels[where] == IGNORE_INDEX).all()


def test_masks_on_sentencepiece(vicuna_dir, tmp_path):
    converted = Path(shutil.copytree(vicuna_dir, tmp_path / "converted"))
    complete_sentencepiece_config(converted)
    tokenizer = load_tokenizer(converted, llm_vocab_size=VOCAB)
    for name in ("affectgpt", "vicuna", "llama2"):
        check_masks(tokenizer, BUILTIN[name], VOCAB)
    assert tokenizer_record(tokenizer) == {
        "kind": "sentencepiece", "legacy": True, "chat_template": False, "vocab_size": VOCAB}
    assert tokenizer_record(load_tokenizer(vicuna_dir))["legacy"] is False  # transformers 5's default


def test_masks_on_byte_level_bpe(smollm_dir, qwen_dir):
    smollm = load_tokenizer(smollm_dir)
    vocab = smollm.vocab_size  # what the merges of the small corpus reach
    assert vocab > 300 and placeholder_ids(smollm, vocab) == (vocab, vocab + 1)
    template = resolve("", smollm)
    assert template.name == "chat_template" and not template.bos
    check_masks(smollm, template, vocab)
    check_masks(smollm, BUILTIN["vicuna"], vocab)  # BOS on: <|im_start|> first
    assert tokenizer_record(smollm) == {"kind": "bpe", "legacy": None, "chat_template": True, "vocab_size": vocab}
    # A tokenizer without BOS (Qwen2) loads; ChatML needs none, a BOS template is refused.
    qwen = load_tokenizer(qwen_dir, llm_vocab_size=vocab)
    assert qwen.bos_token_id is None
    check_masks(qwen, BUILTIN["chatml"], vocab)
    with pytest.raises(ValueError, match="'vicuna' starts with BOS but the tokenizer has no BOS token"):
        resolve("vicuna", qwen)


def test_ignored_legacy_flag_is_refused(vicuna_dir, tmp_path, monkeypatch):
    """If transformers stopped honouring tokenizer_config.json's legacy flag, the ids would silently change."""
    converted = Path(shutil.copytree(vicuna_dir, tmp_path / "converted"))
    complete_sentencepiece_config(converted)
    monkeypatch.setattr(tokenizer_lib, "legacy_spaces", lambda tokenizer: False)
    with pytest.raises(ValueError, match="sets legacy=true, but .* tokenizes without the '\u2581' after added tok"):
        load_tokenizer(converted)


def test_missing_eos_is_reported(smollm_dir, tmp_path):
    folder = Path(shutil.copytree(smollm_dir, tmp_path / "no-eos"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="defines no EOS token"):
        load_tokenizer(folder)
