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

Only de-identified media is accepted, by the one rule of :mod:`deemo_jax.deid.rule`: a video needs the sidecar
``<video>.deid.json`` of ``scripts/deidentify.py`` that matches its bytes and records a finished
de-identification with a passed audit (``require_deidentified``). With ``already_deidentified=True`` (recorded in
metadata.json) a video *without* a sidecar is accepted only if the privacy audit, run here at the strict
threshold, finds no face (``check_foreign``); a sidecar that records a failure still refuses its video. Each
video is hashed and audited once per build, however many rows use it.

A video without an audio track gives video-only records (``has_audio: false``, no ``fbank``); the training
pipeline refuses them only when the run uses the audio modality.
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

from deemo_jax import media
from deemo_jax.data import fbank as fb
from deemo_jax.data import schema
from deemo_jax.data.manifest import DEFAULT_LABELS, ManifestRow, RowFailure, parse_manifest, validate_labels
from deemo_jax.files import ensure_writable_dir, write_atomic, write_json_atomic

SHARD_SUFFIX = ".array_record"
STATS_SUFFIX = ".stats.json"
RESAMPLER = "soxr HQ (libsoxr)"

# One record per group for random access; snappy reads ~1.7x faster than the default brotli for ~7% more disk
# (benchmarks/data_pipeline.py --writer-options).
WRITER_OPTIONS = "group_size:1,snappy"


class BuildError(RuntimeError):
    """A problem with the build as a whole (not with one row): bad arguments, foreign output directory,
    missing ffmpeg or face detector."""


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


def _settings(labels: tuple[str, ...], records_per_shard: int, already_deidentified: bool,
              audit_threshold: float) -> dict[str, Any]:
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "labels": list(labels),
        "records_per_shard": records_per_shard,
        "already_deidentified": already_deidentified,
        "deidentification": {
            "rule": "sidecar matching the video's sha256, de-identification finished, audit passed at a "
            f"threshold <= {audit_threshold}",
            "videos_without_sidecar": f"privacy audit run here at threshold {audit_threshold}"
            if already_deidentified else "refused",
        },
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


def _check_output_dir(out: Path, fingerprint: str, planned: set[str]) -> None:
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
            f"output folder {out} already holds shards of a different build {sorted(set(foreign))[:5]} (another "
            "manifest, or other --labels/--records-per-shard/--already-deidentified); choose a new --output "
            f"folder, or delete {out} to rebuild there"
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


def _message(text: str, row: ManifestRow) -> str:
    """``text`` naming the video as the manifest does (with its folder: two folders may hold a ``clip.mp4``)."""
    text = text.replace(str(row.video_path), row.video)
    base = row.video_path.name
    if row.video != base and text.startswith(base + ":"):
        text = row.video + text[len(base):]
    return " ".join(text.split())


def _media_fix(error: Exception) -> str:
    """How to fix a clip that media could not read, unless its message already says."""
    if isinstance(error, media.ClipOutOfRangeError | media.TooFewFramesError):
        return "; fix start/end in the manifest"
    if "again" in str(error):
        return ""
    return "; replace it with a complete, readable video (re-run scripts/deidentify.py on its source)"


def _deid_refusal(row: ManifestRow, check: Callable[..., dict], cache: Any) -> str | None:
    """Why the rule refuses ``row``'s video (missing file, no sidecar, failed audit, ...), or None."""
    from deemo_jax.deid import NotDeidentifiedError

    if not row.video_path.is_file():
        return (f"{row.video}: video file not found (relative paths are resolved against the manifest's folder); "
                "fix the path in the manifest")
    try:
        check(row.video_path, name=row.video, cache=cache)
    except NotDeidentifiedError as e:
        return _message(str(e), row)
    return None


def encode_clip(row: ManifestRow) -> tuple[bytes | None, str | None, list[str]]:
    """Read, featurise and encode one clip: ``(record bytes, None, notes)`` or ``(None, reason, notes)``.

    A video without an audio track gives a video-only record (``has_audio`` false, no ``fbank``).
    Runs in the worker processes; never raises for a bad clip.
    """
    notes: list[str] = []
    try:
        info = media.probe(row.video_path)
        frames, frame_times = media.read_frames(row.video_path, row.start, row.end, info=info)
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
            "frames": frames,
            "frame_times": frame_times,
        }
        if info.audio_sample_rate is None:
            notes.append(f"line {row.line} ({row.id}): {row.video} has no audio track: video-only record")
            record["has_audio"] = False
        else:
            audio = media.read_audio(row.video_path, row.start, row.end, info=info)
            if audio.size < fb.CLIP_DURATION * fb.SAMPLE_RATE:
                notes.append(
                    f"line {row.line} ({row.id}): audio is {audio.size / fb.SAMPLE_RATE:.3f} s, "
                    f"zero-padded to {fb.CLIP_DURATION} s"
                )
            if not np.any(audio):
                notes.append(f"line {row.line} ({row.id}): audio is silent")
            record["fbank"], record["audio_clip_times"] = fb.imagebind_audio_features(
                audio, fb.SAMPLE_RATE, warn_short=False
            )
        return schema.encode(record), None, notes
    except media.MediaError as e:
        return None, _message(f"{e}{_media_fix(e)}", row), notes
    except Exception as e:  # one broken clip must not stop the build; the reason names the error
        return None, _message(f"unexpected {type(e).__name__} while reading {row.video}: {e}", row), notes


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
    detector: Any = None,
) -> BuildReport:
    """Build (or resume) the shards of ``manifest_path`` in ``output_dir``; see the module docstring.

    Bad rows never stop the build: each becomes a failure in the report and in ``failures.jsonl``.
    ``detector`` (a ``deemo_jax.deid.CenterFace``) runs the audits of ``already_deidentified`` videos without a
    sidecar (default: one created on first use). Raises :class:`BuildError` for bad arguments, a foreign output
    directory, a missing ffmpeg or face detector; ``FileNotFoundError`` for a missing manifest;
    :class:`deemo_jax.files.OutputDirError` for an output folder that cannot be written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    from deemo_jax.deid import DetectorUnavailableError
    from deemo_jax.deid.rule import AUDIT_THRESHOLD, DeidCache, check_foreign, require_deidentified

    labels = validate_labels(labels)
    if records_per_shard < 1:
        raise BuildError(f"records_per_shard must be >= 1, got {records_per_shard}")
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")
    try:
        media.require_ffmpeg()
    except media.FFmpegNotFoundError as e:
        raise BuildError(str(e)) from e

    manifest = parse_manifest(manifest_path, labels)
    out = Path(output_dir)
    settings = _settings(labels, records_per_shard, already_deidentified, AUDIT_THRESHOLD)
    fingerprint = _fingerprint(manifest.sha256, settings)
    plans = _plan(manifest.rows, records_per_shard)
    ensure_writable_dir(out, what="--output folder")
    _check_output_dir(out, fingerprint, {p.name for p in plans})

    finished = {p.name: s for p in plans if (s := _finished_stats(out, p, fingerprint)) is not None}
    pending = [p for p in plans if p.name not in finished]
    refusals: dict[int, str] = {}
    check = check_foreign if already_deidentified else require_deidentified
    cache = DeidCache(detector=detector)
    by_video: dict[Path, str | None] = {}  # the rule hashes (and maybe audits) the video: once per file
    videos = {row.video_path: row for plan in pending for row in plan.rows}
    checking = tqdm(total=len(videos), unit="video", desc="de-identification check", disable=not progress)
    try:
        for path, row in videos.items():
            by_video[path] = _deid_refusal(row, check, cache)
            checking.update(1)
    except DetectorUnavailableError as e:
        raise BuildError(f"--already-deidentified needs the face detector to audit videos: {e}") from e
    finally:
        checking.close()
    for plan in pending:
        for row in plan.rows:
            if by_video[row.video_path] is not None:
                refusals[row.line] = _message(by_video[row.video_path], row)
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
            write_json_atomic(out / (plan.name + STATS_SUFFIX), {
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
    write_atomic(out / "failures.jsonl", "".join(
        json.dumps(failure.to_json(), ensure_ascii=False) + "\n" for failure in report.failures
    ))

    per_split: dict[str, dict[str, Any]] = {}
    per_label: Counter[str] = Counter()
    for s in report.shards:
        entry = per_split.setdefault(s.split, {"records": 0, "shards": 0, "per_label": Counter()})
        entry["records"] += s.records
        entry["shards"] += 1
        entry["per_label"].update(s.label_counts)
        per_label.update(s.label_counts)
    labels = settings["labels"]
    write_json_atomic(out / "metadata.json", {
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
