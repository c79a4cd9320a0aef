"""``eva_vit_g.pth`` as released: 40 blocks, EVA-CLIP's final norm and head, fp16, torch's legacy format.

LAVIS builds a 39-block tower and loads this file with ``strict=False`` (reference_spec §2.1, §2.4), so
``blocks.39.*``, ``norm.*`` and ``head.*`` are skipped by name, without a flag, and reported. A LAVIS
``visual_encoder`` state dict (39 blocks) converts whole.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_main
from torch_params import eva_vit_params_from_torch

from deemo_jax.convert.common import CheckpointKeyError
from deemo_jax.convert.converted import load_converted, read_manifest
from deemo_jax.convert.eva_vit import FINAL_LAYERS_REASON, expected_eva_vit_keys
from deemo_jax.convert.kinds import infer_eva_vit_config
from deemo_jax.convert.readers import sniff_torch_file

torch = pytest.importorskip("torch")
import convert_fixtures as fx  # noqa: E402

HEADS = ["--override", f"visual_encoder.num_heads={fx.TINY.vit.num_heads}"]  # width 32 is not the real 1408


def _shapes(blocks) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in fx.eva_state_dict(blocks=blocks).items()}


@pytest.mark.parametrize(("blocks", "depth"), [(39, 39), (40, 39), (3, 3), (1, 1)])
def test_depth_is_the_block_count_capped_at_lavis_39(blocks, depth):
    """A 39-block file (a LAVIS ``visual_encoder``) is depth 39, not 38; the released 40-block file is also 39."""
    assert infer_eva_vit_config(_shapes(blocks), {"visual_encoder": {"num_heads": "4"}}).depth == depth


def test_block_numbering_with_a_gap_is_refused():
    shapes = {k: v for k, v in _shapes(6).items() if not k.startswith(("blocks.2.", "blocks.4."))}
    with pytest.raises(CheckpointKeyError) as info:
        infer_eva_vit_config(shapes, {"visual_encoder": {"num_heads": "4"}})
    assert info.value.missing == ["blocks.2.attn.qkv.weight", "blocks.4.attn.qkv.weight"]
    assert "up to 5 with gaps" in str(info.value) and "fresh download" in str(info.value)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny-width file laid out like the download: 40 blocks + norm + head, fp16, pre-1.6 torch format."""
    directory = tmp_path_factory.mktemp("eva_release")
    sd = {k: v.astype(np.float16) for k, v in fx.eva_state_dict(blocks=40, final_layers=24).items()}
    path = fx.save_pth(directory / "eva_vit_g.pth", sd, legacy=True)
    assert sniff_torch_file(path) == "legacy"
    out = directory / "out"
    code, stdout = run_main(["--source", "eva-vit-g", "--input", str(path), "--output", str(out), *HEADS])
    return sd, out, code, stdout


def test_released_file_converts_without_flags_and_reports_what_it_skipped(released):
    sd, out, code, stdout = released
    assert code == 0, stdout
    manifest = read_manifest(out)
    assert manifest["components"]["visual_encoder"]["config"]["depth"] == 39
    skipped = manifest["skipped_keys"]
    final = ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert {k: skipped[k] for k in final} == dict.fromkeys(final, FINAL_LAYERS_REASON)
    block39 = sorted(k for k in sd if k.startswith("blocks.39."))
    assert len(block39) == 13 and all(skipped[k].startswith("block beyond the first 39") for k in block39)
    assert sorted(skipped) == sorted(final + block39)
    assert f"note: skipped 4 keys [{', '.join(final)}]: {FINAL_LAYERS_REASON}" in stdout
    assert "note: skipped 13 keys [blocks.39.attn.proj.bias" in stdout
    assert any("pre-1.6 torch format" in note for note in manifest["source_notes"])


def test_released_file_values_are_the_fp16_tensors(released):
    sd, out, _, _ = released
    config = infer_eva_vit_config({k: v.shape for k, v in sd.items()}, {"visual_encoder": {"num_heads": "4"}})
    want = eva_vit_params_from_torch({k: v.astype(np.float32) for k, v in sd.items()}, config)
    assert len(expected_eva_vit_keys(config)) == len(sd) - 4 - 13  # all but norm/head and blocks.39
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), {"visual_encoder": want})
    got = load_converted(out, abstract)["visual_encoder"]
    np.testing.assert_array_equal(np.asarray(got["blocks"][38]["attn"]["qkv"]), want["blocks"][38]["attn"]["qkv"])
    np.testing.assert_array_equal(np.asarray(got["cls_token"]), sd["cls_token"].astype(np.float32))
    assert jax.tree.structure(got) == jax.tree.structure(want)
