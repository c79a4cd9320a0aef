"""Lazy readers: dtypes (bf16), shards, the ["model"] wrapper, file order, and released source memory."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from deemo_jax.convert.converted import transpose_2d
from deemo_jax.convert.readers import SafetensorsReader, TorchReader, open_checkpoint

torch = pytest.importorskip("torch")

def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_safetensors_shards_bf16_and_order(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4)).astype(ml_dtypes.bfloat16)
    b = rng.normal(size=(5,)).astype(np.float16)
    c = rng.normal(size=(2, 2)).astype(np.float32)
    save_file({"b": b, "a": a}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"c": c}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with open_checkpoint(tmp_path) as reader:
        assert isinstance(reader, SafetensorsReader)
        assert reader.shapes() == {"a": (3, 4), "b": (5,), "c": (2, 2)}
        assert reader.infos["a"].dtype == np.dtype(ml_dtypes.bfloat16)
        order = reader.reading_order(["c", "b", "a"])
        assert order[-1] == "c" and set(order[:2]) == {"a", "b"}
        for key, want in {"a": a, "b": b, "c": c}.items():
            got = reader.read(key)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_torch_reader_unwraps_model_and_converts_bf16(tmp_path):
    weights = torch.randn(4, 3).to(torch.bfloat16)
    torch.save({"model": {"w": weights, "step_buffer": torch.arange(3)}, "optimizer": {}, "epoch": 2},
               tmp_path / "ckpt.pth")
    with TorchReader([tmp_path / "ckpt.pth"], container_key="model") as reader:
        assert reader.shapes() == {"w": (4, 3), "step_buffer": (3,)}
        assert any("unwrapped ['model']" in n for n in reader.notes)
        got = reader.read("w")
        assert got.dtype == np.dtype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(got.astype(np.float32), weights.float().numpy())
        assert reader.read("step_buffer").dtype == np.int64


def test_legacy_torch_format_is_read(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with open_checkpoint(tmp_path / "old.pth") as reader:
        np.testing.assert_array_equal(reader.read("w"), np.ones(2, np.float32))
        assert any("pre-1.6 torch format" in n for n in reader.notes)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_source_pages_are_released(tmp_path, fmt):
    """Reading a 96 MB file tensor by tensor keeps at most ~release_bytes of it mapped in the RSS."""
    tensors = {f"t{i}": np.full((1024, 1024), i, np.float32) for i in range(24)}
    path = tmp_path / f"big.{fmt}"
    if fmt == "safetensors":
        save_file(tensors, str(path))
    else:
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path)
    before = _rss_file_kib()
    peak = 0
    with open_checkpoint(path, release_bytes=8 * 2**20) as reader:
        for key in reader.reading_order(list(reader.infos)):
            assert reader.read(key)[0, 0] == int(key[1:])
            peak = max(peak, _rss_file_kib() - before)
    assert peak < 40 * 1024, f"{peak / 1024:.0f} MiB of the 96 MiB file stayed mapped"


def test_transpose_2d_matches_numpy():
    x = np.random.default_rng(0).normal(size=(300, 131)).astype(np.float16)
    np.testing.assert_array_equal(transpose_2d(x), x.T)
