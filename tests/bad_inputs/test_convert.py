"""Bad inputs of scripts/convert_checkpoint.py (deemo_jax.convert.cli.main).

Each case checks the exit code (``deemo_jax.exit_codes``: 3 for a damaged checkpoint, 2 for a wrong argument or
file, 0 when ``--allow-nonfinite`` converts anyway), a one-line message naming what is wrong, where, and how to fix
it, and that nothing is left under the output name (no staging folder either). Files are laid out as the originals
write them: ``eva_vit_g.pth`` key names, fp16, torch's zip or legacy format.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from deemo_jax.convert import readers
from deemo_jax.convert.cli import main
from deemo_jax.convert.converted import read_manifest
from deemo_jax.exit_codes import BAD_DATA, OK, USAGE

from .helpers import assert_one_line_error, run_main

torch = pytest.importorskip("torch")
from tests.convert import convert_fixtures as fx  # noqa: E402  (needs torch)

HEADS = ["--override", f"visual_encoder.num_heads={fx.TINY.vit.num_heads}"]  # tiny width: not in the preset
QKV = "blocks.1.attn.qkv.weight"  # [3 * 32, 32] = 3072 values


def eva_fp16(**changes: np.ndarray) -> dict[str, np.ndarray]:
    """The released layout (depth + 1 blocks, final norm + head), in fp16 like the download."""
    sd = {k: v.astype(np.float16) for k, v in fx.eva_state_dict(final_layers=24).items()}
    sd.update(changes)
    return sd


def convert(capsys, source: Path, output: Path, *extra: str, kind: str = "eva-vit-g"):
    args = ["--source", kind, "--input", str(source), "--output", str(output), "--no-progress", *extra]
    return run_main(main, [*args, *(HEADS if kind == "eva-vit-g" else [])], capsys)


def assert_nothing_written(folder: Path, *keep: str) -> None:
    """No output and no ``out.tmp-*`` staging folder: only the given inputs are left in ``folder``."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


# ------------------------------------------------------------------------------------ damaged data: exit 3
def test_nan_tensor_is_named_with_its_count_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    qkv = fx.eva_state_dict()[QKV].astype(np.float16)
    qkv.reshape(-1)[[5, 700, 3000]] = np.nan
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16(**{QKV: qkv}))
    reads: list[str] = []
    real_read = readers.TensorReader.read
    monkeypatch.setattr(readers.TensorReader, "read", lambda self, key: reads.append(key) or real_read(self, key))

    result = convert(capsys, source, tmp_path / "out")
    line = assert_one_line_error(
        result,
        f"visual_encoder.blocks.1.attn.qkv: 3 NaN, 0 Inf of 3072 values in {QKV} of {source}",
        "the checkpoint is damaged: re-download it, or pass --allow-nonfinite",
        code=BAD_DATA,
    )
    assert line.startswith("error: ")
    assert len(reads) == len(set(reads)) and reads[-1] == QKV  # checked while streaming: one read, stop there
    assert_nothing_written(tmp_path, "eva_vit_g.pth")


def test_inf_tensor_is_named_with_its_count(tmp_path, capsys):
    bias = np.full(fx.TINY.vit.width, 0.5, np.float16)
    bias[[1, 2]] = [np.inf, -np.inf]
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16(**{"patch_embed.proj.bias": bias}))
    result = convert(capsys, source, tmp_path / "out")
    assert_one_line_error(
        result, "visual_encoder.patch_embed.bias: 0 NaN, 2 Inf of 32 values in patch_embed.proj.bias",
        "--allow-nonfinite", code=BAD_DATA,
    )
    assert_nothing_written(tmp_path, "eva_vit_g.pth")


def test_allow_nonfinite_converts_and_records_every_tensor(tmp_path, capsys):
    qkv = fx.eva_state_dict()[QKV].astype(np.float16)
    qkv.reshape(-1)[:12] = np.nan
    bias = np.zeros(fx.TINY.vit.width, np.float16)
    bias[0] = np.inf
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16(**{QKV: qkv, "patch_embed.proj.bias": bias}))
    result = convert(capsys, source, tmp_path / "out", "--allow-nonfinite")
    assert result.code == OK, result.err
    assert "warning: 2 tensors with non-finite values kept (--allow-nonfinite)" in result.out
    assert read_manifest(tmp_path / "out")["nonfinite"] == {
        "allowed": True,
        "tensors": {
            "patch_embed.proj.bias": {"target": "visual_encoder.patch_embed.bias", "nan": 0, "inf": 1, "values": 32},
            QKV: {"target": "visual_encoder.blocks.1.attn.qkv", "nan": 12, "inf": 0, "values": 3072},
        },
    }


def test_truncated_safetensors(tmp_path, capsys):
    from safetensors.numpy import save_file

    full = tmp_path / "full.safetensors"
    save_file(eva_fp16(), str(full))
    cut = tmp_path / "eva_vit_g.safetensors"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    result = convert(capsys, cut, tmp_path / "out")
    assert_one_line_error(result, "truncated file", str(cut), "fresh download", code=BAD_DATA)
    assert_nothing_written(tmp_path, "full.safetensors", "eva_vit_g.safetensors")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_pth(tmp_path, capsys, legacy):
    full = fx.save_pth(tmp_path / "full.pth", eva_fp16(), legacy=legacy)
    cut = tmp_path / "eva_vit_g.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    result = convert(capsys, cut, tmp_path / "out")
    assert_one_line_error(result, "truncated", str(cut), "fresh download", code=BAD_DATA)
    assert_nothing_written(tmp_path, "full.pth", "eva_vit_g.pth")


# ---------------------------------------------------------------------- wrong file or argument: exit 2
def test_missing_input_file(tmp_path, capsys):
    result = convert(capsys, tmp_path / "eva_vit_g.pth", tmp_path / "out")
    assert_one_line_error(result, "no such file or directory", str(tmp_path / "eva_vit_g.pth"), "check --input",
                          code=USAGE)
    assert_nothing_written(tmp_path)


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
    source = tmp_path / "eva_vit_g.pth"
    source.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes().replace(b"\x80", b"x"))
    result = convert(capsys, source, tmp_path / "out")
    assert_one_line_error(result, "not a PyTorch checkpoint", str(source), "check that --input", code=USAGE)
    assert_nothing_written(tmp_path, "eva_vit_g.pth")


class _Exploit:
    """Pickles as ``os.system("touch <marker>")``: a plain ``pickle.load`` would run the command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "bare-pickle"])
def test_pickle_that_is_not_weights_only_safe_is_refused_unrun(tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    source = tmp_path / "eva_vit_g.pth"
    if fmt == "bare-pickle":  # a plain pickle named .pth
        source.write_bytes(pickle.dumps({"cls_token": _Exploit(marker)}, protocol=2))
    else:  # torch.save of a dict holding an object besides the tensors
        payload = {"cls_token": torch.zeros(1), "payload": _Exploit(marker)}
        torch.save(payload, source, _use_new_zipfile_serialization=fmt == "zip")
    result = convert(capsys, source, tmp_path / "out")
    line = assert_one_line_error(result, "refused:", str(source), "not plain tensors", "system", "safetensors",
                                 code=USAGE)
    assert "add_safe_globals" not in line  # torch's advice to allowlist the global is not passed on
    assert not marker.exists()
    assert_nothing_written(tmp_path, "eva_vit_g.pth")


def test_wrong_kind_names_the_right_one(tmp_path, capsys):
    source = fx.save_pth(tmp_path / "blip2_pretrained_flant5xxl.pth", fx.blip2_state_dict(), wrap=True)
    result = convert(capsys, source, tmp_path / "out")
    assert_one_line_error(result, "wrong kind", str(source), "looks like a blip2-qformer checkpoint",
                          "use --source blip2-qformer", code=USAGE)
    assert_nothing_written(tmp_path, "blip2_pretrained_flant5xxl.pth")


def test_shape_mismatch_names_key_expected_and_actual(tmp_path, capsys):
    w, m = fx.TINY.vit.width, fx.TINY.vit.mlp_dim
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16(**{"blocks.1.mlp.fc2.weight": np.zeros((w, m - 1))}))
    result = convert(capsys, source, tmp_path / "out", "--override", "visual_encoder.depth=2")
    assert_one_line_error(
        result, f"1 shape mismatch: [blocks.1.mlp.fc2.weight: expected ({w}, {m}), got ({w}, {m - 1})]",
        str(source), "check that --input is eva_vit_g.pth", code=USAGE,
    )
    assert_nothing_written(tmp_path, "eva_vit_g.pth")


def test_unwritable_output_folder(tmp_path, capsys, monkeypatch):
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode bits: make the folder refuse files as a read-only mount would
        import deemo_jax.files as files

        real_mkstemp = files.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == locked:
                raise PermissionError(13, "Permission denied", str(dir))
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    try:
        result = convert(capsys, source, locked / "eva_vit_g")
    finally:
        locked.chmod(0o755)
    assert_one_line_error(result, f"{locked} is not writable", "fix its permissions or choose another folder",
                          code=USAGE)
    assert list(locked.iterdir()) == []


def test_output_below_a_regular_file(tmp_path, capsys):
    source = fx.save_pth(tmp_path / "eva_vit_g.pth", eva_fp16())
    (tmp_path / "ckpt").write_text("not a folder")
    result = convert(capsys, source, tmp_path / "ckpt" / "eva_vit_g")
    assert_one_line_error(result, f"{tmp_path / 'ckpt'} is a regular file", "choose another path", code=USAGE)
    assert (tmp_path / "ckpt").read_text() == "not a folder"
    assert_nothing_written(tmp_path, "eva_vit_g.pth", "ckpt")
