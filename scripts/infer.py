#!/usr/bin/env python
"""One video in, the emotion and its reasoning out: de-identify, sample frames and audio, run the model.

    python scripts/infer.py clip.mp4 --transcript "We played really well today."   # the `make demo` model
    python scripts/infer.py clip.mp4 --transcript-file words.txt --workdir runs/deemo_mer --start 3.5 --end 9
    python scripts/infer.py clip.mp4 --json

The model never sees the raw video: unless its de-identification sidecar is valid and passed, it is de-identified
first (face blur, McAdams voice, audit; see docs/eval.md). --transcript takes the words, --transcript-file a file.
Exit status: 0 done, 1 the video could not be read or failed the privacy audit, 2 bad arguments, no model or an
unwritable folder, 130 interrupted.
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":
    from deemo_jax.eval.infer import main

    sys.exit(main())
