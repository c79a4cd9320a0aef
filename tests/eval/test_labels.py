"""Label parsing: training targets parse exactly; ambiguity and negation give None, never a fallback."""

import pytest

from deemo_jax.eval.labels import parse_label, parse_label_with_rule

EMOTION_LLAMA_LABELS = (
    "happy",
    "sad",
    "neutral",
    "angry",
    "worried",
    "surprise",
    "fear",
    "contempt",
    "doubt",
)


@pytest.mark.parametrize("label", ["positive", "negative"])
def test_training_target_formats_parse_exactly(label):
    other = "negative" if label == "positive" else "positive"
    # Bare label (recognition task) and "{label}. {reasoning}" (combined task), even when the reasoning
    # mentions the other label.
    assert parse_label_with_rule(label) == (label, "leading")
    reasoning = f"Although he mentions {other} moments, his voice is steady and he smiles."
    assert parse_label_with_rule(f"{label}. {reasoning}") == (label, "leading")
    # What a decoder returns around it: capitals, the '###' end marker, </s>, quotes and markdown.
    for decorated in (
        label.upper(),
        f"{label.capitalize()}###",
        f" {label}</s>",
        f'"{label}"',
        f"**{label}**",
    ):
        assert parse_label(decorated) == label, decorated


@pytest.mark.parametrize(
    ("text", "expected", "rule"),
    [
        ("The emotion is negative.", "negative", "explicit"),
        ("Sentiment: positive", "positive", "explicit"),
        ("The answer is: negative", "negative", "explicit"),
        ("The emotional state of the athlete is clearly positive.", "positive", "explicit"),
        ("Positive cues are absent; the emotion is negative.", "negative", "explicit"),
        ("He sounds calm and positive overall.", "positive", "unique"),
        ("He isn't positive, he is negative.", "negative", "unique"),
        ("He is positive. Later some negative thoughts appear.", "positive", "first_sentence"),
    ],
)
def test_documented_rules(text, expected, rule):
    assert parse_label_with_rule(text) == (expected, rule)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "The emotion is not positive.",  # negation is never mapped to the complement
        "not negative",
        "He is non-positive about it.",
        "He seems positive at first but overall negative.",  # two labels in the first sentence
        "He is tense. It is hard to say whether positive or negative.",
        "He is excited and proud.",  # no label word at all
        "He answered positively.",  # inflections do not count
    ],
)
def test_unparseable_answers_give_none(text):
    assert parse_label_with_rule(text) == (None, "unparseable")


def test_other_label_sets_and_whole_words():
    assert parse_label("Happy", EMOTION_LLAMA_LABELS) == "happy"
    assert parse_label("He looks unhappy.", EMOTION_LLAMA_LABELS) is None  # "unhappy" is not "happy"
    assert parse_label("The emotion is worried", EMOTION_LLAMA_LABELS) == "worried"
    # The returned spelling is the caller's.
    assert parse_label("positive", ("Positive", "Negative")) == "Positive"


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="distinct"):
        parse_label("positive", ("positive", "Positive"))
    with pytest.raises(ValueError, match="non-empty sequence"):
        parse_label("positive", "positive")
    with pytest.raises(TypeError, match="as str"):
        parse_label(None)
