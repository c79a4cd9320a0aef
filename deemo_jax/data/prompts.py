"""Prompt and target text of one shard record (docs/DESIGN.md §4, paper Eq. 1).

The body of an emotion record (``kind == "mer"``) with the paper's Eq. 1 tags, wrapped by the run's prompt
template (:mod:`deemo_jax.data.templates`; Vicuna's ``###Human: {body} ###Assistant: `` shown)::

    ###Human: <Audio><AudioHere>×8</Audio> <Video><ImageHere>×32</Video> <Transcription>{text}</Transcription>
    <NFBL>{cues}</NFBL> <User>{instruction}</User> ###Assistant:␣

(one line, parts joined by single spaces; a modality that is switched off is left out entirely, as in the
paper's Table 4 ablations; the NFBL part exists only with ``nfbl_as_text``, paper §5.3). The ``affectgpt``
template's body is AffectGPT's training prompt instead (reference_spec §10.1: "Close your eyes, open your
ears … <Subtitle>{text}</Subtitle> … {instruction}"), which needs audio, video and the transcription. The
target is ``{answer}{end symbol}`` (``###`` for Vicuna) where the answer depends on the task:

- ``"reasoning"``: the reasoning text;
- ``"recognition"``: the label;
- ``"both"``: ``"{label}. {reasoning}"``: the label is the first segment of the answer, up to the first
  ``.``, which is what ``deemo_jax.eval.labels.parse_label`` reads first.

Caption records (``kind == "caption"``, pre-training)::

    ###Human: <Video><ImageHere>×32</Video> {caption instruction} ###Assistant:␣   ->   {caption}###

(``affectgpt``: AffectGPT's video-only body, "Close your ears, open your eyes and you see that <Video>…</Video>.
Now answer my question based on what you have seen. {caption instruction}").

The placeholder strings are expanded to their full runs here; the tokenizer maps each to one id. Free text of
a record (transcription, NFBL labels, reasoning, caption) never contains a placeholder string: any occurrence
is removed, so a transcription cannot inject or break a placeholder run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deemo_jax.data.templates import BUILTIN, PromptTemplate

VIDEO_PLACEHOLDER = "<ImageHere>"
AUDIO_PLACEHOLDER = "<AudioHere>"
# The tags around the transcription (Eq. 1) and AffectGPT's around its subtitle: the overlong policy trims
# the text between them.
TEXT_TAGS = (("<Transcription>", "</Transcription>"), ("<Subtitle>", "</Subtitle>"))

TASKS = ("reasoning", "recognition", "both")

# AffectGPT's training instruction for the reasoning task (reference_spec.md §10.1).
DEFAULT_REASONING_INSTRUCTION = "From what clues can we infer the person's emotional state?"
# "{labels}" is replaced by the label set joined with ", " (PromptConfig.labels).
DEFAULT_RECOGNITION_INSTRUCTION = "What is the emotional state of the person? Answer with one word: {labels}."
DEFAULT_BOTH_INSTRUCTION = (
    "What is the emotional state of the person ({labels}), and from what clues can we infer it? "
    "Start the answer with the emotional state."
)
DEFAULT_CAPTION_INSTRUCTION = "Describe this video."
_DEFAULT_INSTRUCTIONS = {
    "reasoning": DEFAULT_REASONING_INSTRUCTION,
    "recognition": DEFAULT_RECOGNITION_INSTRUCTION,
    "both": DEFAULT_BOTH_INSTRUCTION,
}


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """What goes into a prompt. ``instructions`` empty means the task's default instruction.

    With several instructions, :func:`build_prompt` picks one per example with the given ``rng`` (training)
    or the first one without (evaluation). ``labels`` fills ``{labels}`` in instructions.
    """

    use_audio: bool = True
    use_video: bool = True
    use_transcription: bool = True
    nfbl_as_text: bool = False
    task: str = "reasoning"
    instructions: tuple[str, ...] = ()
    caption_instruction: str = DEFAULT_CAPTION_INSTRUCTION
    labels: tuple[str, ...] = ()
    num_video_query_tokens: int = 32
    num_audio_query_tokens: int = 8
    template: PromptTemplate = BUILTIN["vicuna"]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"PromptConfig.task must be one of {TASKS}, got {self.task!r}")
        if not isinstance(self.template, PromptTemplate):
            raise ValueError(
                f"PromptConfig.template must be a PromptTemplate (deemo_jax.data.templates.resolve), got "
                f"{self.template!r}"
            )
        if self.template.body == "affectgpt" and not (
            self.use_audio and self.use_video and self.use_transcription and not self.nfbl_as_text
        ):
            raise ValueError(
                "PromptConfig: the 'affectgpt' template is AffectGPT's fixed prompt with audio, video and subtitle "
                "(no NFBL text); for ablations use a template with the paper's Eq. 1 body (vicuna, llama2, chatml)"
            )
        if not (self.use_audio or self.use_video or self.use_transcription or self.nfbl_as_text):
            raise ValueError(
                "PromptConfig: every input is switched off; enable at least one of use_audio, use_video, "
                "use_transcription, nfbl_as_text"
            )
        for name in ("num_video_query_tokens", "num_audio_query_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptConfig.{name} must be a positive int, got {value!r}")
        if isinstance(self.instructions, str) or isinstance(self.labels, str):
            raise ValueError("PromptConfig.instructions and .labels are tuples of strings, not one string")
        if any(not isinstance(s, str) or not s.strip() for s in self.instructions):
            raise ValueError(f"PromptConfig.instructions must be non-empty strings: {self.instructions!r}")
        needs_labels = any("{labels}" in s for s in self.resolved_instructions())
        if needs_labels and not self.labels:
            raise ValueError(
                f"PromptConfig: the instruction(s) {list(self.resolved_instructions())} contain '{{labels}}' "
                "but no label set is given; pass labels=(...) (the pipeline takes them from the shard "
                "metadata.json) or give instructions without '{labels}'"
            )

    def resolved_instructions(self) -> tuple[str, ...]:
        """The instruction templates in use (the task default when none are configured)."""
        return self.instructions or (_DEFAULT_INSTRUCTIONS[self.task],)


def _clean(text: Any, field: str, record_id: Any) -> str:
    if not isinstance(text, str):
        raise ValueError(f"record {record_id!r}: field {field!r} must be a string, got {type(text).__name__}")
    return text.replace(VIDEO_PLACEHOLDER, "").replace(AUDIO_PLACEHOLDER, "")


def format_nfbl(cues: Sequence[Mapping[str, Any]], record_id: Any = None) -> str:
    """NFBL cues as text, ordered by start: ``"scratching the nose (0.4–1.2 s); folding arms (2.0–3.5 s)"``.

    An empty list gives ``"none"``.
    """
    parsed = []
    for i, cue in enumerate(cues):
        try:
            label, start, end = cue["label"], float(cue["start"]), float(cue["end"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"record {record_id!r}: nfbl[{i}] must be a map with 'label', 'start', 'end', got {cue!r}"
            ) from e
        parsed.append((start, end, _clean(label, f"nfbl[{i}].label", record_id).strip()))
    if not parsed:
        return "none"
    return "; ".join(f"{label} ({start:.1f}\u2013{end:.1f} s)" for start, end, label in sorted(parsed))


def _pick(options: Sequence[str], rng: np.random.Generator | None) -> str:
    if rng is None or len(options) == 1:
        return options[0]
    return options[int(rng.integers(len(options)))]


def build_prompt(
    record: Mapping[str, Any], config: PromptConfig, rng: np.random.Generator | None = None
) -> tuple[str, str]:
    """Return ``(prompt_text, target_text)`` of a decoded shard record; the target ends with the template's
    end symbol."""
    record_id = record.get("id")
    kind = record.get("kind")
    template = config.template
    video = "<Video>" + VIDEO_PLACEHOLDER * config.num_video_query_tokens + "</Video>"
    audio = "<Audio>" + AUDIO_PLACEHOLDER * config.num_audio_query_tokens + "</Audio>"
    if kind == "caption":
        if config.use_audio or not config.use_video:
            raise ValueError(
                f"record {record_id!r} is a caption record (video only): use use_video=True, use_audio=False"
            )
        caption = _clean(record.get("caption"), "caption", record_id)
        if template.body == "affectgpt":
            body = (f"Close your ears, open your eyes and you see that {video}. Now answer my question based on "
                    f"what you have seen. {config.caption_instruction}")
        else:
            body = f"{video} {config.caption_instruction}"
        return template.wrap(body), caption + template.end_symbol
    if kind != "mer":
        raise ValueError(f"record {record_id!r}: kind must be 'mer' or 'caption', got {kind!r}")

    instruction = _pick(config.resolved_instructions(), rng).replace("{labels}", ", ".join(config.labels))
    if template.body == "affectgpt":
        (open_tag, close_tag) = TEXT_TAGS[1]
        text = _clean(record.get("transcription"), "transcription", record_id)
        body = (f"Close your eyes, open your ears and you imagine only based on the sound that {audio}. "
                f"Close your ears, open your eyes and you see that {video}. "
                f"The subtitle of this video is {open_tag}{text}{close_tag}. "
                f"Now answer my question based on what you have seen, heard, and provided subtitle. {instruction}")
    else:
        parts = []
        if config.use_audio:
            parts.append(audio)
        if config.use_video:
            parts.append(video)
        if config.use_transcription:
            (open_tag, close_tag) = TEXT_TAGS[0]
            text = _clean(record.get("transcription"), "transcription", record_id)
            parts.append(open_tag + text + close_tag)
        if config.nfbl_as_text:
            parts.append("<NFBL>" + format_nfbl(record.get("nfbl") or (), record_id) + "</NFBL>")
        parts.append(f"<User>{instruction}</User>")
        body = " ".join(parts)

    label = _clean(record.get("label"), "label", record_id)
    if config.task == "recognition":
        answer = label
    else:
        reasoning = _clean(record.get("reasoning"), "reasoning", record_id)
        answer = reasoning if config.task == "reasoning" else f"{label}. {reasoning}"
    return template.wrap(body), answer + template.end_symbol


def transcription_span(prompt: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the transcription (or subtitle) text in ``prompt`` (None without one)."""
    for open_tag, close_tag in TEXT_TAGS:
        start = prompt.find(open_tag)
        if start < 0:
            continue
        start += len(open_tag)
        end = prompt.rfind(close_tag)
        if end < start:
            raise ValueError(f"prompt has {open_tag} without a closing {close_tag}")
        return start, end
    return None
