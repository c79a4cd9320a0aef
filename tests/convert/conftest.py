"""Session fixtures of the conversion tests: one small source checkpoint per kind, converted once with --verify."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from deemo_jax.convert.cli import main
from deemo_jax.models.deemo_llama import DeemoLlamaConfig

_TINY = DeemoLlamaConfig.tiny()
# kind -> (source file/dir name, extra CLI arguments: head counts are not in the shapes of a tiny model)
KIND_ARGS = {
    # The tiny file has depth + 1 blocks like the real one; the depth override makes the extra block the skipped one
    # (the real file needs no override: LAVIS's 39 blocks is the cap).
    "eva-vit-g": (
        "eva_vit_g.pth",
        ["--override", f"visual_encoder.num_heads={_TINY.vit.num_heads}",
         "--override", f"visual_encoder.depth={_TINY.vit.depth}"],
    ),
    "blip2-qformer": (
        "blip2_pretrained_flant5xxl.pth", ["--override", f"image_qformer.num_heads={_TINY.image_qformer.num_heads}"]
    ),
    "imagebind-audio": (
        "imagebind_huge.pth", ["--override", f"audio_encoder.num_heads={_TINY.audio_encoder.num_heads}"]
    ),
    "hf-llama": ("vicuna-7b", []),
    "video-llama": (
        "affectgpt_finetuned.pth",
        [
            "--override", f"video_qformer.num_heads={_TINY.video_qformer.num_heads}",
            "--override", f"audio_qformer.num_heads={_TINY.audio_qformer.num_heads}",
        ],
    ),
}


@dataclass
class Source:
    kind: str
    path: Path
    state_dict: dict  # the tensors as written (float32 numpy; hf-llama files hold them as fp16)
    args: list[str]


@dataclass
class Converted:
    source: Source
    output: Path
    returncode: int
    stdout: str


def run_main(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in process, with its stdout captured."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def build_source(kind: str, directory: Path) -> Source:
    """Write the small checkpoint of ``kind`` (needs torch: .pth files, ImageBind and LLaMA references)."""
    pytest.importorskip("torch")
    import convert_fixtures as fx

    name, args = KIND_ARGS[kind]
    path = directory / name
    if kind == "eva-vit-g":
        sd = fx.eva_state_dict()
        fx.save_pth(path, sd)
    elif kind == "blip2-qformer":
        sd = fx.blip2_state_dict()
        fx.save_pth(path, sd, wrap=True)
    elif kind == "imagebind-audio":
        sd = fx.imagebind_state_dict()
        fx.save_pth(path, sd)
    elif kind == "hf-llama":
        sd = fx.llama_state_dict()
        fx.write_hf_llama_dir(path, sd)
    else:
        sd = fx.video_llama_state_dict()
        fx.save_pth(path, sd, wrap=True)
    return Source(kind, path, sd, args)


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, Source]:
    directory = tmp_path_factory.mktemp("sources")
    return {kind: build_source(kind, directory) for kind in KIND_ARGS}


@pytest.fixture(scope="session")
def converted(sources, tmp_path_factory) -> dict[str, Converted]:
    """Every kind converted once through the CLI entry point, with --verify."""
    directory = tmp_path_factory.mktemp("converted")
    out = {}
    for kind, src in sources.items():
        output = directory / kind
        code, stdout = run_main(
            ["--source", kind, "--input", str(src.path), "--output", str(output), "--verify", *src.args]
        )
        out[kind] = Converted(src, output, code, stdout)
    return out
