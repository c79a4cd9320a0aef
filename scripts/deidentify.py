#!/usr/bin/env python
"""De-identify videos and audit them: the same command as ``python -m deemo_jax.deid`` (deemo_jax/deid/cli.py).

See docs/deid.md. Exit status: 0 all done, 1 some inputs failed (failures.jsonl), 2 bad arguments, unwritable
output folder, missing ffmpeg or detector, 130 interrupted.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.deid.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
