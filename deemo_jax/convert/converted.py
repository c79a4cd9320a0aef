"""Converted-checkpoint directories: streaming writer, manifest, and strict loading into NNX models.

On-disk layout of a converted directory ``OUT/``::

    OUT/manifest.json   written last; a directory without it is not a converted checkpoint (an interrupted run)
    OUT/params/         one Orbax (v1) PyTree checkpoint: {component: NNX pure dict}, e.g.
                        {"llama": {"embed_tokens": {"embedding": ...}, "layers": {0: {...}, ...}, ...}}
    OUT/tokenizer/      LLM kinds: hf-llama (the source's tokenizer files) and gguf (written by transformers)

An LLM's manifest has an ``llm`` section (family, prompt template, tokenizer; see
:mod:`deemo_jax.convert.llm_tokenizer`), read with :func:`llm_record`.

Components are named after the ``DeemoLlama`` attributes (``visual_encoder``, ``ln_vision``, ``image_qformer``,
``audio_encoder``, ``llama``, ``video_qformer``, ``video_frame_position_embedding``, ``llama_proj``,
``audio_qformer``, ``audio_position_embedding``, ``audio_llama_proj``).

Writing streams: tensors are converted one at a time into groups of about ``GROUP_BYTES`` that are appended to
the checkpoint with Orbax's partial save (``ocp.partial.save_async``; one group is written while the next is
converted) and merged by ``ocp.partial.finalize``, so memory holds about two groups, never the whole model.

Loading (:func:`load_converted`, :func:`restore_into`) checks the manifest kind/config against the target
model and the stored tree against the target's parameter tree (every path and shape), then restores with
Orbax into the target's dtypes and shardings (``jax.ShapeDtypeStruct`` leaves with ``sharding`` for an
abstract, sharded model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx
from tqdm import tqdm

from deemo_jax.convert.common import TensorRule, compare_shapes, linear_kernel, mismatch_report, set_path
from deemo_jax.convert.kinds import Plan, config_to_dict, structural_config
from deemo_jax.convert.readers import TensorReader
from deemo_jax.data.templates import PromptTemplate
from deemo_jax.files import write_atomic

FORMAT = "deemo-jax-converted"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
GROUP_BYTES = 512 * 2**20
PROGRESS_MIN_BYTES = 64 * 2**20


class ConvertedCheckpointError(ValueError):
    """A converted directory that is incomplete, or does not fit the model it is restored into."""


class NonFiniteTensorError(ValueError):
    """A source tensor holds NaN or Inf values (a damaged download); ``--allow-nonfinite`` converts anyway."""


NONFINITE_CHUNK = 2**22  # elements checked at a time: bounds the temporary boolean array to 4 MiB


def nonfinite_counts(value: np.ndarray) -> tuple[int, int]:
    """(NaN count, Inf count) of a floating-point array, in chunks; (0, 0) for integer arrays."""
    if not _is_float(value.dtype):
        return 0, 0
    flat = value.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.size, NONFINITE_CHUNK):
        chunk = flat[start : start + NONFINITE_CHUNK]
        if np.isfinite(chunk).all():
            continue
        nan += int(np.count_nonzero(np.isnan(chunk)))
        inf += int(np.count_nonzero(np.isinf(chunk)))
    return nan, inf


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class WriteStats:
    converted: dict[str, str] = field(default_factory=dict)  # torch key -> "component/path/in/tree"
    checked: list[str] = field(default_factory=list)  # read and validated, nothing stored (buffers)
    # torch key -> {"target", "nan", "inf", "values"} of tensors with NaN/Inf (kept with --allow-nonfinite)
    nonfinite: dict[str, dict] = field(default_factory=dict)
    bytes_read: int = 0
    bytes_written: int = 0
    num_parameters: int = 0
    seconds: float = 0.0


def path_str(path: Sequence[Any]) -> str:
    return "/".join(str(p) for p in path)


def _is_float(dtype: np.dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def write_params(
    reader: TensorReader,
    plan: Plan,
    params_dir: Path,
    dtype: Any,
    *,
    progress: bool | None = None,
    group_bytes: int | None = None,
    allow_nonfinite: bool = False,
) -> WriteStats:
    """Stream every tensor of ``plan.table`` from ``reader`` into an Orbax checkpoint at ``params_dir``.

    Floating-point tensors are cast to ``dtype``. ``progress=None`` shows a bar for inputs over 64 MiB;
    ``group_bytes`` (default ``GROUP_BYTES``) is the size of each partial save.
    Arrays are stored without compression (zstd costs ~2.5x the write time for ~20% less disk on weights).
    Every tensor is checked for NaN/Inf as it streams past: the first one that has any raises
    :class:`NonFiniteTensorError` naming it, unless ``allow_nonfinite`` (then they are listed in ``stats``).
    """
    keys = reader.reading_order(list(plan.table))
    total = sum(reader.infos[k].nbytes for k in keys)
    show = total >= PROGRESS_MIN_BYTES if progress is None else progress
    stats = WriteStats()
    start = time.perf_counter()
    ctx = ocp.Context()
    ctx.array.saving.use_compression = False
    with ctx, tqdm(total=total, unit="B", unit_scale=True, desc="converting", disable=not show, mininterval=1.0) as bar:
        try:
            group_bytes = GROUP_BYTES if group_bytes is None else group_bytes
            _write_groups(reader, plan, keys, params_dir, dtype, group_bytes, stats, bar, start, allow_nonfinite)
        finally:
            reader.release()
    stats.seconds = time.perf_counter() - start
    return stats


def transpose_2d(x: np.ndarray, block: int = 128) -> np.ndarray:
    """``np.ascontiguousarray(x.T)`` in cache-sized tiles: about 2x faster on large 2-byte matrices."""
    out = np.empty((x.shape[1], x.shape[0]), x.dtype)
    for i in range(0, x.shape[0], block):
        for j in range(0, x.shape[1], block):
            out[j : j + block, i : i + block] = x[i : i + block, j : j + block].T
    return out


def _transform(rule: TensorRule, value: np.ndarray) -> np.ndarray:
    if rule.transform is linear_kernel and value.ndim == 2:  # the bulk of every model: Linear weights
        return transpose_2d(value)
    return np.asarray(rule.transform(value))


def _check_finite(key: str, rule: TensorRule, value: np.ndarray, reader: TensorReader, stats: WriteStats,
                  allow: bool) -> None:
    nan, inf = nonfinite_counts(value)
    if not (nan or inf):
        return
    target = key if rule.target is None else ".".join(str(p) for p in rule.target)
    stats.nonfinite[key] = {"target": target, "nan": nan, "inf": inf, "values": int(value.size)}
    if not allow:
        raise NonFiniteTensorError(
            f"{target}: {nan} NaN, {inf} Inf of {value.size} values in {key} of {reader.infos[key].file}; "
            "the checkpoint is damaged: re-download it, or pass --allow-nonfinite"
        )


def _write_groups(reader, plan, keys, params_dir, dtype, group_bytes, stats, bar, start, allow_nonfinite) -> None:
    group: dict = {}
    group_size = 0
    pending = None
    try:
        for count, key in enumerate(keys, 1):
            rule = plan.table[key]
            value = reader.read(key)
            _check_finite(key, rule, value, reader, stats, allow_nonfinite)
            out = _transform(rule, value)
            stats.bytes_read += value.nbytes
            del value
            if rule.target is None:
                stats.checked.append(key)
            else:
                if _is_float(out.dtype):
                    out = out.astype(dtype, copy=False)
                set_path(group, rule.target, out)
                group_size += out.nbytes
                stats.bytes_written += out.nbytes
                stats.num_parameters += out.size
                stats.converted[key] = path_str(rule.target)
            del out
            bar.update(reader.infos[key].nbytes)
            bar.set_postfix_str(f"{count / max(time.perf_counter() - start, 1e-9):.1f} tensors/s", refresh=False)
            if group_size >= group_bytes:
                pending = _flush(params_dir, group, pending)
                group, group_size = {}, 0
        if group or pending is None:
            pending = _flush(params_dir, group, pending)
        pending.result()
        pending = None
        ocp.partial.finalize(params_dir)
    finally:
        if pending is not None:  # an error while a group was being written: let that write finish first
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass


def _flush(params_dir: Path, group: dict, pending: Any) -> Any:
    """Wait for the previous group, then start writing this one (memory: at most two groups)."""
    if pending is not None:
        pending.result()
    return ocp.partial.save_async(params_dir, group)


# --------------------------------------------------------------------------------------------- manifest
def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically (temporary file + fsync + rename)."""
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


REQUIRED_MANIFEST_FIELDS = {"format": str, "format_version": int, "kind": str, "components": dict}
RECONVERT = "re-run scripts/convert_checkpoint.py to convert the source again"


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a converted directory: the one reader of ``manifest.json``.

    Raises ``ConvertedCheckpointError`` with a one-line message (what is wrong, which file, what to do) when the
    directory or its manifest is missing, unreadable, not JSON, not a deemo-jax manifest, too new, or lacks
    ``params/``.
    """
    directory = Path(directory).expanduser().absolute()  # Orbax needs absolute paths
    path = directory / MANIFEST
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise ConvertedCheckpointError(
            f"{directory} {what}: expected a converted checkpoint directory; check the path or {RECONVERT}"
        )
    if not path.exists():
        raise ConvertedCheckpointError(
            f"{directory} has no {MANIFEST}: not a converted checkpoint, or a conversion that did not finish; "
            + RECONVERT
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        detail = " ".join(str(e).split())
        raise ConvertedCheckpointError(f"{path} is corrupt, not valid JSON ({detail}); {RECONVERT}") from None
    except OSError as e:
        raise ConvertedCheckpointError(
            f"cannot read {path} ({e.strerror or type(e).__name__}); fix its permissions or {RECONVERT}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ConvertedCheckpointError(
            f"{path} is not a {FORMAT} manifest (format={found!r}); point at a directory written by "
            f"scripts/convert_checkpoint.py or {RECONVERT}"
        )
    wrong = [k for k, t in REQUIRED_MANIFEST_FIELDS.items() if not isinstance(manifest.get(k), t)]
    if wrong:
        raise ConvertedCheckpointError(f"{path} is corrupt: {wrong} missing or of the wrong type; {RECONVERT}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ConvertedCheckpointError(
            f"{path} has format_version {manifest['format_version']}, newer than this deemo-jax reads "
            f"({FORMAT_VERSION}); upgrade deemo-jax"
        )
    if not (directory / manifest.get("params", PARAMS_DIR)).is_dir():
        raise ConvertedCheckpointError(f"{directory} has a manifest but no {PARAMS_DIR}/ directory; {RECONVERT}")
    return manifest


LLM_RECORD_KEYS = {"family", "template", "tokenizer"}


def llm_record(directory: str | Path) -> dict | None:
    """The ``llm`` section of a converted LLM's manifest: ``{"family", "template", "tokenizer"}`` (see
    :mod:`deemo_jax.convert.llm_tokenizer`); ``PromptTemplate.from_record(record["template"])`` gives the template.

    None when the checkpoint has none (another kind, or converted before templates were recorded). Raises
    ``ConvertedCheckpointError`` (one line) for a malformed section.
    """
    manifest = read_manifest(directory)
    record = manifest.get("llm")
    if record is None:
        return None
    path = Path(directory) / MANIFEST
    if not isinstance(record, dict) or set(record) != LLM_RECORD_KEYS:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ConvertedCheckpointError(
            f"{path} is corrupt: its llm section must have the keys {sorted(LLM_RECORD_KEYS)}, has {found}; {RECONVERT}"
        )
    try:
        PromptTemplate.from_record(record["template"])
    except (TypeError, ValueError) as e:
        raise ConvertedCheckpointError(
            f"{path} is corrupt: llm.template is not a prompt template ({e}); {RECONVERT}"
        ) from None
    if record["tokenizer"] is not None and not isinstance(record["tokenizer"], dict):
        raise ConvertedCheckpointError(f"{path} is corrupt: llm.tokenizer must be a map or null; {RECONVERT}")
    return record


# ---------------------------------------------------------------------------------------------- loading
def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def stored_tree(directory: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``"component/path/to/leaf" -> (shape, dtype)`` of the stored parameters (metadata only)."""
    directory = Path(directory).expanduser().absolute()  # Orbax needs absolute paths
    manifest = read_manifest(directory)
    meta = ocp.metadata(directory / manifest.get("params", PARAMS_DIR)).metadata
    return {path_str(k): (tuple(v.shape), np.dtype(v.dtype)) for k, v in _flatten(meta).items()}


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract_leaf(leaf: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = _default_sharding()
    return jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding)


def load_params(directory: str | Path, abstract: Mapping, *, partial: bool = False) -> dict:
    """Low level: restore ``{component: subtree}`` as laid out in the abstract tree (``partial``: a subset).

    The stored tree is checked against ``abstract`` first (every path and shape; with ``partial`` only the
    requested paths must exist). Leaves come back as ``jax.Array`` in the abstract dtype and sharding.
    """
    directory = Path(directory).expanduser().absolute()  # Orbax needs absolute paths
    manifest = read_manifest(directory)
    stored = stored_tree(directory)
    wanted = {path_str(k): tuple(v.shape) for k, v in _flatten(abstract).items()}
    roots = tuple(str(name) + "/" for name in abstract)
    in_scope = {k: v[0] for k, v in stored.items() if k.startswith(roots)}  # other components are not restored
    missing, unexpected, mismatched = compare_shapes(in_scope, wanted)
    if partial:
        unexpected = []
    report = mismatch_report(
        missing,
        unexpected,
        mismatched,
        missing_label="target parameters not in the checkpoint",
        unexpected_label="stored parameters the target lacks",
        expected_label="target",
        actual_label="stored",
        limit=8,
    )
    if report:
        raise ConvertedCheckpointError(f"{directory} ({manifest['kind']}) does not fit the target: {report}")
    abstract = jax.tree.map(_abstract_leaf, abstract)
    ctx = ocp.Context()
    ctx.pytree.loading.partial_load = True  # strictness is checked above, per requested component
    with ctx:
        return ocp.load(directory / manifest.get("params", PARAMS_DIR), abstract)


# DeemoLlama attribute -> how its config is found in a DeemoLlamaConfig.
def deemo_component_config(config: Any, component: str) -> dict | None:
    """The manifest-style config of one component of a ``DeemoLlamaConfig``; None if the model lacks it."""
    c = config
    simple = {
        "visual_encoder": lambda: config_to_dict(c.vit),
        "image_qformer": lambda: config_to_dict(c.image_qformer),
        "video_qformer": lambda: config_to_dict(c.video_qformer),
        "audio_qformer": lambda: config_to_dict(c.audio_qformer),
        "audio_encoder": lambda: config_to_dict(c.audio_encoder),
        "llama": lambda: config_to_dict(c.llm),
        "ln_vision": lambda: {"num_features": c.vit.width, "eps": c.ln_vision_eps},
        "video_frame_position_embedding": lambda: {
            "num_embeddings": c.max_frame_positions, "features": c.video_qformer.encoder_width
        },
        "llama_proj": lambda: {"in_features": c.video_qformer.hidden_size, "out_features": c.llm.hidden_size},
        "audio_position_embedding": lambda: {
            "num_embeddings": c.max_audio_clips, "features": c.audio_qformer.encoder_width
        },
        "audio_llama_proj": lambda: {"in_features": c.audio_qformer.hidden_size, "out_features": c.llm.hidden_size},
    }
    if component not in simple:
        return None
    try:
        return simple[component]()
    except AttributeError:  # the branch is off (config None)
        return None


def _config_problems(name: str, stored: Mapping, target: Mapping) -> list[str]:
    s, t = structural_config(stored), structural_config(target)
    return [
        f"{name}.{k}: checkpoint {s[k]!r}, model {t[k]!r}"
        for k in sorted(set(s) & set(t))
        if s[k] != t[k]
    ]


def _target_view(target: Any) -> tuple[dict, Any, str]:
    """(pure dict of the target's params, its config or None, 'module' | 'state' | 'dict')."""
    if isinstance(target, nnx.Module):
        return nnx.to_pure_dict(nnx.state(target, nnx.Param)), getattr(target, "config", None), "module"
    if isinstance(target, nnx.State):
        return nnx.to_pure_dict(target), None, "state"
    if isinstance(target, Mapping):
        return dict(target), None, "dict"
    raise TypeError(
        f"load_converted: target must be an nnx.Module, an nnx.State or a pure dict, got {type(target).__name__}"
    )


def _placement(
    manifest: Mapping, pure: Mapping, component: str | Sequence[str] | None
) -> dict[str, tuple[str, ...]]:
    """Checkpoint component -> path of its subtree in the target (() when the target is the component)."""
    names = list(manifest["components"])
    if isinstance(component, str):
        if component not in names:
            raise ConvertedCheckpointError(f"component {component!r} is not in this checkpoint; it holds {names}")
        return {component: (component,) if component in pure else ()}
    if component is not None:
        absent = [c for c in component if c not in names]
        if absent:
            raise ConvertedCheckpointError(f"components {absent} are not in this checkpoint; it holds {names}")
        lacking = [c for c in component if c not in pure]
        if lacking:
            raise ConvertedCheckpointError(f"the target has no {lacking} (its top level: {sorted(map(str, pure))})")
        return {c: (c,) for c in component}
    if all(n in pure for n in names):
        return {n: (n,) for n in names}
    if len(names) == 1:
        return {names[0]: ()}
    present = [n for n in names if n in pure]
    raise ConvertedCheckpointError(
        f"this {manifest['kind']} checkpoint holds {names}; the target has "
        + (f"only {present} of them" if present else "none of them at its top level")
        + ": pass component= (one name, to restore into that component's module, or a list, to restore a subset)"
    )


def load_converted(
    directory: str | Path,
    target: Any,
    *,
    component: str | Sequence[str] | None = None,
    config: Any = None,
) -> Any:
    """Restore a converted checkpoint into ``target`` and return the target's updated parameters.

    Args:
      directory: a directory written by ``scripts/convert_checkpoint.py``.
      target: a ``DeemoLlama`` (checkpoint components go to the attributes of the same name), a component
        module (``EvaViT``, ``QFormer``, ``Llama``, ...; for a multi-component checkpoint name it with
        ``component``), an ``nnx.State`` of either (concrete or abstract: ``jax.ShapeDtypeStruct`` leaves with
        ``sharding`` are restored straight into that sharding), or a pure dict of arrays / ShapeDtypeStructs.
        Modules are updated in place.
      component: one checkpoint component or a list of them (default: all).
      config: the model config to check the manifest against when ``target`` is a State or dict (a
        ``DeemoLlamaConfig`` or a component config); modules bring their own ``config``.
    Returns:
      The updated ``nnx.State`` (module and State targets; a State target is updated in place) or pure dict.
    Raises:
      ConvertedCheckpointError: no/foreign manifest, config mismatch, or tree/shape mismatch (all listed).
    """
    directory = Path(directory).expanduser().absolute()  # Orbax needs absolute paths
    manifest = read_manifest(directory)
    pure, own_config, target_type = _target_view(target)
    placement = _placement(manifest, pure, component)
    config = own_config if config is None else config
    if config is not None:
        problems = []
        for name, path in placement.items():
            if path:
                expected = deemo_component_config(config, name) if hasattr(config, "llm") else None
            else:
                expected = config_to_dict(config) if not isinstance(config, Mapping) else dict(config)
            if expected is not None:
                problems += _config_problems(name, manifest["components"][name]["config"], expected)
        if problems:
            raise ConvertedCheckpointError(
                f"{directory} ({manifest['kind']}) was converted for another model config: " + "; ".join(problems)
            )

    def subtree(path: tuple[str, ...]) -> Any:
        node = pure
        for part in path:
            node = node[part]
        return node

    abstract = {}
    for name, path in placement.items():
        node = subtree(path)
        if not isinstance(node, Mapping):
            raise ConvertedCheckpointError(f"target entry {path_str(path) or '<root>'} is a leaf, expected a module")
        abstract[name] = node
    restored = load_params(directory, abstract)
    for name, path in placement.items():
        if path:
            set_path(pure, path, restored[name])
        else:
            pure = restored[name]
    if target_type == "dict":
        return pure
    state = nnx.state(target, nnx.Param) if target_type == "module" else target
    nnx.replace_by_pure_dict(state, pure)
    if target_type == "module":
        nnx.update(target, state)
    return state


def restore_into(module: nnx.Module, directory: str | Path, *, component: str | Sequence[str] | None = None) -> dict:
    """Load a converted checkpoint into ``module`` in place (see :func:`load_converted`); returns the manifest."""
    if not isinstance(module, nnx.Module):
        raise TypeError(f"restore_into expects an nnx.Module, got {type(module).__name__}; use load_converted")
    load_converted(directory, module, component=component)
    return read_manifest(directory)
