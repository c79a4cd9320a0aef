"""Training checkpoints: trainable parameters + optimizer state + step + Grain iterator state, via Orbax.

Layout (``LAYOUT_VERSION`` 1) of ``{workdir}/checkpoints/{step}/``: items ``trainable`` (the trainable
parameters as a pure nested dict keyed by module path, e.g. ``video_qformer/layer/0/attention/query/kernel``),
``opt_state`` (``nnx.Optimizer`` state as a pure dict: ``step`` and the Optax state, moments keyed like the
parameters), ``data_iter`` (one JSON per process, Grain's format) and ``meta`` (JSON: step, layout version,
model config, trainable rules, process count, and what the run was trained with: its prompt template record and
LLM identity, ``deemo_jax.train.identity``). Only what training changes is saved (the frozen encoders and
LLM come from their converted checkpoints), so a checkpoint of the 7B recipe is ~0.5 GB (params + 2 moments).

Saves are asynchronous; Orbax commits a step directory atomically, so a process killed mid-save leaves the
previous step as the latest complete checkpoint (unfinished temporaries are deleted on the next start).
Restores take abstract targets with shardings, so a run can resume on a different mesh; the stored tree is
compared with the target first and every difference is listed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from deemo_jax.convert.common import compare_shapes, mismatch_report

LAYOUT_VERSION = 1
ITEMS = ("trainable", "opt_state", "data_iter", "meta")


class CheckpointMismatchError(ValueError):
    """A training checkpoint whose tree does not fit the model/optimizer it is restored into."""


def _flat_paths(tree: Any) -> dict[str, tuple]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = tuple(getattr(leaf, "shape", ()))
    return out


def _tree(metadata: Any) -> Any:
    """The plain tree of an Orbax item metadata (newer Orbax wraps it in a ``TreeMetadata``)."""
    return getattr(metadata, "tree", metadata)


def _compare(item: str, stored: Any, target: Any, where: Path) -> None:
    missing, extra, shapes = compare_shapes(_flat_paths(stored), _flat_paths(target))
    report = mismatch_report(
        missing,
        extra,
        shapes,
        missing_label="missing from the checkpoint",
        unexpected_label="not in the model",
        expected_label="model",
        actual_label="stored",
        limit=6,
    )
    if report:
        raise CheckpointMismatchError(
            f"checkpoint {where} item {item!r} does not fit this run (same trainable rules and model config "
            "needed to resume; start a new workdir otherwise): " + report
        )


def check_layout(meta: dict, where: Path) -> None:
    """A checkpoint's ``meta`` item must be of the layout this version reads."""
    if meta.get("layout_version") != LAYOUT_VERSION:
        raise CheckpointMismatchError(
            f"checkpoint {where} has layout version {meta.get('layout_version')}, this deemo-jax reads "
            f"{LAYOUT_VERSION}; use the deemo-jax version that wrote it"
        )


def _handlers() -> dict:
    """Handlers per item, so metadata can be read before the first save/restore call names them."""
    return {
        "trainable": ocp.StandardCheckpointHandler(),
        "opt_state": ocp.StandardCheckpointHandler(),
        "data_iter": grain.checkpoint.CheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


class TrainCheckpointer:
    """Orbax ``CheckpointManager`` over the four items; every process calls every method (multi-host)."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable: nnx.State, opt_state: nnx.State, data_iter: Any, meta: dict) -> None:
        """Start an (async) save of ``step``; ``data_iter`` is a checkpointable Grain iterator."""
        meta = {**meta, "layout_version": LAYOUT_VERSION, "step": step}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(nnx.to_pure_dict(trainable)),
                opt_state=ocp.args.StandardSave(nnx.to_pure_dict(opt_state)),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(
        self, step: int, trainable: nnx.State, opt_state: nnx.State, shardings: tuple[Any, Any], data_iter: Any
    ) -> tuple[nnx.State, nnx.State, dict]:
        """(trainable, opt_state, meta) of ``step`` restored into the given states' structure and ``shardings``
        (trees like the states with a ``NamedSharding`` per leaf); ``data_iter`` is restored in place."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_layout(meta, self.directory / str(step))
        targets = {}
        for item, state, sh in (("trainable", trainable, shardings[0]), ("opt_state", opt_state, shardings[1])):
            target = nnx.to_pure_dict(
                jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sh)
            )
            stored = _tree(self.manager.item_metadata(step)[item])
            _compare(item, stored, target, self.directory / str(step))
            targets[item] = target
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(targets["trainable"]),
                opt_state=ocp.args.StandardRestore(targets["opt_state"]),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        out = []
        for item, state in (("trainable", trainable), ("opt_state", opt_state)):
            fresh = jax.tree.map(lambda x: x, state)
            nnx.replace_by_pure_dict(fresh, restored[item])
            out.append(fresh)
        return out[0], out[1], meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir).expanduser().absolute() / "checkpoints"


def read_meta(directory: str | Path, step: int | None = None) -> tuple[int, dict] | None:
    """``(step, meta)`` of checkpoint ``step`` (None = the latest finished one) in ``directory``, its layout
    checked; None when the directory holds no finished checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    with ocp.CheckpointManager(directory, item_names=ITEMS) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_layout(meta, directory / str(step))
    return step, meta


def restore_trainable_from_run(workdir: str | Path, abstract: dict) -> dict:
    """The components of ``abstract`` (pure dict of ShapeDtypeStructs with shardings) that the latest checkpoint
    of the run in ``workdir`` holds, restored into their shardings (stage hand-off); {} when none match."""
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory (not a deemo-jax training workdir)")
    with ocp.CheckpointManager(directory, item_handlers=_handlers()) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        stored = _tree(manager.item_metadata(step)["trainable"])
        subset = {name: tree for name, tree in abstract.items() if name in stored}
        if not subset:
            return {}
        _compare("trainable", {k: stored[k] for k in subset}, subset, directory / str(step))
        return manager.restore(
            step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore(subset, strict=False))
        )["trainable"]
