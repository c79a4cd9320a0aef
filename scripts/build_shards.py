#!/usr/bin/env python
"""Build ArrayRecord training shards from a JSONL manifest of de-identified clips (deemo_jax.data.cli).

    python scripts/build_shards.py --manifest clips.jsonl --output shards/ [--labels positive,negative]
        [--records-per-shard 64] [--workers N] [--already-deidentified]

See docs/shards.md. Exit status: 0 all rows written, 1 some rows failed (failures.jsonl), 2 bad arguments or
output folder, 3 empty manifest, 130 interrupted.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.data.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
