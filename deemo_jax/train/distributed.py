"""Multi-process start-up: ``jax.distributed.initialize`` only when several processes are asked for.

Sources, first match wins:
1. the config: ``distributed.num_processes > 1`` with ``coordinator_address`` (``host:port``) and ``process_id``;
2. the environment: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``;
3. a cluster JAX detects itself: Slurm (``SLURM_NTASKS`` > 1) or Open MPI (``OMPI_COMM_WORLD_SIZE`` > 1).
A single process never initialises anything (no coordinator, no process group). Must run before JAX touches
a device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ml_collections import ConfigDict

from deemo_jax.train.config import ConfigError


def distributed_settings(cfg: ConfigDict, environ: Mapping[str, str] = os.environ) -> dict | None:
    """Keyword arguments for ``jax.distributed.initialize`` ({} = auto-detect), or None for one process."""
    d = cfg.distributed
    if d.num_processes > 1:
        if not d.coordinator_address or ":" not in d.coordinator_address:
            raise ConfigError(
                f"config.distributed.num_processes = {d.num_processes} needs config.distributed.coordinator_address "
                "= 'host:port' (the address of process 0)"
            )
        if not 0 <= d.process_id < d.num_processes:
            raise ConfigError(
                f"config.distributed.process_id = {d.process_id} must be in [0, {d.num_processes}); give each "
                "process its own id"
            )
        return dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes, process_id=d.process_id)
    count = environ.get("JAX_NUM_PROCESSES")
    if environ.get("JAX_COORDINATOR_ADDRESS") and count:
        try:
            num, pid = int(count), int(environ.get("JAX_PROCESS_ID", ""))
        except ValueError:
            raise ConfigError(
                "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES/JAX_PROCESS_ID are not integers; export both"
            ) from None
        if num > 1:
            return dict(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"], num_processes=num, process_id=pid)
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(environ.get(var, "1") or 1) > 1:
            return {}
    return None


def maybe_initialize(cfg: ConfigDict) -> bool:
    """Initialise ``jax.distributed`` when :func:`distributed_settings` asks for it; True if it did."""
    settings = distributed_settings(cfg)
    if settings is None:
        return False
    import jax  # here, not at the top: train/cli.py checks the config before JAX is imported (seconds)

    jax.distributed.initialize(**settings)
    return True
