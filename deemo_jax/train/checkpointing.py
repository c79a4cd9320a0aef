"""Training checkpoints: trainable parameters + optimizer state + step + Grain iterator state, via Orbax.

Only what training changes is saved (the frozen encoders and LLM come from their converted checkpoints), so a
checkpoint of the 7B recipe is ~0.5 GB. Saves are asynchronous; Orbax commits a step directory atomically,
so a process killed mid-save leaves the previous step as the latest complete checkpoint. Restores take the
abstract target (with shardings), so a run can resume on a different mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

LAYOUT_VERSION = 1


class TrainCheckpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("trainable", "opt_state", "data_iter", "meta"), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable: Any, opt_state: Any, data_iter: Any, meta: dict) -> None:
        """Start an (async) save of ``step``; ``data_iter`` is a checkpointable Grain iterator."""
        meta = {**meta, "layout_version": LAYOUT_VERSION, "step": step}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(trainable),
                opt_state=ocp.args.StandardSave(opt_state),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_trainable: Any, abstract_opt_state: Any, data_iter: Any) -> tuple:
        """(trainable, opt_state, meta) of ``step``; ``data_iter`` is restored in place."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(abstract_trainable),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter),
                meta=ocp.args.JsonRestore(),
            ),
        )
        meta = restored["meta"]
        if meta.get("layout_version") != LAYOUT_VERSION:
            raise ValueError(
                f"checkpoint {self.directory}/{step} has layout version {meta.get('layout_version')}, "
                f"this deemo-jax reads {LAYOUT_VERSION}; use the deemo-jax version that wrote it"
            )
        return restored["trainable"], restored["opt_state"], meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, as Orbax restore targets."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

