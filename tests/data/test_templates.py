"""Prompt templates as data (deemo_jax.data.templates): built-ins, chat templates, records, mismatch errors."""

from pathlib import Path

import pytest

from deemo_jax.convert.llm_tokenizer import complete_sentencepiece_config
from deemo_jax.data.templates import (
    BUILTIN,
    CHAT_TEMPLATE,
    NAMES,
    PromptTemplate,
    TemplateMismatchError,
    check_same,
    from_chat_template,
    resolve,
)
from deemo_jax.data.tokenizer import load_tokenizer
from tests.data.test_tokenizer import bpe_dir, llama_like_dir

# meta-llama/Llama-2-7b-chat-hf's chat template.
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """A byte-level BPE tokenizer with SmolLM2's ChatML template (system prompt) and BOS ``<|im_start|>``."""
    return load_tokenizer(bpe_dir(tmp_path_factory.mktemp("smollm"), bos="<|im_start|>"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A LLaMA-like SentencePiece tokenizer as converted (it adds ``<s>`` itself), without a chat template."""
    directory = llama_like_dir(Path(tmp_path_factory.mktemp("llama")))
    complete_sentencepiece_config(directory)
    return load_tokenizer(directory)


def test_chatml_chat_template_keeps_system_prompt_and_adds_no_bos(smollm):
    template = resolve("", smollm)
    assert template == resolve(CHAT_TEMPLATE, smollm) == from_chat_template(smollm)
    assert template.prefix == "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n"
    assert template.suffix == "<|im_end|>\n<|im_start|>assistant\n"
    assert (template.end_symbol, template.bos, template.body) == ("<|im_end|>", False, "eq1")
    # The prompt reads as the chat template renders it.
    turn = smollm.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert template.wrap("hi") == turn


def test_llama2_chat_template_ends_with_eos_and_takes_bos_off_the_prefix(llama):
    llama.chat_template = LLAMA2_CHAT
    try:
        template = resolve("", llama)
    finally:
        llama.chat_template = None
    assert (template.prefix, template.suffix, template.end_symbol, template.bos) == (
        "[INST] ", " [/INST]", "</s>", True)


def test_no_chat_template_is_vicuna_and_chat_template_is_refused(llama):
    assert resolve("", llama) == resolve("") == BUILTIN["vicuna"]
    assert from_chat_template(llama) is None
    with pytest.raises(ValueError, match="tokenizer has no chat template; use one of"):
        resolve(CHAT_TEMPLATE, llama)


def test_builtin_names_and_unknown_name(smollm):
    for name in BUILTIN:
        assert resolve(name, smollm) is BUILTIN[name]  # a name wins over the tokenizer's chat template
    with pytest.raises(ValueError) as error:
        resolve("alpaca")
    assert "'alpaca'" in str(error.value) and all(name in str(error.value) for name in NAMES)


def test_record_round_trip(smollm):
    for template in [*BUILTIN.values(), resolve("", smollm)]:
        assert PromptTemplate.from_record(template.to_record()) == template
    record = BUILTIN["vicuna"].to_record()
    del record["bos"]
    with pytest.raises(ValueError, match="exactly the keys"):
        PromptTemplate.from_record(record)
    with pytest.raises(ValueError, match="body must be one of"):
        PromptTemplate("x", "", "", end_symbol="###", body="other")
    with pytest.raises(ValueError, match="end_symbol must be non-empty"):
        PromptTemplate("x", "", "", end_symbol=" ")


def test_check_same_names_both(smollm):
    trained = BUILTIN["vicuna"].to_record()
    check_same(trained, BUILTIN["vicuna"], "run r1")
    check_same(None, BUILTIN["chatml"], "run r1")  # nothing recorded: nothing to compare
    with pytest.raises(TemplateMismatchError) as error:
        check_same(trained, resolve("", smollm), "run r1")
    message = str(error.value)
    assert "run r1 was trained with prompt template 'vicuna'" in message and "'chat_template'" in message
    assert "data.template='vicuna'" in message
