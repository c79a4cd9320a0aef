#!/usr/bin/env python
"""Train DEEMO-LLaMA (instruction tuning or caption pre-training) on any mesh, resuming automatically.

    python scripts/train.py --config=configs/instruct.py:demo                 # the demo, a few minutes on CPU
    python scripts/train.py --config=configs/instruct.py --config.workdir=runs/x --config.checkpoints.llm=...
    python scripts/train.py --config=configs/pretrain.py --config.data.shard_dir=shards/webvid

See docs/training.md. Exit status: 0 done, 1 stopped on NaN/Inf, 2 bad config.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # Grain worker processes re-import __main__: nothing may run on import
    from deemo_jax.train.cli import main

    sys.exit(main())
