#!/usr/bin/env python
"""Generate the bundled demo corpus (deemo_jax.data.demo.cli; also ``python -m deemo_jax.data.demo``).

    python scripts/make_demo_data.py --output demo_data [--num-clips 200] [--seed 0] [--workers 2] [--force]
        [--keep-raw] [--quiet]

See docs/demo_data.md. Exit status: 0 corpus complete, 1 no clip could be made, 2 bad arguments, output
directory, or missing espeak-ng/ffmpeg.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.data.demo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
