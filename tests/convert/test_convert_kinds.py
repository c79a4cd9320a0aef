"""Each kind converts a small checkpoint with the real key names, verifies against PyTorch, and loads back exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_main
from flax import nnx
from torch_params import (
    deemo_trainable_params_from_torch,
    eva_vit_params_from_torch,
    imagebind_audio_params_from_torch,
    ln_vision_params_from_torch,
    qformer_params_from_torch,
)

from deemo_jax.convert.converted import (
    ConvertedCheckpointError,
    load_converted,
    read_manifest,
    restore_into,
    stored_tree,
)
from deemo_jax.convert.llama import llama_params_from_torch
from deemo_jax.models.deemo_llama import DeemoLlama
from deemo_jax.models.layers import LayerNorm
from deemo_jax.models.llama import Llama

torch = pytest.importorskip("torch")
import convert_fixtures as fx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = fx.TINY
KINDS = ["eva-vit-g", "blip2-qformer", "imagebind-audio", "hf-llama", "video-llama"]

# Keys that real files carry and the converter must skip on purpose (a sample per kind).
EXPECTED_SKIPS = {
    "eva-vit-g": ["blocks.2.attn.qkv.weight", "blocks.2.mlp.fc2.bias"],
    "blip2-qformer": [
        "t5_proj.weight", "Qformer.bert.embeddings.word_embeddings.weight", "Qformer.bert.embeddings.position_ids",
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight", "Qformer.bert.encoder.layer.1.output.LayerNorm.bias",
        "Qformer.cls.predictions.decoder.weight",
    ],
    "imagebind-audio": [
        "modality_trunks.vision.blocks.0.attn.in_proj_weight", "modality_preprocessors.text.mask",
        "modality_postprocessors.text.1.log_logit_scale",
    ],
    "hf-llama": ["model.layers.0.self_attn.rotary_emb.inv_freq"],
    "video-llama": [
        "Qformer.bert.embeddings.position_ids", "video_Qformer.bert.embeddings.position_ids",
        "audio_encoder.modality_postprocessors.audio.1.log_logit_scale",
        "audio_encoder.modality_preprocessors.text.mask",
        "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq",
    ],
}


def expected_params(kind: str, sd: dict) -> dict:
    """The component trees the per-component mappings produce from the same state dict (float32)."""
    f32 = {k: np.asarray(v) for k, v in sd.items()}
    if kind == "eva-vit-g":
        return {"visual_encoder": eva_vit_params_from_torch(f32, TINY.vit)}
    if kind == "blip2-qformer":
        return {
            "image_qformer": qformer_params_from_torch(f32, TINY.image_qformer),
            "ln_vision": ln_vision_params_from_torch(f32, width=TINY.vit.width),
        }
    if kind == "imagebind-audio":
        return {"audio_encoder": imagebind_audio_params_from_torch(f32, TINY.audio_encoder)}
    if kind == "hf-llama":  # stored in the file as fp16, converted to bf16 (the kind's default)
        rounded = {k: v.astype(np.float16).astype(jnp.bfloat16).astype(np.float32) for k, v in f32.items()}
        return {"llama": llama_params_from_torch(rounded, TINY.llm)}
    return deemo_trainable_params_from_torch(
        f32, video_qformer=TINY.video_qformer, audio_qformer=TINY.audio_qformer,
        llm_hidden_size=TINY.llm.hidden_size, max_frame_positions=TINY.max_frame_positions,
        max_audio_clips=TINY.max_audio_clips,
    )


def flat(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, (*prefix, str(k))))
        else:
            out["/".join((*prefix, str(k)))] = np.asarray(v, dtype=np.float32)
    return out


def assert_same_tree(got: dict, want: dict) -> None:
    got, want = flat(got), flat(want)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_converts_verifies_and_records(kind, converted):
    result = converted[kind]
    assert result.returncode == 0, result.stdout
    assert "max_abs_diff=" in result.stdout
    manifest = read_manifest(result.output)
    assert manifest["kind"] == kind and manifest["verification"]["passed"]
    assert manifest["verification"]["max_abs_diff"] <= 1e-4
    files = [result.source.path] if result.source.path.is_file() else sorted(result.source.path.glob("*.safetensors"))
    assert [s["name"] for s in manifest["sources"]] == [f.name for f in files]
    for record, file in zip(manifest["sources"], files, strict=True):
        assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert record["bytes"] == file.stat().st_size
    for key in EXPECTED_SKIPS[kind]:
        reason = manifest["skipped_keys"][key]
        assert reason and not reason.startswith("unexpected"), (key, reason)
        assert "skipped " in result.stdout and reason in result.stdout  # printed, one line per reason
    assert manifest["nonfinite"] == {"allowed": False, "tensors": {}}
    assert set(manifest["converted_keys"]).isdisjoint(manifest["skipped_keys"])
    dtype = "bfloat16" if kind == "hf-llama" else "float32"
    assert manifest["dtype"] == dtype
    assert {d.name for _, d in stored_tree(result.output).values()} == {dtype}
    assert not list(result.output.parent.glob(f"{kind}.tmp-*"))


def test_imagebind_logit_scale_checked_not_stored(converted):
    manifest = read_manifest(converted["imagebind-audio"].output)
    assert manifest["checked_keys"] == ["modality_postprocessors.audio.1.log_logit_scale"]
    assert not any("logit" in path for path in stored_tree(converted["imagebind-audio"].output))


def test_hf_llama_copies_tokenizer_and_config(converted):
    out = converted["hf-llama"].output
    manifest = read_manifest(out)
    assert sorted(manifest["tokenizer"]["files"]) == ["special_tokens_map.json", "tokenizer.model",
                                                      "tokenizer_config.json"]
    source = converted["hf-llama"].source.path
    assert (out / "tokenizer" / "tokenizer.model").read_bytes() == (source / "tokenizer.model").read_bytes()
    assert manifest["hf_config"]["num_hidden_layers"] == TINY.llm.num_hidden_layers
    assert manifest["components"]["llama"]["config"]["rms_norm_eps"] == TINY.llm.rms_norm_eps


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_params_equal_the_mapping(kind, converted):
    """The streamed Orbax tree, loaded back, is exactly what the per-component mapping builds."""
    want = expected_params(kind, converted[kind].source.state_dict)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), want)
    got = load_converted(converted[kind].output, abstract)
    assert_same_tree(got, want)


def test_restore_into_deemo_llama_fills_every_parameter(converted):
    """The training engineer's path: five converted directories restore into one (abstract) DeemoLlama."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DeemoLlama(TINY, rngs=nnx.Rngs(0))))
    want = {}
    for kind, result in converted.items():
        state = load_converted(result.output, state, config=TINY)
        want.update(expected_params(kind, result.source.state_dict))
    model = nnx.merge(graphdef, state)
    assert_same_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)), want)


def test_restore_into_module_in_place(converted):
    """A component module of a multi-component directory, named with ``component=``, is filled in place."""
    ln_vision = LayerNorm(TINY.vit.width, eps=TINY.ln_vision_eps)
    manifest = restore_into(ln_vision, converted["blip2-qformer"].output, component="ln_vision")
    assert manifest["kind"] == "blip2-qformer"
    want = expected_params("blip2-qformer", converted["blip2-qformer"].source.state_dict)["ln_vision"]
    assert_same_tree(nnx.to_pure_dict(nnx.state(ln_vision, nnx.Param)), want)


def test_restore_into_abstract_sharded_state(converted):
    """An abstract state with shardings is restored straight into them, cast to the target dtype."""
    mesh = jax.make_mesh((1,), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Llama(TINY.llm, rngs=nnx.Rngs(0))))
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
    restored = load_converted(converted["hf-llama"].output, state)
    leaves = jax.tree.leaves(restored)
    assert leaves and all(isinstance(x, jax.Array) and x.sharding == sharding for x in leaves)
    assert all(x.dtype == jnp.float32 for x in leaves)  # stored bf16, target fp32
    want = expected_params("hf-llama", converted["hf-llama"].source.state_dict)["llama"]
    assert_same_tree(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, restored), nnx.Param)), want)


def test_load_refuses_another_config_or_shape(converted):
    out = converted["hf-llama"].output
    other = dataclasses.replace(TINY.llm, rms_norm_eps=1e-5)
    with pytest.raises(ConvertedCheckpointError, match=r"llama\.rms_norm_eps: checkpoint 1e-06, model 1e-05"):
        restore_into(Llama(other, rngs=nnx.Rngs(0)), out)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Llama(TINY.llm, rngs=nnx.Rngs(0)))))
    abstract["lm_head"]["kernel"] = jax.ShapeDtypeStruct((TINY.llm.hidden_size, 7), jnp.float32)
    mismatch = r"1 shape mismatch: \[llama/lm_head/kernel: target \(32, 7\), stored \(32, 128\)\]"
    with pytest.raises(ConvertedCheckpointError, match=mismatch):
        load_converted(out, abstract)
    with pytest.raises(ConvertedCheckpointError, match="holds.*video_qformer.*pass component="):
        load_converted(converted["video-llama"].output, {"unrelated": {}})


def test_hf_llama_from_pytorch_bin_shards(converted, tmp_path):
    source = fx.write_hf_llama_dir(tmp_path / "vicuna-bin", converted["hf-llama"].source.state_dict, fmt="bin")
    code, _ = run_main(["--source", "hf-llama", "--input", str(source), "--output", str(tmp_path / "out")])
    assert code == 0
    want = expected_params("hf-llama", converted["hf-llama"].source.state_dict)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), want)
    assert_same_tree(load_converted(tmp_path / "out", abstract), load_converted(converted["hf-llama"].output, abstract))
    assert [s["name"] for s in read_manifest(tmp_path / "out")["sources"]] == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    ]


def test_script_subprocess_converts_a_video_only_checkpoint(tmp_path):
    """A real process runs the script; a file with only the video branch converts that branch."""
    source = fx.save_pth(tmp_path / "vl_video.pth", fx.video_llama_state_dict(branches=("video",)), wrap=True)
    out = tmp_path / "vl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_checkpoint.py"), "--source", "video-llama", "--input",
         str(source), "--output", str(out), "--override", f"video_qformer.num_heads={fx.QFORMER_HEADS}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["components"]) == ["llama_proj", "video_frame_position_embedding", "video_qformer"]
    assert "no audio branch" in proc.stdout
