"""Command-line parsing of ``--config=configs/X.py[:variant]`` plus ``--config.a.b=v`` overrides.

Shared by ``scripts/train.py`` and ``scripts/eval.py`` (plus small argparse helpers for the other scripts).
The config dicts are locked, and every problem (no config, a missing file, an unknown key, a bad value)
becomes one exception whose message is a single line saying what and how to fix, raised before anything is
compiled.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_flags


def one_line(error: BaseException) -> str:
    """The error as one line; for a config file that raised, its final ``Type: message`` line."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        text = text.strip().splitlines()[-1]
    return " ".join(text.split()) or type(error).__name__


def _config_file(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_key_message(argv: Sequence[str], key: str, config: ConfigDict | None) -> str:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--config.") and key in name[len("--config."):].split("."):
            parent = name[len("--config."):].rsplit(".", 1)
            node = config
            for part in (parent[0].split(".") if len(parent) == 2 else []):
                node = node.get(part) if isinstance(node, ConfigDict) else None
            known = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            return f"unknown config key in {arg!r}; keys there: {known} (the config is locked: fix the spelling)"
    return f"unknown config key {key!r} (the config is locked: fix the spelling)"


def _load_config_file(path: str) -> ConfigDict | None:
    """``get_config(variant)`` of ``file.py[:variant]`` without overrides (to list the known keys)."""
    file, _, variant = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_deemo_config_file", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant or None)
    except Exception:  # only used to improve an error message
        return None


def parse_config(argv: Sequence[str], *, usage: str, error: type[Exception] = ValueError) -> ConfigDict:
    """The locked ConfigDict named by ``--config`` with the command-line overrides applied.

    Raises ``error`` with a one-line message (``usage`` appended where it helps).
    """
    path = _config_file(argv)
    if path is None:
        raise error(f"no --config given; {usage}")
    if not Path(path.split(":", 1)[0]).is_file():
        raise error(f"config file {path.split(':', 1)[0]!r} does not exist; {usage}")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file (configs/*.py[:variant])",
                                    flag_values=values, lock_config=True)
    saved, sys.argv = sys.argv, list(argv)  # config_flags reads the overrides from sys.argv
    try:
        values(list(argv))
    except (KeyError, AttributeError) as e:  # a locked ConfigDict reports an unknown key like this
        key = str(e.args[0] if e.args else "").strip("\"'")
        raise error(_unknown_key_message(argv, key, _load_config_file(path))) from None
    except flags.Error as e:
        raise error(f"{one_line(e)} ({usage})") from None
    except (TypeError, ValueError) as e:
        raise error(f"bad --config override: {one_line(e)}") from None
    finally:
        sys.argv = saved
    return values.config


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def arg_values(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The parsed values of the options ``names`` as keyword arguments of the same names."""
    return {name: getattr(args, name) for name in names}
