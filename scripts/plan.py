#!/usr/bin/env python
"""Will a training config fit a GPU? Per-device memory, FLOPs and step time, compiled on this machine's CPU.

    python scripts/plan.py --config=configs/instruct.py --devices 1 --gpu a100-80g
    python scripts/plan.py --config=configs/instruct.py --devices 8 --gpu h100-80g \
        --config.train.global_batch_size=8 --find-max-batch --json runs/plan.json

See docs/training.md ("Will it fit?"). Exit status: 0 fits, 2 does not fit (with a change that does) or bad
arguments/config.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    from deemo_jax.eval.plan import main

    sys.exit(main())
