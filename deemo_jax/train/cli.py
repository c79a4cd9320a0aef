"""``scripts/train.py``: parse ``--config=configs/X.py[:variant]`` plus ``--config.a.b=v`` overrides, validate,
start ``jax.distributed`` when asked, train.

Exit status: 0 done; 2 bad config or command line (one line on stderr saying what and how to fix, printed
before anything is compiled); 1 training stopped on a non-finite loss/gradient (the message names the step and
the modules; the last good checkpoint is kept).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags
from ml_collections import ConfigDict, config_flags

from deemo_jax.train.config import ConfigError, check_config, check_mesh

EXIT_OK, EXIT_NON_FINITE, EXIT_CONFIG = 0, 1, 2
USAGE = "usage: python scripts/train.py --config=configs/instruct.py[:variant] [--config.KEY=VALUE ...]"


def _one_line(error: BaseException) -> str:
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
    import importlib.util

    file, _, variant = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_deemo_train_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(variant or None)
    except Exception:  # only used to improve an error message
        return None


def parse_config(argv: Sequence[str]) -> ConfigDict:
    """The locked ConfigDict named by ``--config`` with the command-line overrides applied."""
    path = _config_file(argv)
    if path is None:
        raise ConfigError(f"no --config given; {USAGE}")
    if not Path(path.split(":", 1)[0]).is_file():
        raise ConfigError(f"config file {path.split(':', 1)[0]!r} does not exist; {USAGE}")
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:variant])",
                                    flag_values=values, lock_config=True)
    saved, sys.argv = sys.argv, list(argv)  # config_flags reads the overrides from sys.argv
    try:
        values(list(argv))
    except (KeyError, AttributeError) as e:  # a locked ConfigDict reports an unknown key like this
        key = str(e.args[0] if e.args else "").strip("\"'")
        raise ConfigError(_unknown_key_message(argv, key, _load_config_file(path))) from None
    except flags.Error as e:
        raise ConfigError(f"{_one_line(e)} ({USAGE})") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad --config override: {_one_line(e)}") from None
    finally:
        sys.argv = saved
    return values.config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        cfg = parse_config(argv)
        check_config(cfg)
        from deemo_jax.train.distributed import maybe_initialize

        maybe_initialize(cfg)
        import jax

        check_mesh(cfg, jax.device_count(), jax.process_count())
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG

    import jax

    from deemo_jax.train.trainer import NonFiniteError, train

    logging.basicConfig(
        level=logging.INFO if jax.process_index() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True,
    )
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = train(cfg)
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except NonFiniteError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    if jax.process_index() == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"done: {result.step} steps in {result.workdir}, final loss {loss}, wall time {result.wall_s:.0f} s")
        if result.eval_metrics is not None:
            m = result.eval_metrics
            print(
                f"eval ({cfg.eval.split}): accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}, "
                f"macro F1 {m['macro_f1']:.4f}, unparseable {m['n_unparseable']}"
            )
    return EXIT_OK
