"""``scripts/train.py``: parse ``--config=configs/X.py[:variant]`` plus ``--config.a.b=v`` overrides, validate,
start ``jax.distributed`` when asked, train.

With ``--config.dry_run=True`` it plans the exact run (deemo_jax/train/plan.py), prints the plan and exits 0 if
it fits; on a GPU/TPU the same check runs before anything is allocated (``train.fit_check``).

Exit status (``deemo_jax.exit_codes``, docs/exit_codes.md): 0 done (or a dry run that fits); 2 bad config or
command line, or a run that will not fit (naming the change that fits) (one line on
stderr saying what and how to fix, printed before anything is compiled or any folder is created), also a resume
with another prompt template or LLM than the checkpoints record (naming both); 3 a corrupt
shard record (the message names the shard file and record index; ``data.skip_corrupt_records=True`` skips and
counts them instead); 4 training stopped on a non-finite loss/gradient (the message names the step and the
modules; the last good checkpoint is kept); 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from ml_collections import ConfigDict

from deemo_jax import cli, exit_codes
from deemo_jax.data.shards import CorruptRecordError
from deemo_jax.train.config import ConfigError, check_config, check_mesh

USAGE = "usage: python scripts/train.py --config=configs/instruct.py[:variant] [--config.KEY=VALUE ...]"


def parse_config(argv: Sequence[str]) -> ConfigDict:
    """The locked training ConfigDict of ``argv`` (``ConfigError`` with one line on any problem)."""
    return cli.parse_config(argv, usage=USAGE, error=ConfigError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        cfg = parse_config(argv)
        check_config(cfg)
        # JAX and the trainer are imported only after the config is found good: a bad config is reported in
        # well under a second, before JAX (seconds) loads.
        from deemo_jax.train.distributed import maybe_initialize

        maybe_initialize(cfg)
        import jax

        check_mesh(cfg, jax.device_count(), jax.process_count())
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return exit_codes.USAGE

    import jax

    from deemo_jax.train.plan import WillNotFitError, check_run, format_plan
    from deemo_jax.train.runs import setup_compilation_cache
    from deemo_jax.train.trainer import NonFiniteError, train

    logging.basicConfig(
        level=logging.INFO if jax.process_index() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True,
    )
    for noisy in ("absl", "orbax", "jax._src", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if cfg.dry_run or (cfg.train.fit_check and jax.devices()[0].platform != "cpu"):
            setup_compilation_cache(cfg.train.compilation_cache_dir)  # the run reuses the step compiled here
            plan = check_run(cfg)
            if cfg.dry_run:
                print(format_plan(plan))
                return exit_codes.OK
            logging.getLogger(__name__).info("fit check: %.2f GiB of %.2f GiB per device", plan.total / 2**30,
                                             plan.budget / 2**30)
        result = train(cfg)
    except WillNotFitError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return exit_codes.USAGE
    except ConfigError as e:
        print(f"train.py: config error: {e}", file=sys.stderr)
        return exit_codes.USAGE
    except CorruptRecordError as e:
        print(f"train.py: bad data: {cli.one_line(e)}", file=sys.stderr)
        return exit_codes.BAD_DATA
    except NonFiniteError as e:
        print(f"train.py: {e}", file=sys.stderr)
        return exit_codes.NON_FINITE
    except KeyboardInterrupt:
        print("train.py: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return exit_codes.INTERRUPTED
    if jax.process_index() == 0:
        loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
        print(f"done: {result.step} steps in {result.workdir}, final loss {loss}, wall time {result.wall_s:.0f} s")
        if result.corrupt_records:
            print(f"skipped {len(result.corrupt_records)} corrupt shard record(s) (data.skip_corrupt_records): "
                  f"{', '.join(result.corrupt_records[:5])}{' ...' if len(result.corrupt_records) > 5 else ''}")
        if result.eval_metrics is not None:
            m = result.eval_metrics
            print(
                f"eval ({cfg.eval.split}): accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}, "
                f"macro F1 {m['macro_f1']:.4f}, unparseable {m['n_unparseable']}"
            )
    return exit_codes.OK
