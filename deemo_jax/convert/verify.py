"""``--verify``: reload the converted output and compare the Flax component with its PyTorch reference.

The Flax side is restored from the written directory through the same loader training uses
(:func:`deemo_jax.convert.converted.load_converted`; a partial load when only some layers are checked). The
PyTorch side (:mod:`deemo_jax.convert.torch_reference`) is loaded from the *source* file, with every stored
tensor rounded to the output dtype, and both run in float32 on the same random input. The check therefore
isolates the mapping (names, transposes, splits) from the precision the user asked for: a bf16 conversion is
compared with the bf16-rounded source weights.

Pass criterion: ``max_abs_diff <= tol * max(1, max|reference|)`` with ``tol`` = 1e-4 for float32 output and
1e-3 for bfloat16. Since both sides hold the same rounded weights, what is measured is float32
accumulation-order noise plus any mapping error; the noise is 1e-6..1e-5 (tests, and LLaMA-7B shapes), a mapping
error (a missed transpose, a swapped q/k) is O(1). The bf16 bound is deliberately looser to leave room for
checkpoints whose bf16-rounded weights produce larger activations. Components over 300 M parameters (EVA ViT-g,
LLaMA-7B) are checked on their first 2 layers (``--verify-layers`` changes it) and the output says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from deemo_jax.convert import converted, deemo
from deemo_jax.convert.kinds import Plan
from deemo_jax.convert.llama import expected_llama_keys
from deemo_jax.convert.readers import TORCH_INSTALL_HINT, TensorReader
from deemo_jax.models.eva_vit import EvaViT
from deemo_jax.models.imagebind_audio import ImageBindAudio
from deemo_jax.models.layers import LayerNorm
from deemo_jax.models.llama import Llama
from deemo_jax.models.qformer import QFormer

VERIFY_FULL_MAX_PARAMS = 300_000_000
DEFAULT_PARTIAL_LAYERS = 2
SEED = 0


def tolerance(dtype: Any) -> float:
    return 1e-4 if jnp.dtype(dtype) == jnp.float32 else 1e-3


def _f32(config: Any, **changes: Any) -> Any:
    return dataclasses.replace(config, dtype=jnp.float32, param_dtype=jnp.float32, **changes)


def _source(reader: TensorReader, plan: Plan, keys: Sequence[str], dtype: Any) -> dict[str, np.ndarray]:
    """Source tensors as float32, rounded through ``dtype`` when they are stored (buffers stay exact)."""
    out = {}
    for key in reader.reading_order(list(keys)):
        value = reader.read(key)
        if plan.table[key].target is not None:
            value = value.astype(dtype)
        out[key] = value.astype(np.float32)
    reader.release()
    return out


def _restore(directory: Path, build: Callable[[], nnx.Module], component: str, config: Any, partial: bool):
    """Build the module abstractly and fill it from the converted directory."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    if partial:
        restored = converted.load_params(directory, {component: nnx.to_pure_dict(state)}, partial=True)
        nnx.replace_by_pure_dict(state, restored[component])
    else:
        converted.load_converted(directory, state, component=component, config=config)
    return nnx.merge(graphdef, state)


def _num_layers(requested: int | None, total: int, num_params: int) -> int:
    if requested is not None:
        if not 1 <= requested <= total:
            raise ValueError(f"--verify-layers {requested}: the model has {total} layers")
        return requested
    return total if num_params <= VERIFY_FULL_MAX_PARAMS else min(DEFAULT_PARTIAL_LAYERS, total)


def _param_count(plan: Plan, component: str) -> int:
    return sum(
        int(np.prod(r.shape)) for r in plan.table.values() if r.target is not None and r.target[0] == component
    )


def _np(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ kinds
def _eva(directory, reader, plan, dtype, layers, torch, ref):
    config = plan.components["visual_encoder"].config
    depth = _num_layers(layers, config.depth, _param_count(plan, "visual_encoder"))
    cfg = _f32(config, depth=depth)
    model = _restore(directory, lambda: EvaViT(cfg, rngs=nnx.Rngs(0)), "visual_encoder", cfg, depth < config.depth)
    keys = [k for k in plan.table if not k.startswith("blocks.") or int(k.split(".")[1]) < depth]
    reference = ref.eva_vit_reference(_source(reader, plan, keys, dtype), cfg)
    pixels = np.random.default_rng(SEED).normal(size=(2, 3, cfg.img_size, cfg.img_size)).astype(np.float32)
    with torch.no_grad():
        want = reference(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    got = _np(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(pixels.transpose(0, 2, 3, 1))))
    what = f"EvaViT vs Blip2VisionModel, {depth} of {config.depth} blocks, 2 random images"
    return [("visual_encoder", got, want, what)], (depth, config.depth)


def _blip2(directory, reader, plan, dtype, layers, torch, ref):
    cfg = _f32(plan.components["image_qformer"].config)
    ln_cfg = plan.components["ln_vision"].config
    qformer = _restore(directory, lambda: QFormer(cfg, rngs=nnx.Rngs(0)), "image_qformer", cfg, False)
    ln = _restore(
        directory, lambda: LayerNorm(ln_cfg["num_features"], eps=ln_cfg["eps"]), "ln_vision", ln_cfg, False
    )
    sd = _source(reader, plan, list(plan.table), dtype)
    reference, query_tokens = ref.qformer_reference(sd, cfg, "Qformer.bert.", "query_tokens")
    torch_ln = torch.nn.LayerNorm(ln_cfg["num_features"], eps=ln_cfg["eps"])
    torch_ln.load_state_dict({"weight": torch.from_numpy(sd["ln_vision.weight"]),
                              "bias": torch.from_numpy(sd["ln_vision.bias"])})
    memory = np.random.default_rng(SEED).normal(size=(2, 9, ln_cfg["num_features"])).astype(np.float32)
    with torch.no_grad():
        want = reference(
            query_embeds=query_tokens.expand(2, -1, -1), encoder_hidden_states=torch_ln(torch.from_numpy(memory))
        ).last_hidden_state.numpy()
    got = _np(nnx.jit(lambda q, norm, x: q(norm(x)))(qformer, ln, jnp.asarray(memory)))
    return [("ln_vision + image_qformer", got, want, "ln_vision + QFormer vs Blip2QFormerModel, 9 random tokens")], None


def _imagebind(directory, reader, plan, dtype, layers, torch, ref):
    config = plan.components["audio_encoder"].config
    if layers is not None and layers != config.depth:
        raise ValueError("--verify-layers: the ImageBind audio tower is always verified whole")
    cfg = _f32(config)
    model = _restore(directory, lambda: ImageBindAudio(cfg, rngs=nnx.Rngs(0)), "audio_encoder", cfg, False)
    reference = ref.imagebind_audio_reference(_source(reader, plan, list(plan.table), dtype), cfg)
    fbank = np.random.default_rng(SEED).normal(size=(2, 1, cfg.num_mel_bins, cfg.target_len)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(fbank)).numpy()
    got = _np(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(fbank)))
    return [("audio_encoder", got, want, "ImageBindAudio vs torch reference, 2 random fbank clips")], None


def _llama(directory, reader, plan, dtype, layers, torch, ref):
    config = plan.components["llama"].config
    n = _num_layers(layers, config.num_hidden_layers, _param_count(plan, "llama"))
    cfg = _f32(config, num_hidden_layers=n)
    model = _restore(directory, lambda: Llama(cfg, rngs=nnx.Rngs(0)), "llama", cfg, n < config.num_hidden_layers)
    reference = ref.llama_reference(_source(reader, plan, list(expected_llama_keys(cfg)), dtype), cfg)
    ids = np.random.default_rng(SEED).integers(0, cfg.vocab_size, size=(1, 8)).astype(np.int32)
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    got = _np(nnx.jit(lambda m, x: m(input_ids=x)[0])(model, jnp.asarray(ids)))
    what = f"Llama vs LlamaForCausalLM logits, {n} of {config.num_hidden_layers} layers, 8 random tokens"
    return [("llama", got, want, what)], (n, config.num_hidden_layers)


def _gguf(directory, reader, plan, dtype, layers, torch, ref):
    from deemo_jax.convert.gguf import transformers_reference

    config = plan.components["llama"].config
    n = _num_layers(layers, config.num_hidden_layers, _param_count(plan, "llama"))
    cfg = _f32(config, num_hidden_layers=n)
    model = _restore(directory, lambda: Llama(cfg, rngs=nnx.Rngs(0)), "llama", cfg, n < config.num_hidden_layers)
    reference = transformers_reference(reader.files[0], n, dtype)
    ids = np.random.default_rng(SEED).integers(0, cfg.vocab_size, size=(1, 8)).astype(np.int32)
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    got = _np(nnx.jit(lambda m, x: m(input_ids=x)[0])(model, jnp.asarray(ids)))
    what = f"Llama vs transformers' GGUF loader, {n} of {config.num_hidden_layers} layers, 8 random tokens"
    return [("llama", got, want, what)], (n, config.num_hidden_layers)


def _video_llama(directory, reader, plan, dtype, layers, torch, ref):
    checks = []
    rng = np.random.default_rng(SEED)
    for branch in deemo.branches_in(plan.table):
        q_name, pos_name, proj_name = branch.attributes
        cfg = _f32(plan.components[q_name].config)
        pos, proj = plan.components[pos_name].config, plan.components[proj_name].config
        qformer = _restore(directory, lambda c=cfg: QFormer(c, rngs=nnx.Rngs(0)), q_name, cfg, False)
        embed = _restore(
            directory, lambda p=pos: nnx.Embed(p["num_embeddings"], p["features"], rngs=nnx.Rngs(0)), pos_name, pos,
            False,
        )
        linear = _restore(
            directory, lambda p=proj: nnx.Linear(p["in_features"], p["out_features"], rngs=nnx.Rngs(0)), proj_name,
            proj, False,
        )
        keys = [k for k in plan.table if plan.table[k].target[0] in branch.attributes]
        sd = _source(reader, plan, keys, dtype)
        reference, query_tokens = ref.qformer_reference(sd, cfg, branch.qformer_prefix, branch.query_tokens_key)
        table = torch.from_numpy(sd[branch.position_key])
        weight, bias = (torch.from_numpy(sd[f"{branch.proj_key}.{n}"]) for n in ("weight", "bias"))
        steps = min(4, pos["num_embeddings"])
        if branch.name == "video":  # image-Q-Former outputs [N, T, 3 queries, D] + frame position, flattened
            x = rng.normal(size=(2, steps, 3, cfg.encoder_width)).astype(np.float32)
            torch_memory = (torch.from_numpy(x) + table[:steps][None, :, None, :]).reshape(2, -1, x.shape[-1])
            what = f"video_qformer + frame positions + llama_proj vs Blip2QFormerModel, {steps} frames"

            def forward(q, e, lin, x):
                return lin(q((x + e.embedding[...][: x.shape[1]][None, :, None, :]).reshape(2, -1, x.shape[-1])))
        else:  # ImageBind embeddings [N, S, D] + clip position
            x = rng.normal(size=(2, steps, cfg.encoder_width)).astype(np.float32)
            torch_memory = torch.from_numpy(x) + table[:steps][None]
            what = f"audio_qformer + clip positions + audio_llama_proj vs Blip2QFormerModel, {steps} clips"

            def forward(q, e, lin, x):
                return lin(q(x + e.embedding[...][: x.shape[1]][None]))
        with torch.no_grad():
            hidden = reference(
                query_embeds=query_tokens.expand(2, -1, -1), encoder_hidden_states=torch_memory
            ).last_hidden_state
            want = torch.nn.functional.linear(hidden, weight, bias).numpy()
        got = _np(nnx.jit(forward)(qformer, embed, linear, jnp.asarray(x)))
        checks.append((f"{branch.name} branch", got, want, what))
    return checks, None


_VERIFIERS = {
    "eva-vit-g": _eva,
    "blip2-qformer": _blip2,
    "imagebind-audio": _imagebind,
    "hf-llama": _llama,
    "video-llama": _video_llama,
    "gguf": _gguf,
}


def verify_conversion(
    kind: str,
    directory: Path,
    reader: TensorReader,
    plan: Plan,
    dtype: Any,
    layers: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the check for ``kind``; returns the record stored in the manifest (``passed``, ``max_abs_diff``...)."""
    try:  # here, not at the top: torch and transformers are optional (--verify only) and slow to import
        import torch

        from deemo_jax.convert import torch_reference as ref
    except ImportError:
        raise ImportError(f"--verify needs torch and transformers; {TORCH_INSTALL_HINT}") from None
    torch.manual_seed(SEED)
    checks, partial = _VERIFIERS[kind](directory, reader, plan, dtype, layers, torch, ref)
    base = tolerance(dtype)
    records, passed, worst = [], True, 0.0
    for name, got, want, what in checks:
        if got.shape != want.shape:
            raise AssertionError(f"verify {name}: Flax output {got.shape} vs reference {want.shape}")
        diff = float(np.max(np.abs(got - want)))
        scale = float(np.max(np.abs(want)))
        tol = base * max(1.0, scale)
        ok = bool(np.isfinite(diff) and diff <= tol)
        passed &= ok
        worst = max(worst, diff) if np.isfinite(diff) else float("inf")
        log(f"verify {name}: {what}: max_abs_diff={diff:.3e} (tolerance {tol:.1e}, |reference| max {scale:.3g})"
            f" {'ok' if ok else 'FAILED'}")
        records.append({"name": name, "what": what, "max_abs_diff": diff, "reference_max_abs": scale,
                        "tolerance": tol, "passed": ok})
    if partial is not None and partial[0] < partial[1]:
        log(f"note: verified the first {partial[0]} of {partial[1]} layers only (--verify-layers to change)")
    tol = min(r["tolerance"] for r in records)
    log(f"max_abs_diff={worst:.3e}")
    return {
        "passed": passed,
        "max_abs_diff": worst,
        "tolerance": tol,
        "dtype": jnp.dtype(dtype).name,
        "layers_checked": None if partial is None else {"checked": partial[0], "total": partial[1]},
        "checks": records,
    }
