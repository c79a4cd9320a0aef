"""The jitted train step in-process: gradient accumulation = full batch; frozen weights never change; the
optimizer holds state for the trainable parameters only."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deemo_jax.models.deemo_llama import DeemoLlama, DeemoLlamaConfig
from deemo_jax.models.llama import LlamaConfig
from deemo_jax.train.optimizer import make_optimizer
from deemo_jax.train.partition import TrainableFilter
from deemo_jax.train.step import make_train_step, supervised_count, token_loss_sum

TRAINABLE = ("video_qformer", "video_frame_position_embedding", "llama_proj")
FAST = {"xla_backend_optimization_level": 0}  # compile option: these tiny programs compile 2x faster


def video_only_config() -> DeemoLlamaConfig:
    r = dataclasses.replace
    c = DeemoLlamaConfig.tiny(llm=LlamaConfig.tiny(num_hidden_layers=1))
    return r(c, vit=r(c.vit, depth=1), image_qformer=r(c.image_qformer, num_layers=1),
             video_qformer=r(c.video_qformer, num_layers=1), audio_encoder=None, audio_qformer=None)


def make_batch(cfg: DeemoLlamaConfig, n: int, length: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(3, cfg.llm.vocab_size, (n, length)).astype(np.int32)
    ids[:, 1:1 + cfg.num_video_tokens] = cfg.video_placeholder_id
    labels = np.where(np.arange(length) > 12, ids, -100).astype(np.int32)
    labels[0, 20:] = -100  # rows with different numbers of supervised tokens
    return {
        "input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
        "frames": rng.integers(0, 255, (n, 2, 224, 224, 3), dtype=np.uint8),
    }


def split_micro(batch: dict, accum: int) -> dict:
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


def test_token_loss_sum_matches_manual_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = np.array([[-100, -100, 3, 4, -100], [-100, 1, -100, -100, 6]])
    total = token_loss_sum(jnp.asarray(logits), jnp.asarray(labels))
    terms = []
    for b in range(2):
        for t in range(4):
            target = labels[b, t + 1]
            if target != -100:
                z = logits[b, t]
                terms.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[target])
    assert int(supervised_count(jnp.asarray(labels))) == len(terms) == 4
    np.testing.assert_allclose(float(total), np.sum(terms), rtol=1e-6)


@pytest.fixture(scope="module")
def setup(numpy_init):
    cfg = video_only_config()
    model = numpy_init(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(0)))
    trainable = TrainableFilter(TRAINABLE)
    graphdef, params, frozen = nnx.split(model, trainable, ...)
    return cfg, model, trainable, graphdef, params, frozen


def _copy(state):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def test_accumulated_gradient_equals_full_batch(setup):
    cfg, model, trainable, graphdef, params, frozen = setup
    # SGD with lr 1: new params = params - grad, so the update *is* the gradient.
    opt_graphdef, opt_state = nnx.split(nnx.Optimizer(model, optax.sgd(1.0), wrt=trainable))
    step = make_train_step(graphdef, opt_graphdef, seed=0, dropout=False, module_names=list(TRAINABLE))
    batch = make_batch(cfg, 4)
    results = {}
    for accum in (1, 2):
        args = (_copy(params), _copy(opt_state), frozen, split_micro(batch, accum), jnp.int32(0))
        compiled = step.lower(*args).compile(FAST)
        new_params, _, metrics = compiled(*args)
        results[accum] = (jax.device_get(new_params), jax.device_get(metrics))
    (p1, m1), (p2, m2) = results[1], results[2]
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
    assert m1["supervised_tokens"] == m2["supervised_tokens"] == int((batch["labels"][:, 1:] != -100).sum())
    flat1, flat2 = nnx.to_flat_state(p1), nnx.to_flat_state(p2)
    before = dict(nnx.to_flat_state(params))
    for (path, a), (_, b) in zip(flat1, flat2, strict=True):
        grad1, grad2 = before[path][...] - a[...], before[path][...] - b[...]
        np.testing.assert_allclose(grad2, grad1, rtol=1e-4, atol=1e-7, err_msg=str(path))
    # The full-batch loss is the mean over supervised tokens of the whole batch, not a mean of row means.
    logits = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]), jnp.asarray(batch["frames"]))
    logp = jax.nn.log_softmax(np.asarray(logits)[:, :-1], -1)
    targets = batch["labels"][:, 1:]
    picked = np.take_along_axis(np.asarray(logp), np.where(targets >= 0, targets, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(m1["loss"], -picked[targets >= 0].mean(), rtol=1e-5)


def test_frozen_weights_never_change_and_optimizer_state_is_trainable_only(setup):
    cfg, model, trainable, graphdef, params, frozen = setup
    tx, _ = make_optimizer(init_lr=1e-2, min_lr=1e-3, warmup_lr=1e-3, warmup_steps=1, total_steps=10,
                           weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    optimizer = nnx.Optimizer(model, tx, wrt=trainable)
    opt_graphdef, opt_state = nnx.split(optimizer)
    moment_paths = {path for path, _ in nnx.to_flat_state(opt_state) if "mu" in path}
    param_paths = {path for path, _ in nnx.to_flat_state(params)}
    assert {path[path.index("mu") + 1:] for path in moment_paths} == param_paths  # moments for trainable only
    assert {p[0] for p in param_paths} == set(TRAINABLE)
    opt_elements = sum(x.size for x in jax.tree.leaves(opt_state))
    trainable_elements = sum(x.size for x in jax.tree.leaves(params))
    assert opt_elements == 2 * trainable_elements + 3  # mu, nu + step and two counts
    assert sum(x.size for x in jax.tree.leaves(frozen)) > trainable_elements

    frozen_before = jax.device_get(frozen)
    params_before = jax.device_get(params)
    step = make_train_step(graphdef, opt_graphdef, seed=0, dropout=True, module_names=list(TRAINABLE))
    batch = split_micro(make_batch(cfg, 2), 1)
    args = (_copy(params), opt_state, frozen, batch, jnp.int32(0))
    compiled = step.lower(*args).compile(FAST)
    new_params, new_opt, metrics = compiled(*args)
    for index in (1, 2):
        new_params, new_opt, metrics = compiled(new_params, new_opt, frozen, batch, jnp.int32(index))
    assert np.isfinite(metrics["loss"])
    for (path, before), (_, after) in zip(nnx.to_flat_state(frozen_before), nnx.to_flat_state(frozen), strict=True):
        np.testing.assert_array_equal(np.asarray(after[...]), np.asarray(before[...]), err_msg=str(path))
    # Every trainable parameter moves, except the attention key biases: softmax is invariant to adding the same
    # q.b_k to all of a query's logits, so their gradient is zero up to rounding (and AdamW may or may not move
    # them by that noise).
    pairs = zip(nnx.to_flat_state(params_before), nnx.to_flat_state(new_params), strict=True)
    unchanged = [path for (path, a), (_, b) in pairs if np.array_equal(np.asarray(a[...]), np.asarray(b[...]))]
    assert [path for path in unchanged if path[-2:] != ("key", "bias")] == []
    assert int(nnx.to_flat_state(new_opt)[-1][1][...]) == 3  # optimizer step count
