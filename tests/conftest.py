"""Shared test helpers."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


def _numpy_init(factory: Callable[[], nnx.Module], seed: int = 0, scale: float = 0.05) -> nnx.Module:
    """Build ``factory()``'s module with N(0, scale) parameters drawn by numpy.

    Tracing the constructor with ``nnx.eval_shape`` and filling it from numpy avoids compiling one XLA program
    per initializer shape, which costs tens of seconds for a whole DeemoLlama on a busy 2-core machine.
    """
    abstract = nnx.eval_shape(factory)
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda s: jnp.asarray((rng.normal(size=s.shape) * scale).astype(s.dtype)), state)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="session")
def numpy_init():
    return _numpy_init
