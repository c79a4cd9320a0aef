"""``python -m deemo_jax.data.demo``: the demo corpus command (:mod:`.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
