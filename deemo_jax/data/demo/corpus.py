"""The demo corpus in a directory: the resumable orchestration (:func:`make_demo_corpus`: one process per
interview, then manifest, shards, tokenizer), its guards on the output directory, and its ``README.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from deemo_jax.data.builder import build_shards
from deemo_jax.data.prompts import AUDIO_PLACEHOLDER, TASKS, VIDEO_PLACEHOLDER, PromptConfig, build_prompt
from deemo_jax.files import write_atomic, write_json_atomic

from .interview import InterviewResult, generate_interview
from .plan import CORPUS_VERSION, LABELS, DemoConfig, InterviewPlan, plan_corpus
from .speech import require_espeak

# Everything make_demo_corpus writes; --force deletes exactly these, and only in a directory holding
# PLAN_FILE.
PLAN_FILE = "plan.json"
DONE_FILE = "DONE"
_OWNED = (
    PLAN_FILE,
    DONE_FILE,
    "README.md",
    "manifest.jsonl",
    "generation_failures.jsonl",
    "raw",
    "deid",
    "interviews",
    "shards",
    "tokenizer",
)


class DemoDataError(RuntimeError):
    """The output directory cannot be used as asked (another corpus, a foreign directory)."""


class NoDemoClipError(DemoDataError):
    """Not one clip of the corpus could be made (every interview failed); the message gives the first reasons."""


@dataclass
class DemoReport:
    output_dir: Path
    skipped: bool  # True: the corpus was already complete and nothing was done
    planned_clips: int
    manifest_rows: int
    generation_failures: list[dict[str, str]]
    shard_written: int
    shard_failed: int
    counts: dict[str, dict[str, int]]  # split -> label -> records in the shards
    seconds: dict[str, float]
    bytes_on_disk: int

    def summary(self) -> str:
        lines = [
            f"demo corpus in {self.output_dir}" + (" (complete; nothing done)" if self.skipped else ""),
            f"  clips: planned {self.planned_clips} = generated {self.manifest_rows} + failed "
            f"{len(self.generation_failures)}; shards: written {self.shard_written} + failed "
            f"{self.shard_failed} "
            f"= manifest rows {self.manifest_rows}",
        ]
        for split, per_label in self.counts.items():
            lines.append(f"  {split:5s}: " + ", ".join(f"{k} {v}" for k, v in per_label.items()))
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        lines.append(f"  size {self.bytes_on_disk / 1e6:.1f} MB; {timing}")
        return "\n".join(lines)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _config_json(config: DemoConfig) -> dict[str, Any]:
    return {
        "corpus_version": CORPUS_VERSION,
        **asdict(config),
        "split_fractions": list(config.split_fractions),
    }


def _prepare_output(out: Path, config: DemoConfig, force: bool) -> dict[str, Any] | None:
    """Check/clean the output directory; return the DONE record when the same corpus is already complete."""
    if out.exists() and not out.is_dir():
        raise DemoDataError(f"--output {out} exists and is not a directory")
    wanted = _config_json(config)
    plan_file = out / PLAN_FILE
    if out.is_dir() and any(out.iterdir()) and not plan_file.is_file():
        raise DemoDataError(
            f"--output {out} is a non-empty directory that holds no demo corpus ({PLAN_FILE} missing); "
            "choose a new or empty directory"
        )
    if plan_file.is_file() and not force:
        existing = json.loads(plan_file.read_text(encoding="utf-8"))
        if existing != wanted:
            changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise DemoDataError(
                f"{out} holds a demo corpus made with other settings ({', '.join(changed)}); pass --force to "
                "rebuild it, or choose another --output"
            )
        done = out / DONE_FILE
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
    if force and plan_file.is_file():
        for name in _OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, wanted)
    return None


def _interview_job(
    plan: InterviewPlan, config: DemoConfig, output_dir: str, keep_raw: bool, threads: int
) -> InterviewResult:
    result = generate_interview(plan, config, output_dir, keep_raw=keep_raw, threads=threads)
    if not result.failures:  # a complete interview is kept for reruns; an incomplete one is retried
        write_atomic(
            Path(output_dir) / "interviews" / f"{plan.interview_id}.json",
            json.dumps(result.to_json(), ensure_ascii=False),
        )
    return result


def _finished_interview(out: Path, plan: InterviewPlan) -> InterviewResult | None:
    from deemo_jax.deid import is_deidentified  # pulls in scipy.signal (1-2 s): not on the complete-corpus path

    path = out / "interviews" / f"{plan.interview_id}.json"
    if not path.is_file() or not is_deidentified(out / "deid" / f"{plan.interview_id}.mp4"):
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return InterviewResult(**data)


def _run_interviews(
    plans: list[InterviewPlan], config: DemoConfig, out: Path, *, workers: int, keep_raw: bool, progress: bool
) -> list[InterviewResult]:
    """Generate the interviews not finished by an earlier run; never stops on one interview."""
    (out / "interviews").mkdir(parents=True, exist_ok=True)
    results: dict[str, InterviewResult] = {}
    todo = []
    for plan in plans:
        done = _finished_interview(out, plan)
        if done is not None:
            results[plan.interview_id] = done
        else:
            todo.append(plan)
    bar = tqdm(
        total=len(plans), initial=len(results), unit="interview", desc="demo interviews", disable=not progress
    )
    try:
        if workers == 1:
            for plan in todo:
                results[plan.interview_id] = _interview_job(plan, config, str(out), keep_raw, 0)
                bar.update(1)
        else:
            for attempt in range(2):  # a second pool retries interviews whose worker process died
                if not todo:
                    break
                crashed = []
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                    futures = {pool.submit(_interview_job, p, config, str(out), keep_raw, 1): p for p in todo}
                    for future in as_completed(futures):
                        plan = futures[future]
                        try:
                            results[plan.interview_id] = future.result()
                        except BrokenProcessPool as e:
                            if attempt == 0:
                                crashed.append(plan)
                                continue
                            results[plan.interview_id] = _failed(plan, f"worker process died: {e}")
                        except Exception as e:  # noqa: BLE001 - recorded per clip, the corpus goes on
                            results[plan.interview_id] = _failed(plan, f"{type(e).__name__}: {e}")
                        bar.update(1)
                todo = crashed
    finally:
        bar.close()
    return [results[p.interview_id] for p in plans]


def _failed(plan: InterviewPlan, reason: str) -> InterviewResult:
    return InterviewResult(
        plan.interview_id, failures=[{"id": c.clip_id, "reason": reason} for c in plan.clips]
    )


def tokenizer_texts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """All text a model sees on this corpus: every task's prompt (with the NFBL part) and target, per clip."""
    texts = []
    for row in rows:
        duration = row["end"] - row["start"]
        record = {
            "kind": "mer",
            "id": row["id"],
            "transcription": row["transcription"],
            "label": row["label"],
            "reasoning": row["reasoning"],
            "nfbl": [
                {
                    "label": c["label"],
                    "start": max(0.0, c["start"] - row["start"]),
                    "end": min(duration, c["end"] - row["start"]),
                }
                for c in row["nfbl"]
            ],
        }
        for task in TASKS:
            prompt, target = build_prompt(record, PromptConfig(task=task, nfbl_as_text=True, labels=LABELS))
            text = (prompt + target).replace(VIDEO_PLACEHOLDER, "").replace(AUDIO_PLACEHOLDER, "")
            texts.append(text)
    return texts


def make_demo_corpus(
    output_dir: str | Path,
    config: DemoConfig | None = None,
    *,
    workers: int = 2,
    force: bool = False,
    keep_raw: bool = False,
    progress: bool = True,
) -> DemoReport:
    """Generate (or finish, or just report) the demo corpus in ``output_dir``; see the module docstring.

    A complete corpus with the same settings returns at once (``skipped=True``); ``force=True`` rebuilds
    it. An interrupted run resumes: finished interviews and shards are kept. Raises :class:`DemoDataError`
    for an unusable output directory or a missing ffmpeg, and :class:`SpeechError` when espeak-ng is
    missing.
    """
    config = config or DemoConfig()
    config.validate()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out = Path(output_dir)
    done = _prepare_output(out, config, force)
    if done is not None:
        return _report_from_done(out, done)
    # imports transformers (seconds): not on the complete-corpus path, which returns above
    from deemo_jax.data.tokenizer import train_sentencepiece_tokenizer

    require_espeak()
    if shutil.which("ffmpeg") is None:
        raise DemoDataError("ffmpeg not found on PATH; install it with `apt-get install -y ffmpeg`")

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    plans = plan_corpus(config)
    results = _run_interviews(plans, config, out, workers=workers, keep_raw=keep_raw, progress=progress)
    seconds["interviews"] = time.perf_counter() - t0
    if not keep_raw:
        shutil.rmtree(out / "raw", ignore_errors=True)

    rows = [row for r in results for row in r.rows]
    failures = [f for r in results for f in r.failures]
    if len(rows) + len(failures) != config.num_clips:
        raise RuntimeError(
            f"internal error: {len(rows)} clips + {len(failures)} failures != {config.num_clips}"
        )
    if not rows:
        reasons = sorted({f["reason"] for f in failures})[:3]
        raise NoDemoClipError(f"no demo clip could be made; first reasons: {reasons}")
    manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    manifest_path = out / "manifest.jsonl"
    if manifest_path.is_file() and manifest_path.read_text(encoding="utf-8") != manifest:
        shutil.rmtree(out / "shards", ignore_errors=True)  # built from an earlier, incomplete manifest
    write_atomic(manifest_path, manifest)
    write_atomic(
        out / "generation_failures.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures)
    )

    t1 = time.perf_counter()
    build = build_shards(
        manifest_path,
        out / "shards",
        labels=LABELS,
        records_per_shard=config.records_per_shard,
        workers=workers,
        already_deidentified=False,
        progress=progress,
    )
    seconds["shards"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    train_sentencepiece_tokenizer(tokenizer_texts(rows), out / "tokenizer", vocab_size=config.vocab_size)
    seconds["tokenizer"] = time.perf_counter() - t2
    seconds["total"] = time.perf_counter() - t0

    metadata = json.loads((out / "shards" / "metadata.json").read_text(encoding="utf-8"))
    counts = {split: dict(entry["per_label"]) for split, entry in metadata["counts"]["per_split"].items()}
    report = DemoReport(
        output_dir=out,
        skipped=False,
        planned_clips=config.num_clips,
        manifest_rows=len(rows),
        generation_failures=failures,
        shard_written=build.written,
        shard_failed=build.failed,
        counts=counts,
        seconds={k: round(v, 1) for k, v in seconds.items()},
        bytes_on_disk=0,
    )
    write_atomic(out / "README.md", _readme(report, config, rows))
    report.bytes_on_disk = _dir_bytes(out)
    done_record = {
        "corpus_version": CORPUS_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "planned_clips": report.planned_clips,
        "manifest_rows": report.manifest_rows,
        "generation_failed": len(failures),
        "shard_written": report.shard_written,
        "shard_failed": report.shard_failed,
        "counts": counts,
        "seconds": report.seconds,
        "bytes_on_disk": report.bytes_on_disk,
    }
    write_json_atomic(out / DONE_FILE, done_record)
    return report


def _report_from_done(out: Path, done: dict[str, Any]) -> DemoReport:
    failures_file = out / "generation_failures.jsonl"
    failures = [
        json.loads(line) for line in failures_file.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return DemoReport(
        output_dir=out,
        skipped=True,
        planned_clips=done["planned_clips"],
        manifest_rows=done["manifest_rows"],
        generation_failures=failures,
        shard_written=done["shard_written"],
        shard_failed=done["shard_failed"],
        counts=done["counts"],
        seconds=done["seconds"],
        bytes_on_disk=done["bytes_on_disk"],
    )


def _readme(report: DemoReport, config: DemoConfig, rows: Sequence[dict[str, Any]]) -> str:
    neutral = sum(
        1
        for p in plan_corpus(config)
        for c in p.clips
        if c.neutral_text and c.clip_id in {r["id"] for r in rows}
    )
    table = "\n".join(
        f"| {split} | " + " | ".join(str(per_label.get(label, 0)) for label in LABELS) + " |"
        for split, per_label in report.counts.items()
    )
    return f"""# Demo corpus (synthetic)

Made by `python scripts/make_demo_data.py --output {report.output_dir.name} --num-clips {config.num_clips} \\
--seed {config.seed}` (deemo_jax/data/demo.py, corpus version {CORPUS_VERSION}); see docs/demo_data.md.
Everything here is synthetic: espeak-ng speech, OpenCV drawings, and the face of `skimage.data.astronaut()`
(a public-domain NASA photo shipped with scikit-image), blurred by the real de-identification.

| split | {" | ".join(LABELS)} |
|---|{"---|" * len(LABELS)}
{table}

- {report.manifest_rows} clips of {config.num_clips} planned ({len(report.generation_failures)} failed: see
  `generation_failures.jsonl`); {neutral} have a sentiment-neutral transcription.
- `deid/`: de-identified interview videos ({config.width}x{config.height}, {config.fps} fps, 16 kHz McAdams
  audio) with their `.deid.json` sidecars (audit passed); no raw video or voice is kept.
- `manifest.jsonl`: one clip per row (start/end and NFBL times in seconds of the interview video).
- `shards/`: ArrayRecord shards built by `deemo_jax.data.builder` (`metadata.json`, `failures.jsonl`).
- `tokenizer/`: SentencePiece tokenizer (vocabulary {config.vocab_size}) trained on all prompts and targets.
"""
