"""Key errors, output handling, interruptions and --verify failures of the converter.

Bad files (non-finite values, not a checkpoint, truncated, unsafe pickle, wrong kind, shape mismatch, bad output
folders) are in the bad-input corpus, tests/bad_inputs/test_convert.py.
"""

from __future__ import annotations

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
    sd = fx.eva_state_dict()  # EVA variants with relative position bias: not what LAVIS's tower reads
    sd["rel_pos_bias.relative_position_bias_table"] = np.zeros((3, 4), np.float32)
    sd["blocks.0.attn.relative_position_bias_table"] = np.zeros((3, 4), np.float32)
    path = fx.save_pth(tmp_path / "eva.pth", sd)
    code, _ = convert_eva(path, tmp_path / "out")
    assert code == 2
    err = one_line_error(capsys)
    assert (
        "2 unexpected keys: [blocks.0.attn.relative_position_bias_table, rel_pos_bias.relative_position_bias_table]"
        in err
    )
    assert "--allow-unexpected" in err

    code, stdout = convert_eva(path, tmp_path / "out", "--allow-unexpected")
    assert code == 0
    assert ("warning: skipped 2 keys [blocks.0.attn.relative_position_bias_table, "
            "rel_pos_bias.relative_position_bias_table]: unexpected (allowed by --allow-unexpected)") in stdout
    skipped = read_manifest(tmp_path / "out")["skipped_keys"]
    assert skipped["rel_pos_bias.relative_position_bias_table"].startswith("unexpected")
    assert skipped["blocks.2.norm1.bias"].startswith("block beyond the first 2: LAVIS builds 39 blocks")


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


def test_read_manifest_gives_one_line_errors(tmp_path, sources):
    """The one reader of manifest.json: every broken directory gets one line saying what, where and what to do."""
    good = tmp_path / "good"
    assert convert_eva(sources["eva-vit-g"].path, good)[0] == 0
    manifest_text = (good / "manifest.json").read_text()

    def broken(name: str, text: str | None):
        d = tmp_path / name
        (d / "params").mkdir(parents=True)
        if text is not None:
            (d / "manifest.json").write_text(text)
        return d

    cases = {
        tmp_path / "absent": "does not exist",
        broken("none", None): "has no manifest.json",
        broken("cut", manifest_text[: len(manifest_text) // 2]): "is corrupt, not valid JSON",
        broken("list", "[1, 2]"): "is not a deemo-jax-converted manifest (format='list')",
        broken("foreign", '{"format": "something-else"}'): "format='something-else'",
        broken("nocomp", manifest_text.replace('"components"', '"komponents"')): "['components'] missing",
        broken("future", manifest_text.replace('"format_version": 1', '"format_version": 99')): "upgrade deemo-jax",
    }
    for directory, fragment in cases.items():
        with pytest.raises(ConvertedCheckpointError) as info:
            read_manifest(directory)
        message = str(info.value)
        assert fragment in message and "\n" not in message, message
        assert str(directory) in message
        assert "re-run scripts/convert_checkpoint.py" in message or "upgrade" in message, message
