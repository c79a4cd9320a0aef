"""Small file-system jobs every package needs: atomic writes and writable output folders."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _default_mode() -> int:
    """What ``open()`` would give a new file (0o666 less the umask); ``mkstemp`` alone gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _default_mode()


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[IO], None]) -> Path:
    """Write ``content`` (text, bytes, or a function that writes to the open file) to ``path`` atomically.

    The data goes to a temporary file in the same folder, is fsynced, then renamed over ``path``: a crash
    leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = isinstance(content, bytes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (with a final newline), written atomically."""
    return write_atomic(path, json.dumps(data, indent=indent) + "\n")


class OutputDirError(OSError):
    """An output folder that cannot be created or written; the message says which and how to fix it."""


def ensure_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it writable by creating and removing a probe file.

    Raises :class:`OutputDirError` with a one-line message (a path below a regular file, no permission, a
    read-only file system) before any work starts.
    """
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputDirError(
                f"{what} {path}: {parent} is a regular file, not a folder; choose another path or move that file"
            )
        if parent.exists():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputDirError(
            f"{what} {path} is not writable ({reason}); fix its permissions or choose another folder"
        ) from None
    return path
