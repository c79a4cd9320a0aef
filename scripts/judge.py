#!/usr/bin/env python
"""Score emotion-reasoning predictions with a GPT judge; see docs/judge.md (same as python -m deemo_jax.eval.judge).

OPENAI_API_KEY=... python scripts/judge.py --predictions PRED.jsonl --output DIR
    [--model gpt-4o-mini-2024-07-18] [--base-url URL] [--concurrency 8] [--max-retries 5] [--timeout 60]
    [--batch-api | --collect] [--yes] [--dry-run] [--limit N]

Exit status (deemo_jax/exit_codes.py): 0 done, 1 some samples failed (see failures.jsonl), 2 bad arguments or
input, unwritable output folder, declined at the prompt or a fatal endpoint error (bad key, unknown model),
5 the collected batch is still running, 130 interrupted (rerun the same command to resume).
"""

import sys
from pathlib import Path

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.eval.judge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
