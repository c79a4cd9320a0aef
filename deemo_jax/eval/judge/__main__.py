"""``python -m deemo_jax.eval.judge``: see docs/judge.md."""

import sys

from deemo_jax.eval.judge.cli import main

sys.exit(main())
