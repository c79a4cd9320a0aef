"""Exit codes shared by every command (the table in docs/exit_codes.md is their documentation).

One scheme for all tools, so a pipeline script can tell "some items failed, read failures.jsonl" from "you
called it wrong" from "the data is bad" without parsing messages.
"""

from __future__ import annotations

OK = 0  # done; for batch commands every item succeeded or was already done
SOME_FAILED = 1  # batch: some items failed (listed in failures.jsonl); convert --verify above tolerance
USAGE = 2  # bad arguments or config, unwritable output folder, missing tool or model: nothing was done
BAD_DATA = 3  # the input data itself is bad (corrupt shard record, non-finite checkpoint tensor, ...)
NON_FINITE = 4  # training stopped on a NaN/Inf loss
PENDING = 5  # judge --collect: the provider's batch is still running; call again later
INTERRUPTED = 130  # Ctrl-C / SIGINT (128 + 2, the shell's convention)
