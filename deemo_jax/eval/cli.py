"""``scripts/eval.py``: evaluate a training run's checkpoint on a shard split, or run the Table 4 ablations.

``--config=configs/eval.py[:variant]`` plus ``--config.KEY=VALUE`` overrides (see configs/eval.py). Exit
status (docs/exit_codes.md): 0 done; 2 bad config, missing run/checkpoint/shards (one line on stderr saying
what and how to fix, before anything is compiled; also a ``data.template`` other than the one the run was
trained with, naming both); 3 a corrupt shard record (named by file and index;
``data.skip_corrupt_records=True`` excludes and reports them); 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from deemo_jax import cli, exit_codes
from deemo_jax.data.pipeline import OVERLONG_POLICIES, DataConfig
from deemo_jax.data.prompts import TASKS
from deemo_jax.data.shards import CorruptRecordError
from deemo_jax.data.templates import NAMES
from deemo_jax.eval.report import MODALITIES

USAGE = "usage: python scripts/eval.py --config=configs/eval.py[:ablations|:demo|:demo_ablations] [--config.KEY=VALUE]"


class EvalConfigError(ValueError):
    """A bad evaluation config or a missing input; the message is one line."""


def parse_config(argv: Sequence[str]) -> ConfigDict:
    """The locked evaluation ConfigDict of ``argv`` (``EvalConfigError`` with one line on any problem)."""
    return cli.parse_config(argv, usage=USAGE, error=EvalConfigError)


def parse_modalities(text: str, where: str) -> tuple[str, ...]:
    """``"transcription+video"`` -> ``("transcription", "video")``, checked against ``report.MODALITIES``."""
    names = tuple(n.strip() for n in text.split("+") if n.strip())
    unknown = [n for n in names if n not in MODALITIES]
    if not names or unknown or len(set(names)) != len(names):
        raise EvalConfigError(
            f"{where} = {text!r}: use '+'-joined distinct names from {list(MODALITIES)}, e.g. 'transcription+video'"
        )
    return names


def check_eval_config(cfg: ConfigDict) -> None:
    """Value checks that need no file or device (raises :class:`EvalConfigError`)."""
    from deemo_jax.eval.generate import GenerationConfig  # imports JAX: only once the cheap checks have run

    if not cfg.workdir:
        raise EvalConfigError("config.workdir is empty; set --config.workdir=RUN_DIR (a scripts/train.py workdir)")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise EvalConfigError(f"config.batch_size = {cfg.batch_size!r}: must be a positive integer")
    if not isinstance(cfg.step, int) or cfg.step < -1:
        raise EvalConfigError(f"config.step = {cfg.step!r}: must be a checkpoint step or -1 (the latest)")
    if cfg.data.task and cfg.data.task not in TASKS:
        raise EvalConfigError(f"config.data.task = {cfg.data.task!r}: must be one of {TASKS} or '' (the run's)")
    if cfg.data.overlong_policy and cfg.data.overlong_policy not in OVERLONG_POLICIES:
        raise EvalConfigError(f"config.data.overlong_policy = {cfg.data.overlong_policy!r}: one of {OVERLONG_POLICIES}")
    if cfg.data.template and cfg.data.template not in NAMES:
        raise EvalConfigError(f"config.data.template = {cfg.data.template!r}: use one of {NAMES} or '' (the run's)")
    if cfg.modalities:
        parse_modalities(cfg.modalities, "config.modalities")
    for row in cfg.ablations:
        parse_modalities(row, "a row of config.ablations")
    try:
        GenerationConfig(**cfg.generation.to_dict())
    except (TypeError, ValueError) as e:
        raise EvalConfigError(f"config.generation: {cli.one_line(e)}") from None


def eval_data_config(cfg: ConfigDict, run_data: DataConfig) -> DataConfig:
    """The run's pipeline settings with the evaluation config's overrides."""
    d = cfg.data
    overrides: dict[str, Any] = {"split": d.split}
    for key in ("shard_dir", "tokenizer_path", "task", "overlong_policy"):
        if d[key]:
            overrides[key] = d[key]
    if d.max_length:
        overrides["max_length"] = d.max_length
    if d.instructions:
        overrides["instructions"] = tuple(d.instructions)
    if d.skip_corrupt_records:
        overrides["skip_corrupt_records"] = True
    data = dataclasses.replace(run_data, **overrides)
    if cfg.modalities:
        from deemo_jax.eval.evaluate import with_modalities

        data = with_modalities(data, parse_modalities(cfg.modalities, "config.modalities"))
    return data


def run(cfg: ConfigDict) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Load the run, evaluate (or run the ablations); ``(output directory, {row name: metrics summary})``.

    Without ablations the only row is named after the evaluated modalities.
    """
    # The model code (JAX, transformers) loads only after the config checks passed, so they answer at once.
    from deemo_jax.data.tokenizer import load_tokenizer
    from deemo_jax.eval.evaluate import evaluate_recognition, row_name, run_ablations
    from deemo_jax.eval.generate import GenerationConfig
    from deemo_jax.train.runs import describe, load_run

    loaded = load_run(cfg.workdir, step=None if cfg.step == -1 else cfg.step, compilation_cache=True,
                      template=cfg.data.template or None)
    data = eval_data_config(cfg, loaded.data_config(batch_size=cfg.batch_size, split=cfg.data.split))
    tokenizer = loaded.tokenizer
    if cfg.data.tokenizer_path:
        tokenizer = load_tokenizer(cfg.data.tokenizer_path, llm_vocab_size=loaded.model_config.llm.vocab_size)
    labels = tuple(cfg.labels) or tuple(loaded.config.data.labels)
    generation = GenerationConfig(**cfg.generation.to_dict())
    output = Path(cfg.output_dir or Path(loaded.workdir) / "eval" / data.split).expanduser()
    extra = {"checkpoint": describe(loaded), "eval_config": json.loads(cfg.to_json())}
    common = dict(labels=labels, batch_size=cfg.batch_size, max_new_tokens=generation.max_new_tokens,
                  generation=generation, tokenizer=tokenizer, extra=extra)
    if cfg.ablations:
        rows = [parse_modalities(r, "a row of config.ablations") for r in cfg.ablations]
        results = run_ablations(loaded.model, data, output_dir=output / "ablations", rows=rows, **common)
        return output / "ablations", {row_name(r.modalities): r.summary for r in results}
    metrics = evaluate_recognition(loaded.model, data, output_dir=output, **common)
    return output, {row_name(metrics["modalities"]): metrics}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        cfg = parse_config(argv)
        check_eval_config(cfg)
    except EvalConfigError as e:
        print(f"eval.py: config error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        output, rows = run(cfg)
    except CorruptRecordError as e:
        print(f"eval.py: bad data: {cli.one_line(e)}", file=sys.stderr)
        return exit_codes.BAD_DATA
    except (FileNotFoundError, ValueError) as e:
        print(f"eval.py: error: {cli.one_line(e)}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        print("eval.py: interrupted; nothing was written for the unfinished split, rerun the command", file=sys.stderr)
        return exit_codes.INTERRUPTED
    for name, m in rows.items():
        print(
            f"{name}: accuracy {100 * m['accuracy']:.2f}%, weighted F1 {100 * m['weighted_f1']:.2f}%, macro F1 "
            f"{100 * m['macro_f1']:.2f}%, unparseable {m['n_unparseable']}/{m['n']}, skipped (over-long) "
            f"{m['n_skipped']}, excluded (corrupt records) {m.get('n_excluded_corrupt', 0)}"
        )
    print(f"results in {output}")
    return exit_codes.OK
