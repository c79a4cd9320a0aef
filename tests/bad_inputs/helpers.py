"""Shared by the bad-input corpus: run a command's ``main(argv)`` in-process and check its error line.

Every case asserts the documented exit code (``deemo_jax.exit_codes``), that the error is one line naming what
and where, with a way to fix it, and (for batches) that the good items were processed and the counts reconcile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

# Words by which a message tells the user what to do about it.
FIX_WORDS = ("re-run", "rerun", "run ", "use ", "pass ", "set ", "choose", "check", "fix", "remove", "delete",
             "give", "install", "convert", "add ", "rename", "move", "drop", "see ", "try", "allow", "provide",
             "make ", "point", "restore", "re-convert", "re-build", "rebuild", "replace", "start", "create",
             "build ", "lower", "raise", "enable", "wait", "let ")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        """Non-empty stderr lines that are not progress bars or log chatter."""
        return [line for line in self.err.splitlines() if line.strip() and "it/s]" not in line and "%|" not in line]


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str],
             capsys: pytest.CaptureFixture) -> Result:
    """Call ``main(argv)`` and capture its exit code and output (a ``SystemExit`` counts as a return)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors
        code = e.code if isinstance(e.code, int) else 2
    captured = capsys.readouterr()
    return Result(int(code or 0), captured.out, captured.err)


def assert_one_line_error(result: Result, *fragments: str, code: int) -> str:
    """The run exited with ``code`` and printed a one-line error holding every fragment and a fix hint."""
    assert result.code == code, f"exit {result.code}, expected {code}; stderr:\n{result.err}\nstdout:\n{result.out}"
    assert "Traceback" not in result.err, result.err
    matching = [line for line in result.error_lines if all(f.lower() in line.lower() for f in fragments)]
    assert matching, f"no stderr line contains {fragments}; stderr:\n{result.err}"
    line = matching[0]
    assert any(w in line.lower() for w in FIX_WORDS), f"the message says no fix: {line}"
    return line
