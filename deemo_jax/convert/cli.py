"""Command line of ``scripts/convert_checkpoint.py`` (importable so tests can call :func:`main` in process).

Exit codes (``deemo_jax.exit_codes``), each failure with a one-line message (``--debug`` shows the traceback)
and nothing written under ``--output``:
0 converted (and verified, with ``--verify``); 1 verification failed; 2 usage: bad arguments (an unknown
``--template``), an input that is not a checkpoint of this kind (missing/unexpected/mis-shaped keys, wrong kind,
refused pickle), an LLM tokenizer that does not load or a template that does not fit it, an output that exists
or cannot be written, torch missing; 3 bad data: the checkpoint is damaged (NaN/Inf values, truncated or
corrupt file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from deemo_jax import exit_codes
from deemo_jax.cli import arg_values
from deemo_jax.convert.kinds import KINDS
from deemo_jax.data.templates import NAMES


def _parser() -> argparse.ArgumentParser:
    kinds = "\n".join(
        f"  {k.name:16s} {k.summary}\n  {'':16s} input: {k.input}; default dtype {k.default_dtype}"
        for k in KINDS.values()
    )
    p = argparse.ArgumentParser(
        prog="convert_checkpoint.py",
        description="Convert a released PyTorch checkpoint into an Orbax directory for deemo-jax.",
        epilog=f"kinds:\n{kinds}\n\nSee docs/convert.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=sorted(KINDS), help="what the input is")
    p.add_argument("--input", required=True, help="checkpoint file, or the Hugging Face directory for hf-llama")
    p.add_argument("--output", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="storage dtype (default: per kind)")
    p.add_argument("--verify", action="store_true", help="reload the output and compare with the PyTorch reference")
    p.add_argument("--verify-layers", type=int, help="layers to verify for large models (default 2 over 300M params)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--allow-unexpected", action="store_true", help="skip unknown extra keys instead of failing")
    p.add_argument(
        "--allow-nonfinite", action="store_true",
        help="convert tensors holding NaN/Inf instead of failing (they are listed in the manifest)",
    )
    p.add_argument(
        "--template", default="", metavar="NAME",
        help="LLM kinds: the prompt template recorded with the LLM, one of " + ", ".join(NAMES)
        + " (default: the tokenizer's chat template, else vicuna)",
    )
    p.add_argument(
        "--override", action="append", default=[], metavar="COMPONENT.FIELD=VALUE",
        help="set a config field the shapes do not determine, e.g. image_qformer.num_heads=12 (repeatable)",
    )
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show a bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show a bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Imported here, not at the top: the pipeline pulls in Orbax (~1.5 s), which --help and usage errors skip.
    from deemo_jax.convert.common import CheckpointKeyError
    from deemo_jax.convert.converted import ConvertedCheckpointError, NonFiniteTensorError
    from deemo_jax.convert.pipeline import VerificationError, convert_checkpoint
    from deemo_jax.convert.readers import CheckpointFormatError, DamagedCheckpointError

    try:
        convert_checkpoint(
            args.source,
            args.input,
            args.output,
            overrides=args.override,
            **arg_values(
                args, "dtype", "verify", "verify_layers", "overwrite", "allow_unexpected", "allow_nonfinite",
                "progress", "template",
            ),
        )
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written to --output (its staging folder was removed)", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except VerificationError as e:
        _report(e, args.debug)
        return exit_codes.SOME_FAILED
    except (NonFiniteTensorError, DamagedCheckpointError) as e:
        _report(e, args.debug)
        return exit_codes.BAD_DATA
    except (
        CheckpointKeyError,
        CheckpointFormatError,
        ConvertedCheckpointError,
        OSError,
        ImportError,
        ValueError,
    ) as e:
        _report(e, args.debug)
        return exit_codes.USAGE
    return exit_codes.OK


def _report(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
    message = " ".join(str(error).split())  # one line
    print(f"error: {message}", file=sys.stderr)
