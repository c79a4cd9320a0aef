"""Batch de-identification: many inputs into one output folder, resumable, one bad input never stops the rest.

Outputs are ``DIR/<input stem>.mp4`` (+ sidecar); an output appears under that name only once its audit passed
(see :mod:`deemo_jax.deid.pipeline`). Failures of this run go to ``DIR/failures.jsonl`` (one JSON object per
line: input index and file name, stage, one-line reason, and ``quarantine`` when a failed output was kept),
rewritten at the start of every run, so it always lists what is still missing. A rerun skips every output
whose sidecar passed the audit and records the same input (sha256) and the same settings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deemo_jax.media import MediaError, probe

from .centerface import CenterFace
from .pipeline import (
    QUARANTINE_DIR,
    AuditFailedError,
    DeidSettings,
    audit_video,
    deidentify_video,
    file_sha256,
    load_sidecar,
    settings_fingerprint,
)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
FAILURES_FILE = "failures.jsonl"
# (description, total frames or None) -> per-frame callback, and a closer; the CLI plugs tqdm in here.
ProgressFactory = Callable[[str, int | None], tuple[Callable[[int], None], Callable[[], None]]]


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the video files below them (sorted). Missing paths are kept, so
    they are reported as failures rather than silently dropped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            out.append(p)
    return out


@dataclass
class BatchSummary:
    inputs: int = 0
    done: list[str] = field(default_factory=list)  # de-identified in this run
    skipped: list[str] = field(default_factory=list)  # already de-identified with the same input and settings
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return len(self.done) + len(self.skipped)


def _already_done(input_path: Path, output_path: Path, fingerprint: str) -> bool:
    try:
        sidecar = load_sidecar(output_path)
    except ValueError:  # a mismatching or broken sidecar: redo the video
        return False
    return bool(
        sidecar
        and sidecar.get("deidentified") is True
        and sidecar.get("audit", {}).get("passed") is True
        and sidecar.get("settings_sha256") == fingerprint
        and sidecar.get("input", {}).get("sha256") == file_sha256(input_path)
    )


def _no_progress(desc: str, total: int | None) -> tuple[Callable[[int], None], Callable[[], None]]:
    return (lambda n: None), (lambda: None)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def one_line(error: BaseException) -> str:
    """``error`` as one line (ffmpeg and OS messages can span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _reason(error: BaseException) -> str:
    if isinstance(error, AuditFailedError | MediaError):
        return one_line(error)
    if isinstance(error, OSError):
        return (f"{type(error).__name__}: {one_line(error)}; check the free space and permissions of the output "
                "folder and the input file, then re-run")
    return f"{type(error).__name__}: {one_line(error)}"


def run_batch(
    inputs: list[Path],
    output_dir: Path,
    settings: DeidSettings,
    *,
    detector: CenterFace,
    force: bool = False,
    keep_failed: bool = False,
    progress: ProgressFactory = _no_progress,
    log: Callable[[str], None] = print,
    log_error: Callable[[str], None] = _stderr,
) -> BatchSummary:
    """De-identify every input into ``output_dir``; never raises for a problem of a single input.

    Progress lines go to ``log``, one ``[FAILED] NAME: reason`` line per failed input to ``log_error``. Raises
    ``OSError`` only when ``output_dir/failures.jsonl`` itself cannot be written, and ``KeyboardInterrupt``.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(inputs=len(inputs))
    fingerprint = settings_fingerprint(settings)
    claimed: dict[Path, Path] = {}
    with open(output_dir / FAILURES_FILE, "w", encoding="utf-8") as failures:

        def fail(index: int, path: Path, stage: str, reason: str, **extra: Any) -> None:
            entry = {"index": index, "input": path.name, "stage": stage, "reason": reason, **extra}
            failures.write(json.dumps(entry) + "\n")
            failures.flush()
            summary.failed.append(entry)
            # The path as given on the command line (where); failures.jsonl keeps only the file name.
            shown = reason.removeprefix(f"{path.name}: ")
            log_error(f"[FAILED] {path} (input {index + 1} of {len(inputs)}): {shown}")

        for index, path in enumerate(inputs):
            output = output_dir / f"{path.stem}.mp4"
            if not path.is_file():
                fail(index, path, "input", "no such file; check the path")
                continue
            if output in claimed:
                fail(
                    index,
                    path,
                    "input",
                    f"output name {output.name} is already used by input "
                    f"{claimed[output].name} in this batch; rename one of them",
                )
                continue
            claimed[output] = path
            stage = "input"
            try:
                if not force and _already_done(path, output, fingerprint):
                    summary.skipped.append(path.name)
                    log(f"[skip] {path.name}: already de-identified ({output.name})")
                    continue
                stage = "probe"
                total = probe(path).frame_estimate
                stage = "de-identification"
                tick, close = progress(f"deid+audit {path.name}", 2 * total if total else None)
                try:
                    sidecar = deidentify_video(
                        path,
                        output,
                        settings,
                        detector=detector,
                        progress=tick,
                        audit_progress=tick,
                        keep_failed=keep_failed,
                    )
                finally:
                    close()
                summary.done.append(path.name)
                audit = sidecar["audit"]
                log(
                    f"[ok] {path.name} -> {output.name} ({audit['frames']} frames, audit max score "
                    f"{audit['max_score']:.2f} < {audit['threshold']})"
                )
            except AuditFailedError as e:
                extra = {"quarantine": f"{QUARANTINE_DIR}/{e.quarantined.name}"} if e.quarantined else {}
                fail(index, path, "audit", _reason(e), **extra)
            except (MediaError, ValueError, OSError) as e:
                fail(index, path, stage, _reason(e))
            except Exception as e:  # noqa: BLE001 - one input must never stop the batch
                fail(index, path, stage, f"unexpected {_reason(e)}")
    return summary


def audit_files(
    paths: list[Path],
    threshold: float,
    *,
    detector: CenterFace,
    detect_scale: tuple[int, int] | None = None,
    progress: ProgressFactory = _no_progress,
) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
    """Yield ``(path, report dict with detections, None)`` or ``(path, None, error)`` per file."""
    for path in paths:
        try:
            total = probe(path).frame_estimate
            tick, close = progress(f"audit {path.name}", total)
            try:
                report = audit_video(
                    path, threshold, detector=detector, detect_scale=detect_scale, progress=tick
                )
            finally:
                close()
            yield path, {**report.to_dict(), "detections": report.detections}, None
        except (MediaError, ValueError, OSError) as e:
            yield path, None, _reason(e)
