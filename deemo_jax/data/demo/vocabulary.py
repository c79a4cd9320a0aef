"""The demo's word and look bank: sports, sentence templates, gestures (NFBL cues), voices and colours.

Data only; :mod:`.plan` draws from it. Changing anything here changes the corpus (bump ``CORPUS_VERSION``).
"""

from __future__ import annotations

from typing import Any


def _by_sport(names: tuple[str, ...], **columns: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """One dict per sport from one tuple per field (the field's value for each sport, in ``names`` order)."""
    return {name: {field: values[i] for field, values in columns.items()} for i, name in enumerate(names)}


SPORTS: dict[str, dict[str, Any]] = _by_sport(
    ("tennis", "football", "basketball", "boxing", "american football", "UFC"),
    period=("set", "half", "quarter", "round", "quarter", "round"),
    ords=(
        ("first", "second", "third", "fourth", "fifth"),
        ("first", "second"),
        ("first", "second", "third", "fourth"),
        ("first", "second", "third", "fifth", "eighth", "tenth"),
        ("first", "second", "third", "fourth"),
        ("first", "second", "third", "fourth", "fifth"),
    ),
    event=("match", "match", "game", "fight", "game", "fight"),
    skills=(
        ("serve", "forehand", "backhand", "return", "footwork"),
        ("passing", "pressing", "finishing", "defending", "crossing"),
        ("shooting", "rebounding", "defense", "ball movement", "free throws"),
        ("jab", "footwork", "right hand", "head movement", "body work"),
        ("blocking", "run game", "passing game", "tackling", "route running"),
        ("wrestling", "striking", "takedown defense", "cardio", "ground game"),
    ),
    places=(
        ("the tiebreak", "the long rallies", "the big points", "the return games"),
        ("the box", "set pieces", "midfield", "the last ten minutes"),
        ("the paint", "transition", "the pick and roll", "the last two minutes"),
        ("the exchanges", "the late rounds", "the clinches", "the middle of the ring"),
        ("the red zone", "third downs", "the two-minute drill", "the trenches"),
        ("the clinch", "the scrambles", "the exchanges", "the last round"),
    ),
    teams=(
        ("my team", "my coach", "everyone in my box"),
        ("the lads", "the squad", "the whole team"),
        ("the guys", "the second unit", "the whole team"),
        ("my corner", "my trainer", "my whole camp"),
        ("the offense", "the defense", "the guys"),
        ("my coaches", "my team", "my training partners"),
    ),
    venue=("court", "pitch", "court", "arena", "stadium", "arena"),
    equipment=("racket", "boots", "shoes", "gloves", "helmet", "gloves"),
)

# Square brackets mark the key phrase that the reasoning text quotes.
POSITIVE_TEMPLATES = (
    "We played with so much heart tonight and [I'm proud of {team}].",
    "[I felt great out there] and my {skill} was working from the {ord} {period}.",
    "[This is an amazing feeling], the crowd was fantastic and we fed off that energy.",
    "[I'm really happy] with how we handled {place}, everyone stepped up when it mattered.",
    "Honestly [it's a dream come true] to win here and I'm so grateful to {team}.",
    "We stayed calm in the {ord} {period} and [I loved the way {team} kept fighting].",
    "[I was confident the whole way] and I'm excited for the next {event}.",
    "What a night, [I enjoyed every minute] and my {skill} felt better than ever.",
    "[I'm thrilled with this win], we worked so hard for it and it paid off.",
    "[It was a brilliant performance] from {team} and I couldn't be prouder.",
    "My {skill} was sharp today and [I'm delighted] with the way I finished the {ord} {period}.",
    "[We believed in ourselves] in {place} and that made all the difference.",
    "[I'm so happy for the fans], they deserve nights like this.",
    "[Everything clicked today], my {skill} was there whenever I needed it.",
    "[It feels fantastic] to win like this in front of our own fans.",
    "We were fearless in {place} and [I'm proud of every single one of us].",
)
NEGATIVE_TEMPLATES = (
    "[I made too many mistakes out there] and it hurts to lose like this.",
    "My {skill} let me down in the {ord} {period} and [I'm really disappointed].",
    "We were sloppy in {place} and [it's frustrating to throw this away].",
    "[I'm tired and upset], nothing worked for {team} tonight.",
    "[It's a painful loss] and I feel like I let everyone down.",
    "I couldn't find my rhythm and [the {ord} {period} was a disaster] for us.",
    "[I'm angry with myself], we had the chance and we wasted it.",
    "[This one really hurts], I struggled with my {skill} all night.",
    "We didn't deserve anything today, [it was a poor performance] from {team}.",
    "[I'm gutted], my {bodypart} bothered me and I just couldn't move.",
    "[I don't know what went wrong] in {place}, it was just a terrible day.",
    "[I'm sorry for the fans], they deserved much better than this.",
    "My {skill} fell apart under pressure and [that is hard to accept].",
    "[We let it slip] in the {ord} {period} and now it's a long flight home.",
    "[I feel empty right now], I gave everything and it wasn't enough.",
    "[Nothing went our way] in {place} and I'm frustrated with myself.",
)
NEUTRAL_TEMPLATES = (
    "The {ord} {period} started at {clock} and we adjusted to the {condition}.",
    "We arrived on {day} and practised twice on this {venue}.",
    "The {event} was moved to the main {venue} because of the {condition}.",
    "My coach and I talked about the schedule for the next {num} days.",
    "We will review the video on {day} and then travel to the next city.",
    "The {skill} is something we work on every morning in practice.",
    "I changed my {equipment} before the {ord} {period} as usual.",
    "The next {event} is on {day} at {clock}, so we will rest tomorrow.",
    "The {condition} changed a little after the {ord} {period}.",
    "We use the same warm-up routine before every {event}.",
    "I spoke with the physio after the {ord} {period} about the usual routine.",
    "We flew in on {day} and the {venue} was ready at {clock}.",
)
FILLERS = dict(
    clock=("six o'clock", "half past seven", "eight o'clock", "noon", "two o'clock", "nine o'clock"),
    condition=("wind", "rain", "heat", "lights", "humidity", "cold"),
    day=("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    num=("two", "three", "four", "five"),
    bodypart=("knee", "shoulder", "ankle", "back", "wrist"),
)

# --------------------------------------------------------------------------------------------------
# Gestures (NFBL cues) and their wording in the reasoning text
# --------------------------------------------------------------------------------------------------

POSITIVE_GESTURES = ("spreading arms", "raising a fist", "nodding", "sitting upright")
NEGATIVE_GESTURES = (
    "folding arms",
    "lowering the head",
    "slumping",
    "scratching the nose",
    "touching the ear",
    "rubbing the eyes",
)
NEUTRAL_GESTURES = ("illustrative hand gestures", "adjusting the microphone")
GESTURE_MEANING = {
    "spreading arms": "open, expansive arm movements that signal confidence",
    "raising a fist": "a raised fist, a gesture of triumph",
    "nodding": "repeated nodding, which conveys agreement and satisfaction",
    "sitting upright": "an upright, lifted posture that suggests pride and energy",
    "folding arms": "folded arms, a self-protective posture often linked to defensiveness or discomfort",
    "lowering the head": "a lowered head, which suggests dejection",
    "slumping": "a slumped posture that conveys fatigue and low spirits",
    "scratching the nose": "a hand scratching the nose, a self-manipulation that often accompanies stress or unease",
    "touching the ear": "a hand touching the ear, a self-manipulation associated with anxiety",
    "rubbing the eyes": "hands rubbing the eyes, a self-protective gesture that can reflect tiredness or distress",
    "illustrative hand gestures": "illustrative hand gestures that accompany the explanation",
    "adjusting the microphone": "an adjustment of the microphone, a manipulation of an object",
}
GESTURE_POLARITY = {
    **{g: "positive" for g in POSITIVE_GESTURES},
    **{g: "negative" for g in NEGATIVE_GESTURES},
    **{g: None for g in NEUTRAL_GESTURES},
}

VOICE_LANGS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VOICE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
BACKDROPS = ((120, 60, 20), (40, 40, 130), (30, 90, 30), (90, 90, 90), (110, 40, 90), (20, 70, 120))
SHIRTS = ((200, 200, 200), (40, 40, 40), (50, 50, 170), (160, 90, 30), (40, 140, 40), (30, 140, 200))
