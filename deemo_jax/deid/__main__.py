"""``python -m deemo_jax.deid``: the de-identification command (:mod:`deemo_jax.deid.cli`)."""

import sys

from .cli import main

sys.exit(main())
