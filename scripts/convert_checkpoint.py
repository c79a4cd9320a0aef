#!/usr/bin/env python
"""Convert a released PyTorch checkpoint into an Orbax directory for deemo-jax.

    python scripts/convert_checkpoint.py --source KIND --input PATH --output DIR \
        [--dtype float32|bfloat16] [--verify] [--overwrite] [--allow-unexpected] [--allow-nonfinite]

Kinds: eva-vit-g, blip2-qformer, imagebind-audio, hf-llama, video-llama (see docs/convert.md and --help).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
