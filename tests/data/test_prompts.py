"""Prompt and target text of deemo_jax.data.prompts (DESIGN.md §4, paper Eq. 1)."""

import itertools

import numpy as np
import pytest

from deemo_jax.data.prompts import PromptConfig, build_prompt, format_nfbl, transcription_span

AUDIO = "<Audio>" + "<AudioHere>" * 8 + "</Audio>"
VIDEO = "<Video>" + "<ImageHere>" * 32 + "</Video>"
REASONING_INSTRUCTION = "From what clues can we infer the person's emotional state?"


def mer_record(**overrides):
    record = {
        "kind": "mer", "id": "clip-7", "transcription": "We lost today.", "label": "negative",
        "label_index": 1,
        "reasoning": "His voice is low and he folds his arms.",
        "nfbl": [
            {"label": "folding arms", "start": 2.0, "end": 3.5},
            {"label": "scratching the nose", "start": 0.4, "end": 1.2},
        ],
    }
    record.update(overrides)
    return record


def test_full_prompt_is_exactly_eq1_in_the_vicuna_template():
    prompt, target = build_prompt(mer_record(), PromptConfig())
    assert prompt == (
        "###Human: " + AUDIO + " " + VIDEO + " <Transcription>We lost today.</Transcription> "
        "<User>From what clues can we infer the person's emotional state?</User> ###Assistant: "
    )
    assert target == "His voice is low and he folds his arms.###"


@pytest.mark.parametrize(
    "audio,video,transcription,nfbl",
    [c for c in itertools.product([True, False], repeat=4) if any(c)],
)
def test_every_modality_combination(audio, video, transcription, nfbl):
    parts = {
        "audio": AUDIO,
        "video": VIDEO,
        "transcription": "<Transcription>We lost today.</Transcription>",
        "nfbl": "<NFBL>scratching the nose (0.4\u20131.2 s); folding arms (2.0\u20133.5 s)</NFBL>",
    }
    on = {"audio": audio, "video": video, "transcription": transcription, "nfbl": nfbl}
    config = PromptConfig(
        use_audio=audio, use_video=video, use_transcription=transcription, nfbl_as_text=nfbl
    )
    prompt, _ = build_prompt(mer_record(), config)
    body = " ".join([parts[k] for k in ("audio", "video", "transcription", "nfbl") if on[k]]
                    + [f"<User>{REASONING_INSTRUCTION}</User>"])
    assert prompt == f"###Human: {body} ###Assistant: "
    assert prompt.count("<AudioHere>") == 8 * audio
    assert prompt.count("<ImageHere>") == 32 * video


def test_all_inputs_off_is_rejected():
    with pytest.raises(ValueError, match="every input is switched off"):
        PromptConfig(use_audio=False, use_video=False, use_transcription=False, nfbl_as_text=False)


def test_query_token_counts_are_configurable():
    prompt, _ = build_prompt(mer_record(), PromptConfig(num_video_query_tokens=4, num_audio_query_tokens=2))
    assert "<Audio><AudioHere><AudioHere></Audio> <Video>" + "<ImageHere>" * 4 + "</Video>" in prompt
    with pytest.raises(ValueError, match="num_video_query_tokens"):
        PromptConfig(num_video_query_tokens=0)


def test_nfbl_text_is_sorted_by_start_and_empty_is_none():
    expected = "scratching the nose (0.4\u20131.2 s); folding arms (2.0\u20133.5 s)"
    assert format_nfbl(mer_record()["nfbl"]) == expected
    assert format_nfbl([]) == "none"
    prompt, _ = build_prompt(mer_record(nfbl=[]), PromptConfig(nfbl_as_text=True))
    assert "<NFBL>none</NFBL> <User>" in prompt
    with pytest.raises(ValueError, match="nfbl\\[0\\]"):
        format_nfbl([{"label": "x"}], "clip-7")


def test_targets_per_task():
    labels = ("positive", "negative")
    _, reasoning = build_prompt(mer_record(), PromptConfig(task="reasoning"))
    prompt, recognition = build_prompt(mer_record(), PromptConfig(task="recognition", labels=labels))
    _, both = build_prompt(mer_record(), PromptConfig(task="both", labels=labels))
    assert reasoning == "His voice is low and he folds his arms.###"
    assert recognition == "negative###"
    assert both == "negative. His voice is low and he folds his arms.###"
    assert both.split(".", 1)[0] == "negative"  # the label is the answer's first segment
    instruction = "What is the emotional state of the person? Answer with one word: positive, negative."
    assert f"<User>{instruction}</User>" in prompt


def test_labels_placeholder_requires_a_label_set():
    with pytest.raises(ValueError, match="no label set"):
        PromptConfig(task="recognition")
    config = PromptConfig(task="recognition", instructions=("Is the person happy?",))
    assert build_prompt(mer_record(), config)[0].endswith("<User>Is the person happy?</User> ###Assistant: ")


def test_several_instructions_are_drawn_with_the_rng_and_the_first_without():
    config = PromptConfig(instructions=("first?", "second?", "third?"))
    assert "<User>first?</User>" in build_prompt(mer_record(), config)[0]
    rng = np.random.default_rng(0)
    prompts = [build_prompt(mer_record(), config, rng)[0] for _ in range(40)]
    seen = {p.split("<User>")[1].split("</User>")[0] for p in prompts}
    assert seen == {"first?", "second?", "third?"}


def test_caption_record_prompt():
    record = {"kind": "caption", "id": "cap-1", "caption": "A man rides a bike."}
    config = PromptConfig(use_audio=False)
    prompt, target = build_prompt(record, config)
    assert prompt == "###Human: " + VIDEO + " Describe this video. ###Assistant: "
    assert target == "A man rides a bike.###"
    with pytest.raises(ValueError, match="caption record"):
        build_prompt(record, PromptConfig())


def test_placeholder_strings_in_free_text_are_removed():
    record = mer_record(transcription="hi <ImageHere> there<AudioHere>", reasoning="x<ImageHere>")
    prompt, target = build_prompt(record, PromptConfig())
    assert prompt.count("<ImageHere>") == 32 and prompt.count("<AudioHere>") == 8
    assert "<Transcription>hi  there</Transcription>" in prompt
    assert target == "x###"


def test_transcription_span():
    prompt, _ = build_prompt(mer_record(), PromptConfig())
    start, end = transcription_span(prompt)
    assert prompt[start:end] == "We lost today."
    assert transcription_span(build_prompt(mer_record(), PromptConfig(use_transcription=False))[0]) is None


def test_bad_task_and_kind():
    with pytest.raises(ValueError, match="task"):
        PromptConfig(task="summarise")
    with pytest.raises(ValueError, match="kind"):
        build_prompt(mer_record(kind="other"), PromptConfig())
    with pytest.raises(ValueError, match="transcription"):
        build_prompt(mer_record(transcription=None), PromptConfig())
