"""Offline shard builder: JSONL manifest of de-identified clips -> ArrayRecord shards (schema.py records).

Layout of the output directory::

    {split}-{k:05d}-of-{n:05d}.array_record    shard k of split (rows assigned by manifest order)
    {shard}.stats.json                          per-shard record/label counts and failures
    failures.jsonl                              one {line, id, reason} per manifest row that was not written
    metadata.json                               label set, counts, settings, manifest sha256, shard list

A shard is written to ``{shard}.tmp``, its stats file is written, and only then is it renamed to its final
name: a file with the final name is always complete (the rename is the completion signal). A rerun with the
same manifest and settings skips the finished shards (their failures are carried over from the stats file;
delete a shard to rebuild it) and rebuilds the rest; an output directory that holds another build is refused.

Only de-identified media is accepted: each video needs the sidecar ``<video>.deid.json`` of
``scripts/deidentify.py`` with a passed audit (``deemo_jax.deid.load_sidecar``), unless the caller states
that the data is already de-identified (``already_deidentified=True``, recorded in metadata.json).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deemo_jax.data import fbank as fb
from deemo_jax.data import media, schema
from deemo_jax.data.manifest import DEFAULT_LABELS, ManifestRow, RowFailure, parse_manifest, validate_labels

SHARD_SUFFIX = ".array_record"
STATS_SUFFIX = ".stats.json"
RESAMPLER = "soxr HQ (libsoxr)"

# One record per group for random access; snappy reads ~1.7x faster than the default brotli for ~7% more disk
# (benchmarks/data_pipeline.py --writer-options).
WRITER_OPTIONS = "group_size:1,snappy"


class BuildError(RuntimeError):
    """A problem with the build as a whole (not with one row): bad arguments, foreign output directory."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    split: str
    records: int
    label_counts: dict[str, int]
    skipped: bool  # True: finished by an earlier run and left as it was


@dataclass
class BuildReport:
    output_dir: Path
    manifest_rows: int
    written: int
    failed: int
    shards: list[ShardInfo]
    failures: list[RowFailure]
    warnings: list[str] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        return self.written + self.failed == self.manifest_rows

    def summary(self) -> str:
        return f"written {self.written} + failed {self.failed} = manifest rows {self.manifest_rows}"


@dataclass(frozen=True)
class _ShardPlan:
    name: str
    split: str
    rows: tuple[ManifestRow, ...]


def _settings(labels: tuple[str, ...], records_per_shard: int, already_deidentified: bool) -> dict[str, Any]:
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "labels": list(labels),
        "records_per_shard": records_per_shard,
        "already_deidentified": already_deidentified,
        "frames": {
            "num_frames": media.NUM_FRAMES,
            "size": media.FRAME_SIZE,
            "sampling": "segment starts int(arange(0, vlen, vlen/n)); last index repeated if vlen < n",
            "resize": f"straight to {media.FRAME_SIZE}x{media.FRAME_SIZE}, aspect not kept, "
            f"ffmpeg swscale {media.INTERPOLATION}",
        },
        "audio": {
            "sample_rate": fb.SAMPLE_RATE,
            "channel": 0,
            "resampler": RESAMPLER,
            "num_clips": fb.NUM_CLIPS,
            "clip_duration_s": fb.CLIP_DURATION,
            "num_mel_bins": fb.NUM_MEL_BINS,
            "target_length": fb.TARGET_LENGTH,
            "normalise_mean": fb.FBANK_MEAN,
            "normalise_std": fb.FBANK_STD,
        },
    }


def _fingerprint(manifest_sha256: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"manifest_sha256": manifest_sha256, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _plan(rows: Sequence[ManifestRow], records_per_shard: int) -> list[_ShardPlan]:
    by_split: dict[str, list[ManifestRow]] = {}
    for row in rows:
        by_split.setdefault(row.split, []).append(row)
    plans = []
    for split in sorted(by_split):
        split_rows = by_split[split]
        n = -(-len(split_rows) // records_per_shard)
        for k in range(n):
            chunk = split_rows[k * records_per_shard: (k + 1) * records_per_shard]
            plans.append(_ShardPlan(f"{split}-{k:05d}-of-{n:05d}{SHARD_SUFFIX}", split, tuple(chunk)))
    return plans


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_output_dir(out: Path, fingerprint: str, planned: set[str]) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"--output {out} exists and is not a directory")
    foreign = []
    for stats_path in sorted(out.glob(f"*{SHARD_SUFFIX}{STATS_SUFFIX}")):
        try:
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # an unreadable stats file only makes its shard count as unfinished
        shard = stats_path.name[: -len(STATS_SUFFIX)]
        if stats.get("fingerprint") != fingerprint or shard not in planned:
            foreign.append(shard)
    foreign += [p.name for p in sorted(out.glob(f"*{SHARD_SUFFIX}")) if p.name not in planned]
    if foreign:
        raise BuildError(
            f"--output {out} holds shards of a different build {sorted(set(foreign))[:5]} (another manifest, "
            "or other --labels/--records-per-shard/--already-deidentified); use a new output directory or "
            "delete the old one"
        )


def _finished_stats(out: Path, plan: _ShardPlan, fingerprint: str) -> dict[str, Any] | None:
    """Stats of a shard completed by an earlier run with the same rows, else None."""
    shard, stats_path = out / plan.name, out / (plan.name + STATS_SUFFIX)
    if not (shard.is_file() and stats_path.is_file()):
        return None
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stats.get("fingerprint") != fingerprint or stats.get("lines") != [r.line for r in plan.rows]:
        return None
    return stats


def _deid_refusal(row: ManifestRow, load_sidecar: Callable[[Path], dict | None]) -> str | None:
    """Why ``row``'s video may not be used (no sidecar, failed audit, ...), or None when it may."""
    if not row.video_path.is_file():
        return f"video file {row.video!r} not found (relative paths are resolved against the manifest folder)"
    fix = (
        "run scripts/deidentify.py on it first, or pass --already-deidentified if the data is already "
        "de-identified"
    )
    try:
        sidecar = load_sidecar(row.video_path)
    except Exception as e:  # unreadable or mismatching sidecar: refuses this video only
        reason = f"{row.video}: de-identification sidecar rejected ({e}); {fix}"
        return reason.replace(str(row.video_path), row.video)
    if sidecar is None:
        return f"{row.video}: no de-identification sidecar ({row.video}.deid.json); {fix}"
    ok = isinstance(sidecar, dict) and sidecar.get("deidentified") is True
    audit = sidecar.get("audit") if ok else None
    if not (isinstance(audit, dict) and audit.get("passed") is True):
        return (
            f"{row.video}: its de-identification sidecar does not record a passed audit; re-run "
            "scripts/deidentify.py on it and check its audit report"
        )
    return None


def encode_clip(row: ManifestRow) -> tuple[bytes | None, str | None, list[str]]:
    """Read, featurise and encode one clip: ``(record bytes, None, notes)`` or ``(None, reason, notes)``.

    Runs in the worker processes; never raises for a bad clip.
    """
    notes: list[str] = []
    try:
        clip = media.read_clip(row.video_path, row.start, row.end)
        if clip.audio.size < fb.CLIP_DURATION * fb.SAMPLE_RATE:
            notes.append(
                f"line {row.line} ({row.id}): audio is {clip.audio.size / fb.SAMPLE_RATE:.3f} s, "
                f"zero-padded to {fb.CLIP_DURATION} s"
            )
        if not np.any(clip.audio):
            notes.append(f"line {row.line} ({row.id}): audio is silent")
        fbank, clip_times = fb.imagebind_audio_features(clip.audio, clip.sample_rate, warn_short=False)
        record = {
            "schema_version": schema.SCHEMA_VERSION,
            "kind": "mer",
            "id": row.id,
            "split": row.split,
            "start": row.start,
            "end": row.end,
            "transcription": row.transcription,
            "label": row.label,
            "label_index": row.label_index,
            "reasoning": row.reasoning,
            "nfbl": row.nfbl_clip_relative(),
            "frames": clip.frames,
            "frame_times": clip.frame_times,
            "fbank": fbank,
            "audio_clip_times": clip_times,
        }
        return schema.encode(record), None, notes
    except media.MediaError as e:
        return None, str(e).replace(str(row.video_path), row.video), notes
    except Exception as e:  # one broken clip must not stop the build; the reason names the error
        return None, f"unexpected {type(e).__name__} while reading {row.video}: {e}", notes


def _results(tasks: list[ManifestRow], workers: int) -> Iterator[tuple[bytes | None, str | None, list[str]]]:
    """``encode_clip`` over ``tasks`` in order, on ``workers`` spawned processes with a bounded look-ahead."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(encode_clip, tasks)
        return
    workers = min(workers, len(tasks))
    ctx = multiprocessing.get_context("spawn")  # no fork: safe with threads (tqdm, JAX) in the parent
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    window: deque[Future] = deque()
    submitted = 0
    try:
        while submitted < len(tasks) or window:
            while submitted < len(tasks) and len(window) < 2 * workers:
                window.append(pool.submit(encode_clip, tasks[submitted]))
                submitted += 1
            future = window.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                # A worker was killed (e.g. out of memory): blame this clip, go on with a fresh pool.
                result = (None, "a worker process died while this clip (or one next to it) was processed", [])
                pool.shutdown(cancel_futures=True)
                pool = ProcessPoolExecutor(workers, mp_context=ctx)
                resubmit = range(submitted - len(window), submitted)
                window = deque(pool.submit(encode_clip, tasks[j]) for j in resubmit)
            yield result
    finally:
        pool.shutdown(cancel_futures=True)


def build_shards(
    manifest_path: str | Path,
    output_dir: str | Path,
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    records_per_shard: int = 64,
    workers: int = 1,
    already_deidentified: bool = False,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) the shards of ``manifest_path`` in ``output_dir``; see the module docstring.

    Bad rows never stop the build: each becomes a failure in the report and in ``failures.jsonl``.
    Raises :class:`BuildError` for bad arguments, a foreign output directory or a missing ffmpeg.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    labels = validate_labels(labels)
    if records_per_shard < 1:
        raise BuildError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    try:
        media.require_ffmpeg()
    except media.FFmpegNotFoundError as e:
        raise BuildError(str(e)) from e
    load_sidecar = None
    if not already_deidentified:
        try:
            from deemo_jax.deid import load_sidecar
        except ImportError as e:
            raise BuildError(f"deemo_jax.deid.load_sidecar missing ({e}); cannot check sidecars") from e

    manifest = parse_manifest(manifest_path, labels)
    out = Path(output_dir)
    settings = _settings(labels, records_per_shard, already_deidentified)
    fingerprint = _fingerprint(manifest.sha256, settings)
    plans = _plan(manifest.rows, records_per_shard)
    _check_output_dir(out, fingerprint, {p.name for p in plans})
    out.mkdir(parents=True, exist_ok=True)

    finished = {p.name: s for p in plans if (s := _finished_stats(out, p, fingerprint)) is not None}
    pending = [p for p in plans if p.name not in finished]
    refusals: dict[int, str] = {}
    if load_sidecar is not None:
        by_video: dict[Path, str | None] = {}  # the sidecar check hashes the video: once per file
        for plan in pending:
            for row in plan.rows:
                if row.video_path not in by_video:
                    by_video[row.video_path] = _deid_refusal(row, load_sidecar)
                if by_video[row.video_path] is not None:
                    refusals[row.line] = by_video[row.video_path]
    tasks = [row for plan in pending for row in plan.rows if row.line not in refusals]

    failures = list(manifest.failures)
    warnings: list[str] = []
    shards: list[ShardInfo] = []
    bar = tqdm(total=len(tasks), unit="clip", desc="build_shards", disable=not progress)
    results = _results(tasks, workers)
    try:
        for plan in plans:
            if plan.name in finished:
                stats = finished[plan.name]
                failures += [RowFailure(**f) for f in stats["failures"]]
                shards.append(ShardInfo(plan.name, plan.split, stats["records"], stats["label_counts"], True))
                continue
            tmp = out / (plan.name + ".tmp")
            writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
            shard_failures: list[RowFailure] = []
            label_counts: Counter[str] = Counter()
            for row in plan.rows:
                if row.line in refusals:
                    shard_failures.append(RowFailure(row.line, row.id, refusals[row.line]))
                    continue
                data, reason, notes = next(results)
                bar.update(1)
                warnings += notes
                if data is None:
                    shard_failures.append(RowFailure(row.line, row.id, reason or "unknown error"))
                    continue
                writer.write(data)
                label_counts[row.label] += 1
            writer.close()
            records = sum(label_counts.values())
            _write_json_atomic(out / (plan.name + STATS_SUFFIX), {
                "fingerprint": fingerprint,
                "shard": plan.name,
                "lines": [r.line for r in plan.rows],
                "records": records,
                "label_counts": dict(label_counts),
                "failures": [f.to_json() for f in shard_failures],
            })
            os.replace(tmp, out / plan.name)  # the completion signal
            failures += shard_failures
            shards.append(ShardInfo(plan.name, plan.split, records, dict(label_counts), False))
    finally:
        results.close()
        bar.close()

    failures.sort(key=lambda f: f.line)
    report = BuildReport(
        output_dir=out, manifest_rows=manifest.num_rows, written=sum(s.records for s in shards),
        failed=len(failures), shards=shards, failures=failures, warnings=warnings,
    )
    if not report.reconciles:
        raise BuildError(f"internal error: counts do not reconcile: {report.summary()}")
    _write_outputs(out, report, manifest.sha256, settings, fingerprint)
    return report


def _write_outputs(
    out: Path, report: BuildReport, manifest_sha256: str, settings: dict[str, Any], fingerprint: str
) -> None:
    tmp = out / "failures.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for failure in report.failures:
            f.write(json.dumps(failure.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, out / "failures.jsonl")

    per_split: dict[str, dict[str, Any]] = {}
    per_label: Counter[str] = Counter()
    for s in report.shards:
        entry = per_split.setdefault(s.split, {"records": 0, "shards": 0, "per_label": Counter()})
        entry["records"] += s.records
        entry["shards"] += 1
        entry["per_label"].update(s.label_counts)
        per_label.update(s.label_counts)
    labels = settings["labels"]
    _write_json_atomic(out / "metadata.json", {
        **settings,
        "kind": "mer",
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "manifest_sha256": manifest_sha256,
        "fingerprint": fingerprint,
        "counts": {
            "manifest_rows": report.manifest_rows,
            "written": report.written,
            "failed": report.failed,
            "per_label": {k: per_label[k] for k in labels},
            "per_split": {
                split: {**e, "per_label": {k: e["per_label"][k] for k in labels}}
                for split, e in sorted(per_split.items())
            },
        },
        "shards": [{"file": s.file, "split": s.split, "records": s.records} for s in report.shards],
    })
