"""Emotion-recognition evaluation of a training run (paper Table 4 / Table 5 accuracy and F1).

    # One pass over the test split with the run's modalities (greedy decoding):
    python scripts/eval.py --config=configs/eval.py --config.workdir=runs/deemo_mer

    # The whole Table 4 (one pass per modality set, the model built once):
    python scripts/eval.py --config=configs/eval.py:ablations --config.workdir=runs/deemo_mer

    # The demo run of `make demo` (runs/demo), and its Table 4:
    python scripts/eval.py --config=configs/eval.py:demo
    python scripts/eval.py --config=configs/eval.py:demo_ablations

Outputs go to ``{workdir}/eval/{split}`` (or ``output_dir``): predictions.jsonl (also the input of
scripts/judge.py), metrics.json, results.md, confusion.png; ablations add table4.md and ablations.json.
Every key can be overridden (``--config.generation.do_sample=True``, ``--config.data.split=val``,
``--config.ablations="('transcription', 'transcription+video')"``); unknown keys are errors. Data settings
left empty/0 keep the training run's value.
"""

from ml_collections import ConfigDict

VARIANTS = ("default", "ablations", "demo", "demo_ablations")
# Paper Table 4 rows, in its order; "+" joins the modalities of a row.
TABLE4 = (
    "video", "audio", "nfbl", "transcription", "transcription+video", "transcription+video+audio",
    "transcription+video+audio+nfbl",
)


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"configs/eval.py: unknown variant {variant!r}; use one of {VARIANTS}")
    c = ConfigDict()
    c.workdir = ""  # the training run (its config.json and checkpoints/)
    c.step = -1  # checkpoint step; -1 = the latest
    c.output_dir = ""  # default {workdir}/eval/{split} (+ /ablations)
    c.batch_size = 8
    c.labels = ()  # label set the answers are parsed over; empty = the run's data.labels, else the shards'
    # Overrides of the run's data settings ("" / 0 = the run's value).
    # template: "" = the run's own (recorded in its checkpoints); a name must be that same template, else exit 2.
    c.data = ConfigDict(dict(shard_dir="", split="test", tokenizer_path="", task="", max_length=0,
                             instructions=(), overlong_policy="", template="",
                             # True: corrupt shard records are excluded and listed in the report (else exit 3)
                             skip_corrupt_records=False))
    c.modalities = ""  # e.g. "transcription+video"; "" = the run's data modalities
    c.ablations = ()  # rows like "transcription+video"; non-empty = one pass per row and table4.md
    c.generation = ConfigDict(dict(max_new_tokens=300, do_sample=False, temperature=1.0, top_p=1.0, seed=0,
                                   length_bucket=32))
    if variant in ("ablations", "demo_ablations"):
        c.ablations = TABLE4
    if variant.startswith("demo"):
        c.workdir = "runs/demo"
        c.generation.max_new_tokens = 192  # demo answers "{label}. {reasoning}###" are ~100 words; stops at ###
    c.lock()
    return c
