"""Prompt templates as data: how a prompt body is wrapped into an LLM's chat turn (docs/DESIGN.md §4).

A :class:`PromptTemplate` is stored with every converted LLM (its manifest) and every training run (checkpoint
metadata), so a checkpoint carries the prompt it was trained with. Built in (reference_spec §10.1):

============  ====================================================  ==============  =================  ====
name          turn                                                  end symbol      body               BOS
============  ====================================================  ==============  =================  ====
vicuna        ``###Human: {body} ###Assistant: ``                   ``###``         paper Eq. 1 tags   yes
affectgpt     ``###Human: {body} ###Assistant: ``                   ``###``         AffectGPT's own    yes
llama2        ``[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n{body} [/INST] ``  ``</s>``        paper Eq. 1 tags   yes
chatml        ``<|im_start|>user\\n{body}<|im_end|>\\n<|im_start|>assistant\\n``  ``<|im_end|>``  Eq. 1  no
============  ====================================================  ==============  =================  ====

``chat_template`` renders the tokenizer's own chat template (system prompt included) around a body, so a chat
model is prompted the way it was tuned; an empty template name picks it when the tokenizer has a chat template
and ``vicuna`` otherwise. The end symbol ends every training target and stops generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

BODIES = ("eq1", "affectgpt")
CHAT_TEMPLATE = "chat_template"
_SENTINEL_USER = "\x00DEEMO_USER\x00"
_SENTINEL_ANSWER = "\x00DEEMO_ANSWER\x00"


class TemplateMismatchError(ValueError):
    """A run or checkpoint is used with another LLM or prompt template than it was trained with."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """The text around a prompt body, the symbol that ends an answer, the body style and whether BOS leads."""

    name: str
    prefix: str
    suffix: str
    end_symbol: str
    body: str = "eq1"
    bos: bool = True

    def __post_init__(self) -> None:
        if self.body not in BODIES:
            raise ValueError(f"PromptTemplate {self.name!r}: body must be one of {BODIES}, got {self.body!r}")
        if not self.end_symbol.strip():
            raise ValueError(f"PromptTemplate {self.name!r}: end_symbol must be non-empty text")

    def wrap(self, body: str) -> str:
        """The prompt: the turn around ``body``, ending where the assistant's answer starts."""
        return self.prefix + body + self.suffix

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict (stored in manifests and checkpoint metadata)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PromptTemplate:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, Mapping) or set(record) != fields:
            raise ValueError(f"a prompt template record has exactly the keys {sorted(fields)}, got {record!r}")
        return cls(**record)

    def describe(self) -> str:
        """One line naming the template, for error messages."""
        return f"{self.name!r} ({self.wrap('{body}')!r}, end {self.end_symbol!r}, body {self.body})"


_VICUNA_TURN = ("###Human: ", " ###Assistant: ")
BUILTIN: dict[str, PromptTemplate] = {
    "vicuna": PromptTemplate("vicuna", *_VICUNA_TURN, end_symbol="###"),
    "affectgpt": PromptTemplate("affectgpt", *_VICUNA_TURN, end_symbol="###", body="affectgpt"),
    "llama2": PromptTemplate("llama2", "[INST] <<SYS>>\n \n<</SYS>>\n\n", " [/INST] ", end_symbol="</s>"),
    "chatml": PromptTemplate(
        "chatml", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", end_symbol="<|im_end|>", bos=False
    ),
}
NAMES = (*BUILTIN, CHAT_TEMPLATE)


def from_chat_template(tokenizer: Any) -> PromptTemplate | None:
    """The tokenizer's chat template as a :class:`PromptTemplate` (None when it has none).

    The template is rendered around sentinels: a user turn with the generation prompt gives the prefix and
    suffix; a user + assistant conversation gives what follows an answer, whose first non-blank piece is the
    end symbol. BOS leads when the tokenizer puts it before every text (LLaMA's ``<s>``); a chat template that
    writes that BOS itself (Llama-2-chat's ``bos_token + '[INST] '``) has it taken off the prefix. A tokenizer
    that adds no BOS keeps the text as rendered (SmolLM2's bos_token is ``<|im_start|>``, which starts every
    ChatML turn, so it stays part of the prefix).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    user = [{"role": "user", "content": _SENTINEL_USER}]
    try:
        turn = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": _SENTINEL_ANSWER}], tokenize=False
        )
    except Exception as e:  # jinja errors of a template that needs other roles or arguments
        raise ValueError(
            f"the tokenizer's chat template could not be rendered for one user turn ({type(e).__name__}: {e}); "
            f"choose a built-in template (data.template, or the converter's --template), one of {tuple(BUILTIN)}"
        ) from e
    if turn.count(_SENTINEL_USER) != 1 or full.count(_SENTINEL_ANSWER) != 1:
        raise ValueError(
            "the tokenizer's chat template does not render the user message exactly once; choose a built-in "
            f"template (data.template, or the converter's --template), one of {tuple(BUILTIN)}"
        )
    prefix, suffix = turn.split(_SENTINEL_USER)
    after_answer = full.split(_SENTINEL_ANSWER, 1)[1]
    pieces = after_answer.split()
    if not pieces:
        raise ValueError(
            "the tokenizer's chat template writes nothing after an assistant answer, so there is no end symbol; "
            f"choose a built-in template (data.template, or the converter's --template), one of {tuple(BUILTIN)}"
        )
    bos_token = getattr(tokenizer, "bos_token", None)
    adds_bos = bool(bos_token) and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    if adds_bos and prefix.startswith(bos_token):
        prefix = prefix[len(bos_token):]
    return PromptTemplate(CHAT_TEMPLATE, prefix, suffix, end_symbol=pieces[0], bos=adds_bos)


def resolve(name: str, tokenizer: Any = None) -> PromptTemplate:
    """The template called ``name``; ``""`` is the tokenizer's chat template if it has one, else ``vicuna``.

    With a ``tokenizer``, a template that puts BOS first is refused when the tokenizer has no BOS token.
    """
    if name not in ("", *NAMES):
        raise ValueError(f"unknown prompt template {name!r}; use one of {NAMES} or '' (from the tokenizer)")
    template = BUILTIN.get(name)
    if template is None:
        template = None if tokenizer is None else from_chat_template(tokenizer)
    if template is None and name == CHAT_TEMPLATE:
        raise ValueError(
            "prompt template 'chat_template' (data.template or the converter's --template) was asked for, but the "
            f"tokenizer has no chat template; use one of {tuple(BUILTIN)}"
        )
    template = template or BUILTIN["vicuna"]
    if tokenizer is not None and template.bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError(
            f"prompt template {template.name!r} starts with BOS but the tokenizer has no BOS token; use 'chatml' "
            "or the tokenizer's chat template ('' or 'chat_template')"
        )
    return template


def check_same(trained: Mapping[str, Any] | None, now: PromptTemplate, where: str) -> None:
    """Raise :class:`TemplateMismatchError` naming both when ``now`` is not the template ``trained`` records."""
    if trained is None:
        return
    stored = PromptTemplate.from_record(trained)
    if stored != now:
        raise TemplateMismatchError(
            f"{where} was trained with prompt template {stored.describe()}, but is being used with "
            f"{now.describe()}; use the run's own template (drop the template override, or set "
            f"data.template={stored.name!r})"
        )
