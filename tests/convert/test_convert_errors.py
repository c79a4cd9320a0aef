"""One test per bad input: each fails with a one-line message (exit 2), or exit 1 for a failed --verify."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pytest
from conftest import KIND_ARGS, run_main

from deemo_jax.convert import converted as converted_lib
from deemo_jax.convert import kinds, pipeline
from deemo_jax.convert.common import TensorRule
from deemo_jax.convert.converted import ConvertedCheckpointError, load_converted, read_manifest

torch = pytest.importorskip("torch")
import convert_fixtures as fx  # noqa: E402

EVA_ARGS = KIND_ARGS["eva-vit-g"][1]


def convert_eva(path, out, *extra):
    return run_main(["--source", "eva-vit-g", "--input", str(path), "--output", str(out), *EVA_ARGS, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_keys_are_listed(tmp_path, capsys):
    sd = fx.eva_state_dict()
    del sd["blocks.0.attn.q_bias"], sd["blocks.1.mlp.fc2.bias"]
    code, _ = convert_eva(fx.save_pth(tmp_path / "eva.pth", sd), tmp_path / "out")
    assert code == 2
    err = one_line_error(capsys)
    assert "2 missing keys: [blocks.0.attn.q_bias, blocks.1.mlp.fc2.bias]" in err
    assert not (tmp_path / "out").exists()


def test_unexpected_keys_are_listed_and_can_be_allowed(tmp_path, capsys):
    sd = fx.eva_state_dict()
    sd["head.weight"] = np.zeros((4, fx.TINY.vit.width), np.float32)
    sd["blocks.0.attn.relative_position_bias_table"] = np.zeros((3, 4), np.float32)
    path = fx.save_pth(tmp_path / "eva.pth", sd)
    code, _ = convert_eva(path, tmp_path / "out")
    assert code == 2
    err = one_line_error(capsys)
    assert "2 unexpected keys: [blocks.0.attn.relative_position_bias_table, head.weight]" in err
    assert "--allow-unexpected" in err

    code, stdout = convert_eva(path, tmp_path / "out", "--allow-unexpected")
    assert code == 0
    assert "2 unexpected keys skipped" in stdout
    skipped = read_manifest(tmp_path / "out")["skipped_keys"]
    assert skipped["head.weight"].startswith("unexpected") and skipped["blocks.2.norm1.bias"] == "ignorable"


def test_shape_mismatch_names_key_expected_and_actual(tmp_path, capsys):
    sd = fx.eva_state_dict()
    w, m = fx.TINY.vit.width, fx.TINY.vit.mlp_dim
    sd["blocks.1.mlp.fc2.weight"] = np.zeros((w, m - 1), np.float32)
    code, _ = convert_eva(fx.save_pth(tmp_path / "eva.pth", sd), tmp_path / "out")
    assert code == 2
    assert f"shape mismatch for blocks.1.mlp.fc2.weight: expected ({w}, {m}), got ({w}, {m - 1})" in one_line_error(
        capsys
    )


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("eva.pth", b"this is a README, not weights\n" * 10, "not a PyTorch checkpoint"),
        ("eva.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......", "not a safetensors file"),
    ],
)

def test_not_a_checkpoint(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert convert_eva(tmp_path / name, tmp_path / "out")[0] == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_truncated_file(tmp_path, capsys, fmt):
    sd = fx.eva_state_dict()
    if fmt == "pth":
        full = fx.save_pth(tmp_path / "full.pth", sd)
    else:
        from safetensors.numpy import save_file

        full = tmp_path / "full.safetensors"
        save_file(sd, str(full))
    data = full.read_bytes()
    cut = tmp_path / f"eva.{fmt}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert convert_eva(cut, tmp_path / "out")[0] == 2
    assert "truncated file" in one_line_error(capsys)


def test_wrong_kind_names_the_right_one(tmp_path, capsys, sources):
    code, _ = convert_eva(sources["imagebind-audio"].path, tmp_path / "out")
    assert code == 2
    err = one_line_error(capsys)
    assert "looks like an imagebind-audio checkpoint" in err and "use --source imagebind-audio" in err

    other = fx.save_pth(tmp_path / "other.pth", {"encoder.weight": np.zeros((2, 2), np.float32)})
    assert convert_eva(other, tmp_path / "out")[0] == 2
    assert "has none of the keys of an eva-vit-g checkpoint" in one_line_error(capsys)


class _Exploit:
    """Pickles as ``os.system("touch <marker>")``: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["zip", "legacy-pickle"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, capsys, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "eva.pth"
    if fmt == "zip":  # torch.save: the format every real .pth uses
        torch.save({"model": {"cls_token": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    else:  # a bare pickle with a .pth name
        path.write_bytes(pickle.dumps({"cls_token": _Exploit(marker)}, protocol=2))
    assert convert_eva(path, tmp_path / "out")[0] == 2
    err = one_line_error(capsys)
    assert "refused:" in err and "not plain tensors" in err and "system" in err
    assert not marker.exists()


def test_existing_output_needs_overwrite(tmp_path, capsys, sources):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    path = sources["eva-vit-g"].path
    assert convert_eva(path, out)[0] == 2
    assert "exists; pass --overwrite" in one_line_error(capsys)
    assert (out / "keep.txt").read_text() == "mine"

    assert convert_eva(path, out, "--overwrite")[0] == 0
    assert not (out / "keep.txt").exists() and read_manifest(out)["kind"] == "eva-vit-g"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copies left


def _crash_on_second_group(monkeypatch):
    """Write one small group at a time and fail while handing over the second one."""
    monkeypatch.setattr(converted_lib, "GROUP_BYTES", 4096)
    real_save = converted_lib.ocp.partial.save_async
    calls = []

    def save_async(path, tree):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("simulated crash mid-write")
        return real_save(path, tree)

    monkeypatch.setattr(converted_lib.ocp.partial, "save_async", save_async)
    return calls


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch, sources):
    calls = _crash_on_second_group(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_eva(sources["eva-vit-g"].path, tmp_path / "out")
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []  # no output, staging directory removed


def test_killed_conversion_never_looks_complete(tmp_path, monkeypatch, sources):
    """If the process dies before cleanup (SIGKILL), the staging directory has no manifest and is refused."""
    _crash_on_second_group(monkeypatch)
    monkeypatch.setattr(pipeline.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_eva(sources["eva-vit-g"].path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (staging,) = tmp_path.iterdir()
    assert staging.name.startswith("out.tmp-")
    with pytest.raises(ConvertedCheckpointError, match="no manifest.json"):
        read_manifest(staging)
    with pytest.raises(ConvertedCheckpointError, match="did not finish"):
        load_converted(staging, {})


def test_failed_verification_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys, sources):
    """A mapping bug (one tensor scaled by 1.01) is caught by --verify; the output is not installed."""
    real_table = kinds.eva_vit_key_table

    def buggy_table(config, prefix=""):
        table = real_table(config, prefix)
        rule = table["blocks.0.mlp.fc1.weight"]
        table["blocks.0.mlp.fc1.weight"] = TensorRule(rule.target, rule.shape, lambda x: rule.transform(x) * 1.01)
        return table

    monkeypatch.setattr(kinds, "eva_vit_key_table", buggy_table)
    code, stdout = convert_eva(sources["eva-vit-g"].path, tmp_path / "out", "--verify")
    assert code == 1
    assert "FAILED" in stdout and "max_abs_diff=" in stdout
    assert "verification failed" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch, capsys, sources):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert convert_eva(sources["eva-vit-g"].path, tmp_path / "out")[0] == 2
    assert "pip install 'deemo-jax[convert]'" in one_line_error(capsys)
