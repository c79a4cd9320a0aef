"""Emotion recognition over a shard split, and the paper's Table 4 modality ablations.

One evaluation pass (:func:`evaluate_recognition`): the eval-mode Grain pipeline yields DESIGN.md §3 batches;
each row's prompt is the part before its supervised target (BOS + prompt with placeholders), left-padded for
batched generation with the KV cache (:mod:`deemo_jax.eval.generate`, greedy unless configured otherwise);
the answer is cut at the end symbol, its label parsed over the label set by the documented rule of
:mod:`deemo_jax.eval.labels` (unparseable answers are counted, never mapped to a class) and scored by
:mod:`deemo_jax.eval.metrics`.

Files written to ``output_dir``:

- ``predictions.jsonl``: one object per example, in split order: ``id``, ``prompt`` (modalities, the
  instruction, the prompt token count; never media), ``generated`` (the answer text), ``parsed_label``
  (null when unparseable), ``parse_rule``, ``gold_label``, ``correct``, ``reference`` (the ground-truth
  reasoning; the gold label under the ``recognition`` task, whose target has none), ``finish_reason`` and
  ``num_generated_tokens``. ``scripts/judge.py`` reads it as is (fields ``id``, ``generated``,
  ``reference``);
- ``metrics.json``: :meth:`ClassificationMetrics.to_dict` (accuracy, macro/weighted P/R/F1, UAR, per-class
  P/R/F1, confusion counts, unparseable count and rate) plus the evaluation settings, the examples the
  pipeline skipped as over-long (``n_skipped``, ``skipped_ids``), the prompt template's name (``template``)
  and timings;
- ``results.md``: the Table 4 row of this pass next to the paper's rows, then per-class metrics and the
  confusion matrix;
- ``confusion.png``: the confusion matrix, with the unparseable column.

Ablations (:func:`run_ablations`): one pass per modality set (Table 4: transcription, de-identified video,
de-identified audio, NFBL as text, and their combinations) with the same model, each in its own
subdirectory, then ``table4.md`` (weighted and macro F1 tables) and ``ablations.json``. A modality that is
off is absent from the prompt and its media are not read, so its encoder branch is not run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from deemo_jax.data.pipeline import IGNORE_INDEX, DataConfig, make_iterator
from deemo_jax.data.shards import read_label_set
from deemo_jax.data.tokenizer import load_tokenizer
from deemo_jax.eval.generate import (
    GenerationConfig,
    decode_generated,
    end_symbol_token_sequences,
    generate,
    left_pad,
    prompts_from_batch,
)
from deemo_jax.eval.labels import parse_label_with_rule
from deemo_jax.eval.metrics import ClassificationMetrics, classification_metrics, plot_confusion_matrix
from deemo_jax.eval.report import (
    MODALITIES,
    metrics_markdown,
    table4_markdown,
    write_json_atomic,
    write_jsonl_atomic,
    write_metrics_json,
)
from deemo_jax.models.deemo_llama import DeemoLlama

logger = logging.getLogger(__name__)

# Table 4 modality name -> DataConfig switch.
MODALITY_FLAGS: dict[str, str] = {
    "transcription": "use_transcription",
    "video": "use_video",
    "audio": "use_audio",
    "nfbl": "nfbl_as_text",
}
# The rows of the paper's Table 4, in its order.
TABLE4_ROWS: tuple[tuple[str, ...], ...] = (
    ("video",),
    ("audio",),
    ("nfbl",),
    ("transcription",),
    ("transcription", "video"),
    ("transcription", "video", "audio"),
    ("transcription", "video", "audio", "nfbl"),
)
PREDICTIONS_FILE, METRICS_FILE, MARKDOWN_FILE, CONFUSION_FILE = (
    "predictions.jsonl", "metrics.json", "results.md", "confusion.png",
)


@dataclasses.dataclass
class EvalResult:
    """One pass: the metrics object, the JSON-able summary written to ``metrics.json``, the output paths."""

    modalities: tuple[str, ...]
    metrics: ClassificationMetrics
    summary: dict[str, Any]
    output_dir: Path


def modalities_of(config: DataConfig) -> tuple[str, ...]:
    """The Table 4 modalities a DataConfig switches on, in ``report.MODALITIES`` order."""
    return tuple(m for m in MODALITIES if getattr(config, MODALITY_FLAGS[m]))


def with_modalities(config: DataConfig, modalities: Iterable[str]) -> DataConfig:
    """``config`` with exactly ``modalities`` switched on (names of ``report.MODALITIES``)."""
    chosen = set(modalities)
    unknown = chosen - set(MODALITIES)
    if unknown or not chosen:
        raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {sorted(chosen)}")
    return dataclasses.replace(config, **{flag: name in chosen for name, flag in MODALITY_FLAGS.items()})


def row_name(modalities: Iterable[str]) -> str:
    """Directory name of an ablation row, e.g. ``transcription+video``."""
    chosen = set(modalities)
    return "+".join(m for m in MODALITIES if m in chosen)


def _check_model(model: DeemoLlama, config: DataConfig) -> None:
    if not isinstance(model, DeemoLlama):
        raise ValueError(f"evaluation needs a DeemoLlama, got {type(model).__name__}")
    mc = model.config
    for flag, branch, data_count, model_count in (
        ("use_video", mc.vit, "num_video_query_tokens", lambda: mc.num_video_tokens),
        ("use_audio", mc.audio_encoder, "num_audio_query_tokens", lambda: mc.num_audio_tokens),
    ):
        if not getattr(config, flag):
            continue
        if branch is None:
            raise ValueError(
                f"DataConfig.{flag} is on but the model has no {flag[4:]} branch; switch the modality off or use "
                "a model with that branch"
            )
        if getattr(config, data_count) != model_count():
            raise ValueError(
                f"DataConfig.{data_count} = {getattr(config, data_count)} but the model's Q-Former produces "
                f"{model_count()} tokens; set data.{data_count} to {model_count()}"
            )


def _generation_config(
    generation: GenerationConfig | None, max_new_tokens: int, tokenizer: PreTrainedTokenizerBase, end_symbol: str
) -> GenerationConfig:
    base = generation or GenerationConfig()
    return dataclasses.replace(
        base,
        max_new_tokens=max_new_tokens,
        eos_id=tokenizer.eos_token_id,
        stop_sequences=end_symbol_token_sequences(tokenizer, end_symbol),
    )


def _reference_text(tokenizer: PreTrainedTokenizerBase, labels_row: np.ndarray, task: str, gold: str,
                    end_symbol: str) -> str:
    """The ground-truth reasoning, decoded from the supervised target (the gold label for ``recognition``)."""
    target = tokenizer.decode(labels_row[labels_row != IGNORE_INDEX].tolist(), skip_special_tokens=True)
    target = target.split(end_symbol, 1)[0].strip()
    if task == "both" and target.lower().startswith(gold.lower() + "."):
        target = target[len(gold) + 1:].strip()  # "{label}. {reasoning}" -> reasoning
    return target or gold


def evaluate_pass(
    model: DeemoLlama,
    data_config: DataConfig,
    *,
    output_dir: str | os.PathLike,
    labels: Sequence[str] = (),
    batch_size: int | None = None,
    max_new_tokens: int = 300,
    generation: GenerationConfig | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    end_symbol: str | None = None,
    extra: dict[str, Any] | None = None,
) -> EvalResult:
    """One evaluation pass over ``data_config.split``; see the module docstring for what it writes.

    ``labels`` is the label set the answers are parsed over (default: ``data_config.labels``, else the
    shard ``metadata.json`` labels). ``generation`` carries the decoding settings (greedy by default); its
    EOS and stop sequences are set from the tokenizer and ``end_symbol`` (default: the prompt template's).
    ``extra`` is added to ``metrics.json`` (e.g. the checkpoint).
    """
    config = dataclasses.replace(data_config, batch_size=batch_size or data_config.batch_size)
    config.validate()
    _check_model(model, config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_path, llm_vocab_size=model.config.llm.vocab_size)
    shard_labels = read_label_set(config.shard_dir)
    label_set = tuple(labels) or tuple(config.labels) or shard_labels
    if not label_set:
        raise ValueError(
            f"no label set: pass labels=..., set data.labels, or build the shards in {config.shard_dir!r} with a "
            "metadata.json that lists them"
        )
    # label_index in a record refers to the shard's label set (metadata.json); fall back to the parse set.
    index_labels = shard_labels or label_set
    missing = [label for label in index_labels if label not in label_set]
    if missing:
        raise ValueError(
            f"the shard labels {missing} are not in the evaluated label set {list(label_set)}; set labels to the "
            f"shard's label set {list(index_labels)}"
        )
    prompt_config = config.prompt_config(shard_labels, tokenizer)
    config = dataclasses.replace(config, template=prompt_config.template)
    end_symbol = end_symbol or prompt_config.template.end_symbol
    gen_config = _generation_config(generation, max_new_tokens, tokenizer, end_symbol)
    modalities = modalities_of(config)
    instruction = prompt_config.resolved_instructions()[0].replace("{labels}", ", ".join(prompt_config.labels))

    iterator = make_iterator(config, mode="eval", tokenizer=tokenizer, shard_index=0, shard_count=1)
    rows: list[dict[str, Any]] = []
    gold: list[str] = []
    pred: list[str | None] = []
    generated_tokens = 0
    started = time.perf_counter()
    for batch, ids in iterator:
        prompts = prompts_from_batch(batch)
        input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id)
        seeds = np.array([zlib.crc32((i or "").encode()) for i in ids], np.int64)
        output = generate(
            model, input_ids, attention_mask, gen_config,
            frames=batch.get("frames"), fbank=batch.get("fbank"), row_seeds=seeds,
        )
        texts = decode_generated(tokenizer, output, end_symbol)
        for row, example_id in enumerate(ids):
            if example_id is None:  # a padding row (end of the split, or an example skipped as over-long)
                continue
            index = int(batch["label_index"][row])
            if not 0 <= index < len(index_labels):
                raise ValueError(
                    f"example {example_id!r}: label_index {index} is outside the label set {list(index_labels)}"
                )
            gold_label = index_labels[index]
            if gold_label not in label_set:
                raise ValueError(
                    f"example {example_id!r}: gold label {gold_label!r} is not in the evaluated label set "
                    f"{list(label_set)}; set labels to the shard's label set {list(shard_labels)}"
                )
            parsed, rule = parse_label_with_rule(texts[row], label_set)
            generated_tokens += int(output.num_tokens[row])
            gold.append(gold_label)
            pred.append(parsed)
            rows.append({
                "id": example_id,
                "prompt": {
                    "modalities": list(modalities),
                    "instruction": instruction,
                    "task": config.task,
                    "num_tokens": len(prompts[row]),
                },
                "generated": texts[row],
                "parsed_label": parsed,
                "parse_rule": rule,
                "gold_label": gold_label,
                "correct": parsed == gold_label,
                "reference": _reference_text(tokenizer, batch["labels"][row], config.task, gold_label, end_symbol),
                "finish_reason": output.finish_reason(row),
                "num_generated_tokens": int(output.num_tokens[row]),
            })
    elapsed = time.perf_counter() - started
    if not rows:
        raise ValueError(
            f"split {config.split!r} of {config.shard_dir!r} gave no evaluable example "
            f"({iterator.num_dropped} skipped as over-long, {len(iterator.corrupt_records)} corrupt); check the "
            "split name and DataConfig.max_length"
        )
    if iterator.dropped_ids:
        logger.warning(
            "%d example(s) skipped as longer than max_length %d, not in the metrics: %s",
            len(iterator.dropped_ids), config.max_length, iterator.dropped_ids[:20],
        )
    if iterator.corrupt_records:
        logger.warning(
            "%d corrupt shard record(s) excluded from the metrics (data.skip_corrupt_records): %s",
            len(iterator.corrupt_records), iterator.corrupt_records[:20],
        )

    metrics = classification_metrics(gold, pred, label_set)
    summary = {
        "modalities": list(modalities),
        "split": config.split,
        "task": config.task,
        "template": prompt_config.template.name,
        "instruction": instruction,
        "n_skipped": len(iterator.dropped_ids),
        "skipped_ids": list(iterator.dropped_ids),
        "n_excluded_corrupt": len(iterator.corrupt_records),
        "excluded_corrupt_records": list(iterator.corrupt_records),
        "parse_rules": dict(sorted(Counter(row["parse_rule"] for row in rows).items())),
        "generation": {
            **{k: v for k, v in dataclasses.asdict(gen_config).items() if k != "stop_sequences"},
            "stop_sequences": [list(s) for s in gen_config.stop_sequences],
            "end_symbol": end_symbol,
        },
        "batch_size": config.batch_size,
        "elapsed_s": round(elapsed, 3),
        "generated_tokens": generated_tokens,
        **(extra or {}),
    }
    write_jsonl_atomic(rows, output_dir / PREDICTIONS_FILE)
    write_metrics_json(metrics, output_dir / METRICS_FILE, extra=summary)
    title = f"Emotion recognition, split {config.split}, modalities: {', '.join(modalities)}"
    plot_confusion_matrix(metrics.confusion, label_set, output_dir / CONFUSION_FILE, title=f"{config.split}: "
                          f"{row_name(modalities)}")
    markdown = (
        f"# {title}\n\n"
        f"{metrics.n} examples ({len(iterator.dropped_ids)} skipped as over-long, "
        f"{len(iterator.corrupt_records)} excluded as corrupt shard records), "
        f"{metrics.n_unparseable} unparseable answers ({100 * metrics.unparseable_rate:.2f}%), prompt template "
        f"{prompt_config.template.name}, decoding {'sampling' if gen_config.do_sample else 'greedy'}, "
        f"max_new_tokens {gen_config.max_new_tokens}.\n\n"
        f"{table4_markdown([(modalities, metrics)])}\n{metrics_markdown(metrics)}"
    )
    (output_dir / MARKDOWN_FILE).write_text(markdown, encoding="utf-8")
    return EvalResult(modalities, metrics, {**metrics.to_dict(), **summary}, output_dir)


def evaluate_recognition(
    model: DeemoLlama,
    data_config: DataConfig,
    *,
    labels: Sequence[str] = (),
    output_dir: str | os.PathLike,
    batch_size: int,
    max_new_tokens: int,
    generation: GenerationConfig | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One pass (see :func:`evaluate_pass`); returns the ``metrics.json`` content as a dict.

    The dict holds at least ``accuracy``, ``weighted_f1``, ``macro_f1``, ``n_unparseable`` (fractions in
    [0, 1]) and the paths of the written files under ``files``.
    """
    result = evaluate_pass(
        model, data_config, output_dir=output_dir, labels=labels, batch_size=batch_size,
        max_new_tokens=max_new_tokens, generation=generation, tokenizer=tokenizer, extra=extra,
    )
    files = {name: str(result.output_dir / name) for name in (PREDICTIONS_FILE, METRICS_FILE, MARKDOWN_FILE,
                                                              CONFUSION_FILE)}
    return {**result.summary, "files": files}


def run_ablations(
    model: DeemoLlama,
    data_config: DataConfig,
    *,
    output_dir: str | os.PathLike,
    rows: Sequence[Sequence[str]] = TABLE4_ROWS,
    labels: Sequence[str] = (),
    batch_size: int | None = None,
    max_new_tokens: int = 300,
    generation: GenerationConfig | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    extra: dict[str, Any] | None = None,
) -> list[EvalResult]:
    """One :func:`evaluate_pass` per modality set of ``rows`` (default: the paper's Table 4), then the table.

    Every row is checked against the model and the data before the first pass, so a bad row fails fast.
    Writes ``{output_dir}/{row_name}/...`` per row, ``{output_dir}/table4.md`` and ``ablations.json``.
    """
    if not rows:
        raise ValueError("run_ablations: no rows")
    configs = [with_modalities(data_config, row) for row in rows]
    names = [row_name(row) for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"run_ablations: duplicate rows {names}")
    for config in configs:
        _check_model(model, config)
    if tokenizer is None:
        tokenizer = load_tokenizer(data_config.tokenizer_path, llm_vocab_size=model.config.llm.vocab_size)
    output_dir = Path(output_dir)
    results = []
    for name, config in zip(names, configs, strict=True):
        logger.info("ablation row %s", name)
        results.append(evaluate_pass(
            model, config, output_dir=output_dir / name, labels=labels, batch_size=batch_size,
            max_new_tokens=max_new_tokens, generation=generation, tokenizer=tokenizer, extra=extra,
        ))
    table_rows = [(r.modalities, r.metrics) for r in results]
    n = results[0].metrics.n
    text = (
        f"# Table 4: modality ablation on split {data_config.split} ({n} examples per row)\n\n"
        f"## F1 weighted\n\n{table4_markdown(table_rows, f1='weighted')}\n"
        f"## F1 macro\n\n{table4_markdown(table_rows, f1='macro', include_paper=False)}\n"
        "Unparseable answers per row: "
        + ", ".join(f"{name} {r.metrics.n_unparseable}" for name, r in zip(names, results, strict=True))
        + "\n"
    )
    (output_dir / "table4.md").write_text(text, encoding="utf-8")
    write_json_atomic(
        {name: {k: r.summary[k] for k in ("accuracy", "weighted_f1", "macro_f1", "uar", "n", "n_unparseable",
                                          "modalities")} for name, r in zip(names, results, strict=True)},
        output_dir / "ablations.json",
    )
    return results
