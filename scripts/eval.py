#!/usr/bin/env python
"""Evaluate a training run: emotion-recognition accuracy/F1 on a shard split, or the paper's Table 4 ablations.

    python scripts/eval.py --config=configs/eval.py --config.workdir=runs/deemo_mer
    python scripts/eval.py --config=configs/eval.py:ablations --config.workdir=runs/deemo_mer
    python scripts/eval.py --config=configs/eval.py:demo            # the `make demo` run (runs/demo)

See configs/eval.py and docs/eval.md. Exit status: 0 done, 2 bad config or missing input.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # Grain worker processes re-import __main__: nothing may run on import
    from deemo_jax.eval.cli import main

    sys.exit(main())
