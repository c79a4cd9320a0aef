"""The fit planner (deemo_jax/train/plan.py, scripts/plan.py) on tiny configs over 1, 2 and 8 virtual devices.

Parameter, optimizer and batch bytes per device must be exactly element counts x dtype bytes / shards (the
sharding rule of deemo_jax/sharding.py: a mesh axis splits a dimension it divides) and add up to XLA's own
argument bytes; temporaries must follow batch, sequence length and remat; a config that does not fit must
say so and carry a change that, applied, fits. Multi-device plans run ``scripts/plan.py`` in a subprocess
(it sets the virtual CPU device count before JAX starts).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from train_helpers import ROOT, S, T, load_config

from deemo_jax import exit_codes, sharding
from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.train import plan
from deemo_jax.train.config import model_config
from deemo_jax.train.hlo_memory import replay_temporaries
from deemo_jax.train.partition import TrainableFilter, path_string
from deemo_jax.train.program import make_tx

# The paper's instruct config (bf16 frozen parts, paper trainable set) at test size.
TINY = {"model.preset": "tiny_1layer", "data.max_length": 64, "data.num_frames": 1, "data.num_audio_clips": 1,
        "data.shard_dir": "/nonexistent/shards"}
# LLM-dominated variant for the temporaries: the demo's wider 2-layer LLM over longer sequences.
LLM_HEAVY = {**TINY, "model.preset": "demo", "data.max_length": 192, "train.global_batch_size": 4}


def tiny_config(**overrides):
    return plan.with_overrides(load_config("instruct.py"), {**TINY, **overrides})


def run_plan(devices: int, overrides: dict, tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"plan_{devices}.json"
    args = [sys.executable, str(ROOT / "scripts" / "plan.py"), f"--config={ROOT / 'configs' / 'instruct.py'}",
            "--devices", str(devices), "--gpu", "a100-40g", "--no-generation", "--json", str(out), *extra,
            *(f"--config.{k}={v}" for k, v in overrides.items())]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return proc, (json.loads(out.read_text()) if out.is_file() else {})


def analytic(cfg, mesh_shape: dict[str, int]) -> dict[str, int]:
    """Per-device bytes from the config alone: every parameter's elements x dtype bytes / its shards."""
    model_cfg = model_config(cfg, DeemoLlamaConfig.preset(cfg.model.preset).llm.vocab_size)
    model = nnx.eval_shape(lambda: DeemoLlama(model_cfg, rngs=nnx.Rngs(0)))
    trainable = TrainableFilter(cfg.trainable)
    out = {"frozen": 0, "trainable": 0, "frozen_count": 0, "trainable_count": 0}
    for path, variable in nnx.state(model).flat_state():
        value = variable.get_value()
        spec = sharding.logical_to_spec(sharding.variable_logical_axes(variable))
        shards = 1
        for dim, entry in zip(value.shape, tuple(spec) + (None,) * value.ndim, strict=False):
            size = math.prod(mesh_shape[a] for a in ((entry,) if isinstance(entry, str) else entry or ()))
            shards *= size if dim % size == 0 else 1
        kind = "trainable" if trainable.matches(path_string(path)) else "frozen"
        out[kind] += value.size * jnp.dtype(value.dtype).itemsize // shards
        out[f"{kind}_count"] += value.size
    graphdef, params, rest = nnx.split(model, trainable, ...)
    optimizer = nnx.eval_shape(lambda: nnx.Optimizer(nnx.merge(graphdef, params, rest), make_tx(cfg)[0],
                                                     wrt=trainable))
    out["scalars"] = sum(1 for leaf in jax.tree.leaves(nnx.state(optimizer)) if leaf.ndim == 0)
    micro = cfg.train.global_batch_size // cfg.train.grad_accum_steps // (mesh_shape["data"] * mesh_shape["fsdp"])
    tokens = 3 * cfg.train.grad_accum_steps * micro * cfg.data.max_length * 4
    frames = cfg.train.grad_accum_steps * micro * cfg.data.num_frames * 224 * 224 * 3
    fbank = cfg.train.grad_accum_steps * micro * cfg.data.num_audio_clips * 128 * 204 * 4
    out["batch"] = tokens + frames + fbank
    return out


def check_bytes(result: dict, cfg, mesh_shape: dict[str, int]) -> None:
    want = analytic(cfg, mesh_shape)
    assert result["frozen_params"] == want["frozen"]
    assert result["trainable_params"] == want["trainable"]
    # AdamW: two float32 moments per trainable value plus int32 step counters (replicated).
    assert result["optimizer_state"] == 2 * want["trainable"] + 4 * want["scalars"]
    assert result["batch"] == want["batch"]
    # XLA's own count of the step's inputs: the four above and the step number.
    parts = ("frozen_params", "trainable_params", "optimizer_state", "batch")
    assert result["xla_arguments"] == sum(result[k] for k in parts) + 4
    if math.prod(mesh_shape.values()) == 1:  # one device: the whole model in its dtypes
        assert want["frozen"] == 2 * want["frozen_count"] and want["trainable"] == 4 * want["trainable_count"]


def plan_one_device(**overrides) -> plan.TrainPlan:
    """In-process plan of the LLM-heavy tiny config on this process's first CPU device, for an A100-40G."""
    return plan.plan_train(tiny_config(**{**LLM_HEAVY, **overrides}), plan.gpu_target("a100-40g"), jax.devices()[:1])


@pytest.fixture(scope="module")
def base_plan() -> plan.TrainPlan:
    return plan_one_device()


def test_one_device_bytes_are_the_analytic_figures(base_plan):
    check_bytes(dataclasses.asdict(base_plan), tiny_config(**LLM_HEAVY), {"data": 1, "fsdp": 1, "tensor": 1})
    assert base_plan.fits and base_plan.total <= base_plan.budget
    assert not [n for n in base_plan.notes if "approximate" in n]  # the schedule replay agrees with XLA
    assert base_plan.useful_flops > 0 and base_plan.xla_flops_per_device > 0
    assert base_plan.step_time_s["40%"] == pytest.approx(base_plan.useful_flops / (312e12 * 0.4))


@pytest.mark.slow
def test_temporaries_grow_with_batch_and_length_and_drop_with_remat(base_plan):
    assert plan_one_device(**{"train.global_batch_size": 8}).temporaries > base_plan.temporaries
    assert plan_one_device(**{"data.max_length": 384}).temporaries > base_plan.temporaries
    assert plan_one_device(**{"model.remat": True}).temporaries < base_plan.temporaries


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 8])
def test_multi_device_bytes_are_the_analytic_figures(devices, tmp_path):
    overrides = {**TINY, "train.global_batch_size": 8}
    proc, result = run_plan(devices, overrides, tmp_path)
    assert proc.returncode == exit_codes.OK, proc.stderr[-2000:]
    train = result["train"]
    assert train["run"]["mesh"] == [1, devices, 1]  # configs/instruct.py: fsdp = all devices
    check_bytes(train, tiny_config(**overrides), {"data": 1, "fsdp": devices, "tensor": 1})
    single = analytic(tiny_config(**overrides), {"data": 1, "fsdp": 1, "tensor": 1})
    assert train["frozen_params"] < single["frozen"]  # fsdp splits the frozen weights


@pytest.mark.slow
def test_a_config_that_does_not_fit_gets_a_change_that_fits(base_plan, tmp_path):
    base = base_plan
    fixed = base.xla_arguments + base.batch + base.outputs
    budget = fixed + base.temporaries // 2  # the parameters fit, half the temporaries do not
    memory_gib = budget / (plan.JAX_MEM_FRACTION * (1 - plan.SAFETY_MARGIN)) / plan.GiB
    proc, result = run_plan(1, LLM_HEAVY, tmp_path, "--gpu-memory-gib", f"{memory_gib:.9f}",
                            "--mem-fraction", str(plan.JAX_MEM_FRACTION))
    assert proc.returncode == exit_codes.USAGE, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "does not fit" in proc.stderr and "fits with --config." in proc.stderr
    suggestion = result["train"]["suggestion"]
    assert suggestion["total"] <= suggestion["budget"]
    flags = dict(flag[len("--config."):].split("=", 1) for flag in suggestion["flags"])
    applied, fixed_result = run_plan(suggestion["devices"], {**LLM_HEAVY, **flags}, tmp_path,
                                     "--gpu-memory-gib", f"{memory_gib:.9f}",
                                     "--mem-fraction", str(plan.JAX_MEM_FRACTION))
    assert applied.returncode == exit_codes.OK, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert fixed_result["train"]["fits"]


def test_find_max_batch_doubles_then_bisects(monkeypatch):
    tried = []

    def fake_plan(cfg, target, devices, **_):  # fits up to a batch of 11
        batch = cfg.train.global_batch_size
        tried.append(batch)
        return types.SimpleNamespace(fits=batch <= 11, run=types.SimpleNamespace(global_batch_size=batch))

    monkeypatch.setattr(plan, "plan_train", fake_plan)
    monkeypatch.setattr(plan, "static_bytes", lambda *a: 0)
    best = plan.find_max_batch(tiny_config(), plan.gpu_target("a100-40g"), jax.devices()[:1])
    assert best.run.global_batch_size == 11
    assert tried == [1, 2, 4, 8, 16, 12, 10, 11]


def test_candidates_keep_the_recipe_before_changing_it():
    cfg = tiny_config(**{"train.global_batch_size": 4})
    found = [overrides for overrides, _ in plan._candidates(cfg, 1, 4)]
    assert found[0] == {"model.remat": True}
    assert {"train.grad_accum_steps": 2} in found and {"model.remat": True, "train.grad_accum_steps": 4} in found
    more = [o for o in found if "mesh.fsdp" in o]
    assert more[0] == {"model.remat": True, "mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 1}
    assert found[-1] == {"model.remat": True, "train.global_batch_size": 1}  # a smaller batch comes last


def test_replay_finds_the_float32_copies_of_bf16_weights():
    """XLA:CPU converts a bf16 weight to float32 for its matmuls and keeps the copy from forward to backward."""
    def loss(x, w):
        return jnp.sum(jnp.tanh(jnp.tanh(x @ w) @ w.T))

    args = (jax.ShapeDtypeStruct((64, 512), jnp.bfloat16), jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16))
    compiled = jax.jit(jax.grad(loss)).lower(*args).compile()
    replay = replay_temporaries(compiled.as_text())
    assert replay.peak == pytest.approx(compiled.memory_analysis().temp_size_in_bytes, rel=0.1)
    assert replay.upcasts >= 1 and replay.upcast_bytes >= 512 * 1024 * 4
    assert replay.peak - replay.peak_without_upcasts >= 512 * 1024 * 4


def test_remat_differentiates_through_a_frozen_llm():
    """The plan's remat suggestion must run: remat'd layers whose weights the step closes over (frozen)."""
    from deemo_jax.models.llama import Llama, LlamaConfig

    ids = jnp.ones((2, 8), jnp.int32)
    grads = []
    for remat in (False, True):
        graphdef, state = nnx.split(Llama(LlamaConfig.tiny(remat=remat), rngs=nnx.Rngs(0)))

        def loss(scale, state, graphdef=graphdef):
            model = nnx.merge(graphdef, state)
            return jnp.sum(model(inputs_embeds=model.embed(ids) * scale)[0])

        grads.append(jax.jit(jax.grad(loss))(1.0, state))
    assert float(grads[1]) == pytest.approx(float(grads[0]), rel=1e-6)


@pytest.mark.slow
def test_check_run_plans_the_exact_run_on_this_host(corpus, tmp_path):
    """The dry-run hook: the run's own shards (frame/clip counts) and tokenizer, this process's devices."""
    cfg = plan.with_overrides(load_config("instruct.py", "demo"), {
        "workdir": str(tmp_path / "run"), "data.shard_dir": str(corpus["shards"]),
        "data.tokenizer_path": str(corpus["tokenizer"]), "model.preset": "tiny_1layer", "data.max_length": 128,
        "train.global_batch_size": 4})
    report = plan.check_run(cfg)
    assert report.fits and report.target == "host RAM" and report.cpu_upcasts == 0
    assert (report.run.num_frames, report.run.num_clips) == (T, S)  # from the shards' metadata.json
    assert not (tmp_path / "run").exists()  # nothing written
    with pytest.raises(plan.WillNotFitError, match="does not fit"):
        plan.check_run(cfg, margin=1 - 1e-9)


@pytest.mark.slow
def test_train_dry_run_prints_the_plan_and_exits_before_training(corpus, tmp_path, capsys, monkeypatch):
    from train_helpers import tiny_args

    from deemo_jax.train import cli

    workdir = tmp_path / "run"
    args = ["scripts/train.py", *tiny_args(corpus, workdir), "--config.dry_run=True"]
    assert cli.main(args) == exit_codes.OK
    out = capsys.readouterr().out
    assert "per device on host RAM" in out and "-> FITS" in out and f"{T} frames, {S} audio clips" in out
    assert not workdir.exists()  # nothing trained, nothing written
    # The same run with no room left: refused with exit 2 and the change that fits.
    check_run = plan.check_run
    monkeypatch.setattr(plan, "check_run", lambda cfg: check_run(cfg, margin=1 - 1e-9))
    assert cli.main(args) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert "the train step does not fit" in err and "budget" in err
    assert not workdir.exists()
