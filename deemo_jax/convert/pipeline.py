"""One conversion: read -> check keys -> tokenizer + template -> stream into Orbax -> manifest -> (verify) -> install.

The output is staged in ``OUT.tmp-XXXX`` next to ``OUT`` and renamed into place only once the manifest (written
last) is there, so an interrupted conversion never leaves a directory that looks complete; a failed run removes
its staging directory.
"""

from __future__ import annotations

import hashlib
import re
import resource
import shutil
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from deemo_jax.convert import converted
from deemo_jax.convert.common import check_keys
from deemo_jax.convert.kinds import (
    KINDS,
    TOKENIZER_FILES,
    TOKENIZER_MODEL_FILES,
    Kind,
    Plan,
    check_kind,
    parse_overrides,
)
from deemo_jax.convert.llm_tokenizer import (
    build_llm_record,
    check_template_option,
    complete_sentencepiece_config,
    describe,
)
from deemo_jax.convert.readers import CheckpointFormatError, TensorReader, open_checkpoint
from deemo_jax.convert.verify import verify_conversion
from deemo_jax.files import ensure_writable_dir

DTYPES = ("float32", "bfloat16")
UNEXPECTED_ALLOWED = "unexpected (allowed by --allow-unexpected)"


class VerificationError(RuntimeError):
    """The converted component does not reproduce its PyTorch reference within tolerance."""


@dataclass
class ConversionResult:
    output: Path
    manifest: dict
    stats: converted.WriteStats
    verification: dict | None = None
    log: list[str] = field(default_factory=list)


class _Hasher(threading.Thread):
    """sha256 of the source files in the background (plain reads: page cache, not process memory)."""

    def __init__(self, files: Sequence[Path]):
        super().__init__(daemon=True)
        self.files = list(files)
        self.result: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for f in self.files:
                h = hashlib.sha256()
                with open(f, "rb") as fh:
                    while chunk := fh.read(16 * 2**20):
                        h.update(chunk)
                self.result.append({"name": f.name, "bytes": f.stat().st_size, "sha256": h.hexdigest()})
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e


def _dtype(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose one of {DTYPES}")
    return jnp.dtype(name)


def open_source(kind: Kind, path: Path) -> TensorReader:
    if kind.input_is_dir and not path.is_dir():
        raise CheckpointFormatError(f"{kind.name} expects {kind.input}; {path} is not a directory")
    if not kind.input_is_dir and path.is_dir():
        raise CheckpointFormatError(f"{kind.name} expects a file ({kind.input}); {path} is a directory")
    if kind.open_reader is not None:
        return kind.open_reader(path)
    return open_checkpoint(path, container_key=kind.container_key)


def plan_conversion(
    kind: Kind, reader: TensorReader, source: Path, overrides: Sequence[str] = (), allow_unexpected: bool = False
) -> tuple[Plan, dict[str, str]]:
    """The plan for this file and the skipped keys (key -> reason); raises on missing/unexpected/mis-shaped."""
    shapes = reader.shapes()
    check_kind(kind, set(shapes), source)
    plan = kind.build(shapes, parse_overrides(overrides), source)
    check_keys(
        shapes,
        {k: r.shape for k, r in plan.table.items()},
        plan.ignorable,
        allow_unexpected=allow_unexpected,
        context=f"{kind.name} ({source})",
        hint=f"check that --input is {kind.input} and --source {kind.name} is right",
    )
    patterns = [(re.compile(p), reason) for p, reason in plan.ignorable.items()]
    skipped = {}
    for key in shapes:
        if key not in plan.table:
            reason = next((r for p, r in patterns if p.fullmatch(key)), None)
            skipped[key] = reason or UNEXPECTED_ALLOWED
    for key in reader.non_tensor_keys:
        skipped[key] = "not a tensor"
    return plan, skipped


def convert_checkpoint(
    source: str,
    input_path: str | Path,
    output: str | Path,
    *,
    dtype: str | None = None,
    overrides: Sequence[str] = (),
    verify: bool = False,
    verify_layers: int | None = None,
    overwrite: bool = False,
    allow_unexpected: bool = False,
    allow_nonfinite: bool = False,
    progress: bool | None = None,
    template: str = "",
    log=print,
) -> ConversionResult:
    """Convert one checkpoint (see ``scripts/convert_checkpoint.py --help``); returns what was written.

    ``template`` (LLM kinds): the prompt template recorded with the LLM, ``""`` for the tokenizer's chat template
    (``vicuna`` without one), see :mod:`deemo_jax.convert.llm_tokenizer`.

    Raises ``converted.NonFiniteTensorError`` for the first tensor holding NaN/Inf (unless ``allow_nonfinite``:
    then every such tensor is listed in the manifest), ``CheckpointKeyError``, ``CheckpointFormatError``,
    ``OutputDirError``/``OSError``, ``ValueError`` for bad input and ``VerificationError``; nothing is left under
    ``output`` (nor its staging directory) when it raises.
    """
    if source not in KINDS:
        raise ValueError(f"--source {source!r}: choose one of {sorted(KINDS)}")
    kind = KINDS[source]
    check_template_option(template, kind.name, kind.llm)
    dtype_name = dtype or kind.default_dtype
    out_dtype = _dtype(dtype_name)
    input_path, output = Path(input_path), Path(output).expanduser().absolute()  # Orbax needs absolute paths
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory; remove it first")
    ensure_writable_dir(output.parent, what="the folder of --output")

    with open_source(kind, input_path) as reader:
        for note in reader.notes:
            log(f"note: {note}")
        plan, skipped = plan_conversion(kind, reader, input_path, overrides, allow_unexpected)
        for note in plan.notes:
            log(f"note: {note}")
        _log_skipped(skipped, log)
        hasher = _Hasher(reader.files)
        hasher.start()
        staging = Path(tempfile.mkdtemp(prefix=f"{output.name}.tmp-", dir=output.parent))
        try:
            tokenizer_files = _copy_tokenizer(plan, staging)
            llm = _llm_record(kind, plan, staging, tokenizer_files, template, log)
            stats = converted.write_params(
                reader, plan, staging / converted.PARAMS_DIR, out_dtype, progress=progress,
                allow_nonfinite=allow_nonfinite,
            )
            if stats.nonfinite:
                listed = ", ".join(f"{k} ({v['nan']} NaN, {v['inf']} Inf)" for k, v in stats.nonfinite.items())
                log(f"warning: {len(stats.nonfinite)} tensors with non-finite values kept (--allow-nonfinite): "
                    f"{listed}")
            log(
                f"wrote {len(stats.converted)} tensors, {stats.num_parameters:,} parameters, "
                f"{stats.bytes_written / 2**20:.1f} MiB ({dtype_name}) in {stats.seconds:.1f} s "
                f"({stats.bytes_read / 2**20 / max(stats.seconds, 1e-9):.1f} MB/s read); "
                f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
            )
            hasher.join()
            if hasher.error is not None:
                raise OSError(f"could not hash the source files: {hasher.error}")
            manifest = _manifest(kind, plan, stats, skipped, hasher.result, dtype_name, reader, tokenizer_files)
            manifest["nonfinite"] = {"allowed": allow_nonfinite, "tensors": stats.nonfinite}
            if llm is not None:
                manifest["llm"] = llm
            converted.write_manifest(staging, manifest)
            verification = None
            if verify:
                verification = verify_conversion(kind.name, staging, reader, plan, out_dtype, verify_layers, log)
                manifest["verification"] = verification
                converted.write_manifest(staging, manifest)
                if not verification["passed"]:
                    because = (
                        f" (expected: {len(stats.nonfinite)} source tensors hold NaN/Inf, kept by --allow-nonfinite)"
                        if stats.nonfinite else ""
                    )
                    raise VerificationError(
                        f"verification failed: max_abs_diff={verification['max_abs_diff']:.3g} > tolerance "
                        f"{verification['tolerance']:.3g}{because}; nothing was written to {output}; check the "
                        "mapping or re-download the source"
                    )
            _install(staging, output)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    chosen = f" (prompt template {manifest['llm']['template']['name']!r})" if "llm" in manifest else ""
    log(f"converted {kind.name} -> {output}{chosen}")
    return ConversionResult(output, manifest, stats, verification)


def _log_skipped(skipped: dict[str, str], log) -> None:
    """One line per reason: how many keys were skipped and which (previewed)."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in skipped.items():
        by_reason.setdefault(reason, []).append(key)
    for reason, keys in by_reason.items():
        keys = sorted(keys)
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
        level = "warning" if reason == UNEXPECTED_ALLOWED else "note"
        log(f"{level}: skipped {len(keys)} keys [{shown}]: {reason}")


def _copy_tokenizer(plan: Plan, staging: Path) -> list[str]:
    if plan.tokenizer_writer is not None:
        return plan.tokenizer_writer(staging / converted.TOKENIZER_DIR)
    if plan.tokenizer_dir is None:
        return []
    target = staging / converted.TOKENIZER_DIR
    target.mkdir()
    copied = []
    for name in TOKENIZER_FILES:
        if (plan.tokenizer_dir / name).exists():
            shutil.copy2(plan.tokenizer_dir / name, target / name)
            copied.append(name)
    return copied


def _llm_record(
    kind: Kind, plan: Plan, staging: Path, tokenizer_files: list[str], template: str, log
) -> dict | None:
    """The manifest's ``llm`` section of an LLM kind (None for the others); its notes join the plan's."""
    if not kind.llm:
        return None
    tokenizer_dir, notes = None, []
    if any(name in tokenizer_files for name in TOKENIZER_MODEL_FILES):
        tokenizer_dir = staging / converted.TOKENIZER_DIR
        notes = complete_sentencepiece_config(tokenizer_dir)
    elif tokenizer_files:
        notes = [f"neither of {list(TOKENIZER_MODEL_FILES)} among the tokenizer files {tokenizer_files}: the LLM is "
                 "recorded without a tokenizer"]
    record, warnings = build_llm_record(tokenizer_dir, template, plan.hf_config or {})
    for note in notes:
        log(f"note: {note}")
    for warning in warnings:
        log(f"warning: {warning}")
    plan.notes.extend(notes + warnings)
    log(describe(record, template))
    return record


def _manifest(
    kind: Kind,
    plan: Plan,
    stats: converted.WriteStats,
    skipped: dict[str, str],
    sources: list[dict],
    dtype_name: str,
    reader: TensorReader,
    tokenizer_files: list[str],
) -> dict:
    return {
        "format": converted.FORMAT,
        "format_version": converted.FORMAT_VERSION,
        "kind": kind.name,
        "deemo_jax_version": _version(),
        "created_unix": int(time.time()),
        "sources": sources,
        "source_notes": reader.notes,
        "source_info": plan.source_info,
        "dtype": dtype_name,
        "params": converted.PARAMS_DIR,
        "layout": "Orbax v1 PyTree checkpoint (partial saves, finalized); tree = {component: NNX pure dict}",
        "components": {
            name: {"module": c.module, "config": c.config_dict()} for name, c in plan.components.items()
        },
        "hf_config": plan.hf_config,
        "tokenizer": {"dir": converted.TOKENIZER_DIR, "files": tokenizer_files} if tokenizer_files else None,
        "num_parameters": stats.num_parameters,
        "bytes": stats.bytes_written,
        "converted_keys": stats.converted,
        "checked_keys": stats.checked,
        "skipped_keys": skipped,
        "notes": plan.notes,
        "verification": None,
    }


def _version() -> str:
    """The installed deemo-jax version, or the one in the checkout's pyproject.toml."""
    try:
        return version("deemo-jax")
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _install(staging: Path, output: Path) -> None:
    """Move the finished staging directory to ``output`` (replacing an old one only after it is complete)."""
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{output.name}.old-", dir=output.parent))
        old.rmdir()
        output.rename(old)
        staging.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(output)
