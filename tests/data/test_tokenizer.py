"""Tokenizer training/loading of deemo_jax.data.tokenizer (DESIGN.md §4)."""

import json
import random
import shutil

import pytest
from transformers import AutoTokenizer

from deemo_jax.data.tokenizer import load_tokenizer, placeholder_ids, train_sentencepiece_tokenizer

VOCAB = 400


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
