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

from ml_collections import ConfigDict

from deemo_jax import cli
from deemo_jax.train.config import ConfigError, check_config, check_mesh

EXIT_OK, EXIT_NON_FINITE, EXIT_CONFIG = 0, 1, 2
USAGE = "usage: python scripts/train.py --config=configs/instruct.py[:variant] [--config.KEY=VALUE ...]"


def parse_config(argv: Sequence[str]) -> ConfigDict:
    """The locked training ConfigDict of ``argv`` (``ConfigError`` with one line on any problem)."""
    return cli.parse_config(argv, usage=USAGE, error=ConfigError)


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
