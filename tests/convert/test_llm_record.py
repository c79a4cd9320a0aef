"""The manifest's ``llm`` section of a converted LLM: family, prompt template, tokenizer (and its legacy flag)."""

from __future__ import annotations

import json

import pytest
from conftest import run_main

from deemo_jax.convert.converted import ConvertedCheckpointError, llm_record, read_manifest
from deemo_jax.convert.llm_tokenizer import complete_sentencepiece_config
from deemo_jax.data.templates import BUILTIN, NAMES, PromptTemplate
from deemo_jax.data.tokenizer import load_tokenizer, placeholder_ids

torch = pytest.importorskip("torch")
import convert_fixtures as fx  # noqa: E402

V = fx.TINY.llm.vocab_size


@pytest.fixture(scope="module")
def llama_sd():
    return fx.llama_state_dict()


def hf_dir(tmp_path, llama_sd, name="vicuna", **tokenizer_config):
    """The tiny Vicuna-v0-like source directory; ``tokenizer_config`` entries are added to its config."""
    source = fx.write_hf_llama_dir(tmp_path / name, llama_sd)
    if tokenizer_config:
        path = source / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **tokenizer_config}))
    return source


def convert(source, out, *extra):
    return run_main(["--source", "hf-llama", "--input", str(source), "--output", str(out), "--no-progress", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_hf_llama_records_family_template_and_legacy_tokenizer(tmp_path, llama_sd):
    source = hf_dir(tmp_path, llama_sd)
    out = tmp_path / "out"
    code, stdout = convert(source, out)
    assert code == 0, stdout
    record = read_manifest(out)["llm"]
    assert record == {
        "family": "llama",
        "template": BUILTIN["vicuna"].to_record(),  # the tokenizer has no chat template
        "tokenizer": {"kind": "sentencepiece", "legacy": True, "chat_template": False, "vocab_size": V},
    }
    assert llm_record(out) == record
    # The source config predates the flag: the converted one says legacy=true, the rest is kept.
    assert "legacy" not in json.loads((source / "tokenizer_config.json").read_text())
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text()) == {
        **fx.VICUNA_TOKENIZER_CONFIG, "legacy": True, "add_bos_token": True}
    assert "set legacy=true" in stdout and "set legacy=true" in " ".join(read_manifest(out)["notes"])
    assert "llm: family llama; prompt template 'vicuna'" in stdout and "(default, no chat template)" in stdout
    tokenizer = load_tokenizer(out / "tokenizer", llm_vocab_size=V)
    assert placeholder_ids(tokenizer, V) == (V, V + 1)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("<ImageHere>the", add_special_tokens=False)["input_ids"])
    assert pieces == ["<ImageHere>", "\u2581the"]  # legacy: the text after a placeholder keeps its "▁"


def test_template_option_and_explicit_legacy_are_recorded(tmp_path, llama_sd):
    source = hf_dir(tmp_path, llama_sd, legacy=False)
    out = tmp_path / "out"
    code, stdout = convert(source, out, "--template", "llama2")
    assert code == 0, stdout
    record = llm_record(out)
    assert PromptTemplate.from_record(record["template"]) == BUILTIN["llama2"]
    assert record["tokenizer"]["legacy"] is False  # an explicit source value is kept
    assert json.loads((out / "tokenizer" / "tokenizer_config.json").read_text())["legacy"] is False
    assert "prompt template 'llama2'" in stdout and "(--template llama2)" in stdout


def test_bad_template_fails_early_naming_the_choices(tmp_path, capsys):
    missing = tmp_path / "not-there"  # checked before the input is opened
    code, _ = convert(missing, tmp_path / "out", "--template", "alpaca")
    assert code == 2
    err = one_line_error(capsys)
    assert "--template 'alpaca'" in err and all(name in err for name in NAMES), err
    code, _ = run_main(["--source", "eva-vit-g", "--input", str(missing), "--output", str(tmp_path / "o"),
                        "--template", "vicuna"])
    assert code == 2 and "converts no LLM" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_without_tokenizer_the_record_says_so(tmp_path, llama_sd, capsys):
    source = hf_dir(tmp_path, llama_sd)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (source / name).unlink()
    (source / "generation_config.json").write_text("{}")  # save_pretrained writes one: copied, but no tokenizer
    out = tmp_path / "out"
    code, stdout = convert(source, out)
    assert code == 0, stdout
    assert llm_record(out) == {"family": "llama", "template": BUILTIN["vicuna"].to_record(), "tokenizer": None}
    assert "recorded without a tokenizer" in stdout and "(prompt template 'vicuna')" in stdout
    code, _ = convert(source, tmp_path / "chat", "--template", "chat_template")
    assert code == 2 and "no tokenizer files" in one_line_error(capsys)
    assert not (tmp_path / "chat").exists()


def test_broken_or_unfitting_tokenizer(tmp_path, llama_sd, capsys):
    source = hf_dir(tmp_path, llama_sd)
    (source / "tokenizer.model").write_bytes(b"\x0a\x03tok")
    code, _ = convert(source, tmp_path / "broken")
    assert code == 2 and "tokenizer does not load" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vicuna"]  # checked before any weights are written
    # A tokenizer with more tokens than the LLM has embedding rows: converted, with a warning in the manifest.
    fx.write_sentencepiece_model(source / "tokenizer.model", vocab_size=V + 72)
    code, stdout = convert(source, tmp_path / "big")
    assert code == 0, stdout
    assert f"warning: the tokenizer gives <ImageHere>/<AudioHere> the ids {V + 72}/{V + 73}" in stdout
    assert any(f"vocab_size {V}" in note for note in read_manifest(tmp_path / "big")["notes"])


def test_complete_sentencepiece_config(tmp_path):
    fx.write_sentencepiece_model(tmp_path / "tokenizer.model")
    assert len(complete_sentencepiece_config(tmp_path)) == 3  # no config at all: all set
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "legacy": True, "add_bos_token": True, "tokenizer_class": "LlamaTokenizer"}
    explicit = {"tokenizer_class": "X", "legacy": False, "add_bos_token": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(explicit))
    assert complete_sentencepiece_config(tmp_path) == []
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == explicit
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json of the source tokenizer is not valid JSON"):
        complete_sentencepiece_config(tmp_path)
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "tokenizer.json").write_text("{}")
    assert complete_sentencepiece_config(bpe) == [] and sorted(p.name for p in bpe.iterdir()) == ["tokenizer.json"]


def test_llm_record_reader(tmp_path, llama_sd):
    source = hf_dir(tmp_path, llama_sd)
    out = tmp_path / "out"
    assert convert(source, out)[0] == 0
    manifest = read_manifest(out)
    del manifest["llm"]  # a conversion made before the section existed
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert llm_record(out) is None
    manifest["llm"] = {"family": "llama", "template": {"name": "vicuna"}, "tokenizer": None}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConvertedCheckpointError, match="llm.template is not a prompt template"):
        llm_record(out)
    manifest["llm"] = {"template": BUILTIN["vicuna"].to_record()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConvertedCheckpointError, match="llm section must have the keys"):
        llm_record(out)
