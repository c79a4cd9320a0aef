"""Training-step throughput: the deemo_jax train step vs a PyTorch eager reference of the same model.

    python benchmarks/train_step.py                    # CPU: mid-size DeemoLlama, JAX vs PyTorch, same batch
    python benchmarks/train_step.py --breakdown        # + where the JAX step's time goes
    python benchmarks/train_step.py --gpu              # GPU: the real 7B instruct model (random weights, bf16):
                                                       #   step time, tokens/s and useful MFU
    python benchmarks/train_step.py --gpu --dry-run    # the --gpu code path at a reduced size (runs on CPU)

Both sides train the same architecture with the paper's split: frozen EVA ViT, ln_vision, image Q-Former,
ImageBind audio tower and LLaMA; trainable video/audio Q-Formers (with their query tokens), frame/clip position
embeddings and the two projections; AdamW on the trainable parameters with gradient clipping; Q-Former
dropout 0.1 active on both sides. Same shapes, same batch (ids, placeholders, labels, frames, fbank), fp32
on CPU; the weights are random and drawn independently on each side (only the work is compared).

JAX: ``deemo_jax.train.step.make_train_step`` (the step ``scripts/train.py`` runs: one jit over the split
trainable/optimizer/frozen state, donated state, frozen encoders under ``stop_gradient``).
PyTorch, set up as its users run it at its best on CPU: transformers modules of the parity tests
(``Blip2VisionModel`` for EVA, ``Blip2QFormerModel``, ``LlamaForCausalLM``; the ImageBind audio reference
of ``deemo_jax.convert.torch_reference``) with ``attn_implementation="sdpa"``, frozen weights with
``requires_grad=False`` and the frozen encoders run under ``torch.no_grad()`` in eval mode,
``torch.optim.AdamW`` on the trainable parameters, ``torch.set_num_threads(os.cpu_count())``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

from common import add_cpu_dots_argument, apply_cpu_dots, machine_line, time_interleaved

TRAINABLE = ("video_qformer", "video_frame_position_embedding", "llama_proj", "audio_qformer",
             "audio_position_embedding", "audio_llama_proj")




def mid_config():
    """A CPU-sized DeemoLlama with the real structure (~0.3 B parameters, mostly the LLM)."""
    from deemo_jax.models.deemo_llama import DeemoLlamaConfig
    from deemo_jax.models.eva_vit import EvaViTConfig
    from deemo_jax.models.imagebind_audio import ImageBindAudioConfig
    from deemo_jax.models.llama import LlamaConfig
    from deemo_jax.models.qformer import QFormerConfig

    width = 256
    qformer = dict(hidden_size=width, num_heads=4, intermediate_size=4 * width, encoder_width=width)
    return DeemoLlamaConfig(
        vit=EvaViTConfig(width=width, depth=4, num_heads=4, mlp_dim=4 * width),
        image_qformer=QFormerConfig(num_layers=4, cross_attention_freq=2, num_queries=32, **qformer),
        video_qformer=QFormerConfig(num_layers=2, cross_attention_freq=1, num_queries=32, **qformer),
        audio_encoder=ImageBindAudioConfig(width=width, depth=4, num_heads=4, mlp_dim=4 * width, out_dim=width),
        audio_qformer=QFormerConfig(num_layers=2, cross_attention_freq=1, num_queries=8, **qformer),
        llm=LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                        num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-6),
    )


def make_batch(cfg, batch: int, seq: int, frames: int, clips: int, seed: int = 0) -> dict:
    """One synthetic DESIGN.md §3 batch: audio run, video run, a prompt and a supervised answer half."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.llm.vocab_size, (batch, seq)).astype(np.int32)
    ids[:, 0] = 1
    a, v = cfg.num_audio_tokens, cfg.num_video_tokens
    ids[:, 2:2 + a] = cfg.audio_placeholder_id
    ids[:, 4 + a:4 + a + v] = cfg.video_placeholder_id
    labels = np.full_like(ids, -100)
    labels[:, seq // 2:] = ids[:, seq // 2:]
    return {
        "input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels,
        "frames": rng.integers(0, 256, (batch, frames, 224, 224, 3), dtype=np.uint8),
        "fbank": rng.normal(size=(batch, clips, 1, 128, 204)).astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------------- JAX
def build_jax(cfg, *, mesh=None, seed: int = 0):
    """(step_fn, trainable, opt_state, frozen, module names, shardings) with random weights made on device."""
    import jax
    from flax import nnx

    from deemo_jax.models.deemo_llama import DeemoLlama
    from deemo_jax.train.optimizer import make_optimizer
    from deemo_jax.train.partition import TrainableFilter, batch_sharding, replicated, state_shardings
    from deemo_jax.train.step import make_train_step

    trainable = TrainableFilter(TRAINABLE)
    tx, _ = make_optimizer(init_lr=3e-5, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=10, total_steps=1000,
                           weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)

    def init():
        model = DeemoLlama(cfg, rngs=nnx.Rngs(seed))
        graphdef, params, frozen = nnx.split(model, trainable, ...)
        optimizer = nnx.Optimizer(model, tx, wrt=trainable)
        return params, nnx.state(optimizer), frozen

    abstract = nnx.eval_shape(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(seed)))
    graphdef, _, _ = nnx.split(abstract, trainable, ...)
    opt_graphdef = nnx.split(nnx.eval_shape(lambda: nnx.Optimizer(abstract, tx, wrt=trainable)))[0]
    names = sorted(n for n in TRAINABLE if hasattr(abstract, n))
    if mesh is None:
        params, opt_state, frozen = jax.jit(init)()
        step = make_train_step(graphdef, opt_graphdef, seed=seed, dropout=True, module_names=names)
        return step, params, opt_state, frozen, None
    shapes = jax.eval_shape(init)
    shardings = tuple(state_shardings(s, mesh) for s in shapes)
    with jax.set_mesh(mesh):
        params, opt_state, frozen = jax.jit(init, out_shardings=shardings)()
    batch_sh = {k: batch_sharding(mesh, 6 if k in ("frames", "fbank") else 3, leading=1)
                for k in ("input_ids", "attention_mask", "labels", "frames", "fbank")}
    step = make_train_step(graphdef, opt_graphdef, seed=seed, dropout=True, module_names=names,
                           shardings=(shardings[0], shardings[1], shardings[2], batch_sh), replicated=replicated(mesh))
    return step, params, opt_state, frozen, batch_sh


# --------------------------------------------------------------------------------------------------- torch
def build_torch(cfg):
    """The PyTorch reference model (module) and its AdamW optimizer."""
    import torch
    import transformers
    from torch import nn

    from deemo_jax.convert.torch_reference import ImageBindAudioReference
    from deemo_jax.models.deemo_llama import CLIP_MEAN, CLIP_STD

    def qformer(c):
        return transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig(
            hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
            intermediate_size=c.intermediate_size, encoder_hidden_size=c.encoder_width,
            cross_attention_frequency=c.cross_attention_freq, layer_norm_eps=c.layer_norm_eps, hidden_act="gelu",
            hidden_dropout_prob=c.hidden_dropout, attention_probs_dropout_prob=c.attention_dropout,
            attn_implementation="sdpa"))

    class TorchDeemo(nn.Module):
        def __init__(self):
            super().__init__()
            v, a, llm = cfg.vit, cfg.audio_encoder, cfg.llm
            self.visual_encoder = transformers.Blip2VisionModel(transformers.Blip2VisionConfig(
                hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                num_attention_heads=v.num_heads, image_size=v.img_size, patch_size=v.patch_size,
                layer_norm_eps=v.layer_norm_eps, qkv_bias=True, hidden_act="gelu", attn_implementation="sdpa"))
            self.visual_encoder.post_layernorm = nn.Identity()  # EVA has no final norm
            self.ln_vision = nn.LayerNorm(v.width, eps=cfg.ln_vision_eps)
            self.image_qformer = qformer(cfg.image_qformer)
            self.image_query_tokens = nn.Parameter(0.02 * torch.randn(1, cfg.image_qformer.num_queries,
                                                                      cfg.image_qformer.hidden_size))
            self.video_frame_position_embedding = nn.Embedding(cfg.max_frame_positions, cfg.video_qformer.encoder_width)
            self.video_qformer = qformer(cfg.video_qformer)
            self.video_query_tokens = nn.Parameter(0.02 * torch.randn(1, cfg.video_qformer.num_queries,
                                                                      cfg.video_qformer.hidden_size))
            self.llama_proj = nn.Linear(cfg.video_qformer.hidden_size, llm.hidden_size)
            self.audio_encoder = ImageBindAudioReference(width=a.width, depth=a.depth, heads=a.num_heads,
                                                         mlp_dim=a.mlp_dim, out_dim=a.out_dim)
            self.audio_position_embedding = nn.Embedding(cfg.max_audio_clips, cfg.audio_qformer.encoder_width)
            self.audio_qformer = qformer(cfg.audio_qformer)
            self.audio_query_tokens = nn.Parameter(0.02 * torch.randn(1, cfg.audio_qformer.num_queries,
                                                                      cfg.audio_qformer.hidden_size))
            self.audio_llama_proj = nn.Linear(cfg.audio_qformer.hidden_size, llm.hidden_size)
            self.llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
                num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
                num_key_value_heads=llm.num_key_value_heads, rms_norm_eps=llm.rms_norm_eps,
                rope_theta=llm.rope_theta, tie_word_embeddings=False, attn_implementation="sdpa"))
            self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))
            self.frozen = nn.ModuleList([self.visual_encoder, self.ln_vision, self.image_qformer,
                                         self.audio_encoder, self.llama])

        def train(self, mode: bool = True):
            super().train(mode)
            for module in self.frozen:  # frozen parts always in eval mode (LAVIS disabled_train)
                module.eval()
            return self

        def forward(self, ids, mask, labels, frames, fbank):
            b, t = frames.shape[:2]
            s = fbank.shape[1]
            with torch.no_grad():  # frozen encoders: no graph, no gradient
                pixels = frames.flatten(0, 1).permute(0, 3, 1, 2).float().div(255.0).sub(self.mean).div(self.std)
                feats = self.ln_vision(self.visual_encoder(pixel_values=pixels).last_hidden_state)
                queries = self.image_query_tokens.expand(b * t, -1, -1)
                frame_tokens = self.image_qformer(query_embeds=queries, encoder_hidden_states=feats).last_hidden_state
                audio = self.audio_encoder(fbank.flatten(0, 1))
            q, d = frame_tokens.shape[1:]
            frame_tokens = frame_tokens.view(b, t, q, d) + self.video_frame_position_embedding.weight[:t][None, :, None]
            video = self.video_qformer(query_embeds=self.video_query_tokens.expand(b, -1, -1),
                                       encoder_hidden_states=frame_tokens.reshape(b, t * q, d)).last_hidden_state
            video = self.llama_proj(video)
            audio = audio.view(b, s, -1) + self.audio_position_embedding.weight[:s][None]
            audio = self.audio_qformer(query_embeds=self.audio_query_tokens.expand(b, -1, -1),
                                       encoder_hidden_states=audio).last_hidden_state
            audio = self.audio_llama_proj(audio)
            vid, aud = ids == cfg.video_placeholder_id, ids == cfg.audio_placeholder_id
            embeds = self.llama.get_input_embeddings()(ids.masked_fill(vid | aud, 0))
            embeds = embeds.masked_scatter(vid[..., None], video).masked_scatter(aud[..., None], audio)
            logits = self.llama(inputs_embeds=embeds, attention_mask=mask).logits
            return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100)

    torch.manual_seed(0)
    model = TorchDeemo()
    trainable = []
    for name, param in model.named_parameters():
        train = name.split(".")[0] in TRAINABLE or name in ("video_query_tokens", "audio_query_tokens")
        param.requires_grad_(train)
        if train:
            trainable.append(param)
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    return model, optimizer, trainable


# ---------------------------------------------------------------------------------------------- drivers


def useful_flops(cfg, batch: int, seq: int, frames: int, clips: int):
    from deemo_jax.train.flops import example_flops

    per = example_flops(cfg, seq, frames, clips)
    return per, per.total * batch


def run_cpu(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from deemo_jax.models.llama import count_params

    torch.set_num_threads(os.cpu_count())
    cfg = mid_config()
    print(machine_line())
    print(f"jax {jax.__version__} on {jax.devices()[0]}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), transformers {transformers.__version__}")
    host = make_batch(cfg, args.batch, args.seq, args.frames, args.clips)
    tokens = int(host["attention_mask"].sum())

    step, params, opt_state, frozen, _ = build_jax(cfg)
    n_train = count_params(params)
    n_total = n_train + count_params(frozen)
    print(f"model: {n_total / 1e6:.1f} M parameters ({n_train / 1e6:.1f} M trainable); batch {args.batch} x "
          f"{args.seq} tokens, {args.frames} frames, {args.clips} audio clips")
    jax_batch = {k: jnp.asarray(v[None]) for k, v in host.items()}
    compiled = step.lower(params, opt_state, frozen, jax_batch, jnp.int32(0)).compile()
    state = {"params": params, "opt": opt_state, "step": 0}

    def jax_step():
        state["params"], state["opt"], metrics = compiled(state["params"], state["opt"], frozen, jax_batch,
                                                          jnp.int32(state["step"]))
        state["step"] += 1
        jax.block_until_ready(metrics["loss"])
        state["loss"] = float(metrics["loss"])

    model, optimizer, trainable = build_torch(cfg)
    t_batch = {k: torch.from_numpy(v) for k, v in host.items()}
    t_batch["input_ids"] = t_batch["input_ids"].long()
    t_batch["labels"] = t_batch["labels"].long()

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(t_batch["input_ids"], t_batch["attention_mask"], t_batch["labels"], t_batch["frames"],
                     t_batch["fbank"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        state["torch_loss"] = loss.item()

    contenders = {"jax": jax_step, "torch": torch_step}
    if args.breakdown:
        contenders.update(breakdown_fns(cfg, frozen, state["params"], host))
    times = time_interleaved(contenders, args.warmup, args.iters)
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    per, flops = useful_flops(cfg, args.batch, args.seq, args.frames, args.clips)
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, list | tuple) else xla
    print(f"loss after the timed steps: jax {state['loss']:.4f}, torch {state['torch_loss']:.4f} "
          f"(random init: ~ln(vocab) = {np.log(cfg.llm.vocab_size):.2f})")
    print(f"JAX     : {jax_s:.3f} s/step = {1 / jax_s:.3f} steps/s, {tokens / jax_s:.0f} tokens/s, "
          f"{flops / jax_s / 1e9:.1f} useful GFLOP/s")
    print(f"PyTorch : {torch_s:.3f} s/step = {1 / torch_s:.3f} steps/s, {tokens / torch_s:.0f} tokens/s, "
          f"{flops / torch_s / 1e9:.1f} useful GFLOP/s")
    print(f"ratio JAX/PyTorch steps/s: {torch_s / jax_s:.2f}x (median of {args.iters} after {args.warmup} warm-up, "
          "interleaved)")
    print(f"useful FLOPs/step {flops / 1e9:.1f} G: frozen encoders {per.frozen_encoders * args.batch / flops:.0%}, "
          f"trainable Q-Formers/projections {per.trainable * args.batch / flops:.0%}, LLM fwd + activation bwd "
          f"{per.llm * args.batch / flops:.0%}; XLA cost analysis of the step: {xla.get('flops', 0) / 1e9:.1f} GFLOP")
    for name in contenders:
        if name not in ("jax", "torch"):
            part = statistics.median(times[name])
            print(f"  JAX {name}: {part:.3f} s ({part / jax_s:.0%} of the JAX step; timed interleaved with it)")


def breakdown_fns(cfg, frozen, params, host) -> dict:
    """Jitted, warmed-up parts of the step, timed alone: the frozen-encoder forward, the LLM forward + backward
    to its input embeddings."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from deemo_jax.models.deemo_llama import DeemoLlama
    from deemo_jax.train.partition import TrainableFilter
    from deemo_jax.train.step import token_loss_sum

    graphdef = nnx.split(nnx.eval_shape(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(0))), TrainableFilter(TRAINABLE), ...)[0]
    frames, fbank = jnp.asarray(host["frames"]), jnp.asarray(host["fbank"])
    ids, labels = jnp.asarray(host["input_ids"]), jnp.asarray(host["labels"])

    @jax.jit
    def encoders(params, frozen, frames, fbank):
        m = nnx.merge(graphdef, params, frozen)
        b, t = frames.shape[:2]
        pixels = frames.reshape(b * t, 224, 224, 3).astype(jnp.float32) / 255.0
        image = m.image_qformer(m.ln_vision(m.visual_encoder(pixels)))
        audio = m.audio_encoder(fbank.reshape(-1, *fbank.shape[2:]))
        return image.sum() + audio.sum()

    @jax.jit
    def llm(params, frozen, embeds, labels):
        m = nnx.merge(graphdef, params, frozen)
        return jax.grad(lambda e: token_loss_sum(m.llama(inputs_embeds=e)[0], labels))(embeds)

    embeds = 0.02 * jax.random.normal(jax.random.key(0), (*ids.shape, cfg.llm.hidden_size), jnp.float32)
    fns = {
        "frozen encoders forward": lambda: jax.block_until_ready(encoders(params, frozen, frames, fbank)),
        "LLM forward + activation backward": lambda: jax.block_until_ready(llm(params, frozen, embeds, labels)),
    }
    for fn in fns.values():
        fn()
    return fns


def instruct_config(args: argparse.Namespace, preset: str, attention: str):
    """configs/instruct.py with this run's model and shapes; no shard metadata, so the planner takes these counts."""
    import importlib.util
    from pathlib import Path

    from deemo_jax.train.plan import with_overrides

    path = Path(__file__).resolve().parents[1] / "configs" / "instruct.py"
    spec = importlib.util.spec_from_file_location("_instruct", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return with_overrides(module.get_config(None), {
        "model.preset": preset, "model.remat": args.remat, "model.attention_impl": attention,
        "train.global_batch_size": args.batch, "data.max_length": args.seq, "data.num_frames": args.frames,
        "data.num_audio_clips": args.clips, "data.shard_dir": "/nonexistent", "workdir": "/tmp/train_step_plan"})


def device_peak(device) -> tuple[int | None, int | None]:
    """(peak bytes in use, allocator limit) of ``device``, printed; (None, None) without memory stats (CPU)."""
    stats = device.memory_stats() or {}
    peak, limit = stats.get("peak_bytes_in_use"), stats.get("bytes_limit")
    if peak is None:
        print(f"peak device memory: n/a (memory_stats() reports no peak on {device.platform})")
    else:
        print(f"peak device memory: {peak / 2**30:.2f} GiB of the {(limit or 0) / 2**30:.1f} GiB allocator limit "
              "(device 0, since the process started: init, compile, steps)")
    return peak, limit


def time_decode(cfg, params, frozen, host: dict, new_tokens: int) -> float:
    """Greedy generation of ``new_tokens`` for the batch's prompts (their first half), timed on the second call."""
    import numpy as np
    from flax import nnx

    from deemo_jax.eval.generate import GenerationConfig, generate
    from deemo_jax.models.deemo_llama import DeemoLlama
    from deemo_jax.train.partition import TrainableFilter

    graphdef = nnx.split(nnx.eval_shape(lambda: DeemoLlama(cfg, rngs=nnx.Rngs(0))), TrainableFilter(TRAINABLE), ...)[0]
    model = nnx.merge(graphdef, params, frozen)
    prompt = host["input_ids"][:, : host["input_ids"].shape[1] // 2]
    gen = GenerationConfig(max_new_tokens=new_tokens, eos_id=None)  # no early stop: exactly new_tokens per row

    def run():
        return generate(model, prompt, np.ones_like(prompt), gen, frames=host["frames"], fbank=host["fbank"])

    run()
    start = time.perf_counter()
    tokens = int(run().num_tokens.sum())
    seconds = time.perf_counter() - start
    print(f"decode: {tokens} tokens ({prompt.shape[0]} x {new_tokens}, greedy, prompt {prompt.shape[1]} tokens) in "
          f"{seconds:.2f} s = {tokens / seconds:.1f} tokens/s (second call; encoders and prefill included)")
    return tokens / seconds


def compare_plan(cfg, peak: int | None, mirrored: bool, path: str, measured: dict) -> None:
    """Plan ``cfg``'s step with the fit planner on this process's devices, print it against the measured peak
    and write both (with the whole plan and ``measured``) to ``path``."""
    import json

    import jax

    from deemo_jax.train import plan

    if not mirrored:
        print("planner: no config preset mirrors the dry run's mid-size model; planning preset "
              f"{cfg.model.preset} instead (the code path only: its numbers are not comparable)")
    p = plan.plan_train(cfg, plan.local_target(), jax.devices())
    vs = f"measured peak {peak / plan.GiB:.3g} GiB ({(p.total - peak) / peak:+.0%})" if peak else "measured peak n/a"
    print(f"planner: total {p.total / plan.GiB:.3g} GiB vs {vs}; temporaries {p.temporaries / plan.GiB:.3g} GiB, "
          f"budget {p.budget / plan.GiB:.3g} GiB on {p.target} ({'fits' if p.fits else 'DOES NOT FIT'}); "
          f"compile {p.compile_s:.1f} s")
    for note in p.notes:
        print(f"planner note: {note}")
    with open(path, "w") as f:
        json.dump({"planner_total_bytes": p.total, "measured_peak_bytes": peak, "measured": measured,
                   "plan": dataclasses.asdict(p)}, f, indent=2)
    print(f"wrote {path}")


def run_gpu(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from deemo_jax import sharding
    from deemo_jax.train import plan
    from deemo_jax.train.flops import peak_flops_per_device

    batch, seq, frames, clips = args.batch, args.seq, args.frames, args.clips
    devices = jax.devices()
    print(f"devices: {len(devices)} x {devices[0].device_kind}; jax {jax.__version__}")
    attention = "cudnn" if args.cudnn else "xla"
    if args.cudnn and devices[0].platform == "cpu":
        print("attention: cudnn requested, but the cpu backend has no cuDNN: xla attention instead")
        attention = "xla"
    preset = args.preset or (None if args.dry_run else "deemo_7b")
    config = instruct_config(args, preset or "tiny_1layer", attention)
    if preset is None:  # the dry run's default: the mid-size model of the CPU benchmark
        cfg = dataclasses.replace(mid_config(), frozen_dtype=jnp.bfloat16).with_attention_impl(attention)
        cfg, name = cfg.with_overrides({"llm": {"remat": args.remat}}), "dry run, mid-size model"
    else:  # the model a training run of this config builds (the planner's)
        cfg = plan.plan_model_config(config, plan.local_target(), strict=False)[0]
        name = f"{'dry run, ' if args.dry_run else ''}preset {preset}"
    if args.decode and seq // 2 < 4 + cfg.num_audio_tokens + cfg.num_video_tokens:
        raise SystemExit(f"--decode: --seq {seq} is too short for a prompt (half of it) holding the placeholders")
    mesh = sharding.make_mesh(1, -1, 1)
    if batch % len(devices):
        raise SystemExit(f"--batch {batch} must be divisible by the {len(devices)} devices (fsdp mesh)")
    step, params, opt_state, frozen, batch_sh = build_jax(cfg, mesh=mesh)
    host = make_batch(cfg, batch, seq, frames, clips)
    with jax.set_mesh(mesh), sharding.logical_rules():
        device_batch = {k: jax.device_put(v[None], batch_sh[k]) for k, v in host.items()}
        start = time.perf_counter()
        compiled = step.lower(params, opt_state, frozen, device_batch, jnp.int32(0)).compile()
        print(f"compile: {time.perf_counter() - start:.1f} s")
        times = []
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            params, opt_state, metrics = compiled(params, opt_state, frozen, device_batch, jnp.int32(i))
            loss = float(metrics["loss"])
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens = batch * seq
    per, flops = useful_flops(cfg, batch, seq, frames, clips)
    peak = peak_flops_per_device(devices[0].device_kind)
    achieved = flops / step_s / len(devices)
    mfu = f"{achieved / peak:.1%}" if peak else "n/a (unknown peak for this device)"
    print(f"{name}: batch {batch} x {seq} tokens, {frames} frames, {clips} clips; attention {attention}, remat "
          f"{'on' if args.remat else 'off'}; loss {loss:.3f}")
    print(f"step {step_s * 1000:.1f} ms, {tokens / step_s:.0f} tokens/s, useful {achieved / 1e12:.3g} TFLOP/s per "
          f"device, useful MFU {mfu} (FLOPs/step {flops / 1e12:.2f} T: encoders "
          f"{per.frozen_encoders * batch / flops:.0%}, trainable {per.trainable * batch / flops:.0%}, LLM "
          f"{per.llm * batch / flops:.0%})", flush=True)
    peak_bytes, limit = device_peak(devices[0])
    measured = {"step_s": step_s, "tokens_per_s": tokens / step_s, "useful_mfu": achieved / peak if peak else None,
                "peak_bytes_in_use": peak_bytes, "bytes_limit": limit, "decode_tokens_per_s": None}
    if args.decode:
        with jax.set_mesh(mesh), sharding.logical_rules():
            measured["decode_tokens_per_s"] = time_decode(cfg, params, frozen, host, args.decode)
    if args.plan_json:
        compare_plan(config, peak_bytes, preset is not None, args.plan_json, measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the 7B instruct model on the accelerator(s)")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: a reduced model (runs on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="examples per step (CPU 2, GPU 8)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (CPU 256, GPU 512)")
    parser.add_argument("--frames", type=int, default=None, help="frames per example (CPU 4, GPU 8)")
    parser.add_argument("--clips", type=int, default=None, help="audio clips per example (CPU 4, GPU 8)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true",
                        help="CPU: also time the JAX frozen encoders and the LLM alone (interleaved with the steps)")
    parser.add_argument("--cudnn", action="store_true",
                        help="GPU: cuDNN flash attention (ViT, ImageBind, LLM: model.attention_impl=cudnn; xla on CPU)")
    parser.add_argument("--remat", action="store_true", help="GPU: rematerialise LLM layers")
    parser.add_argument("--preset", default=None,
                        help="GPU: a preset of deemo_jax.models.deemo_llama.PRESETS, built as configs/instruct.py "
                        "builds it (default deemo_7b; with --dry-run the mid-size model of the CPU benchmark)")
    parser.add_argument("--plan-json", default=None, metavar="PATH",
                        help="GPU: also plan the step with deemo_jax.train.plan; print it against the measured peak "
                        "memory and write both to PATH")
    parser.add_argument("--decode", type=int, default=0, metavar="N",
                        help="GPU: also time greedy generation of N new tokens for the batch (0: off)")
    add_cpu_dots_argument(
        parser, default="ynnpack", note=" (Eigen is faster for the forward-only benchmark, slower here)"
    )
    args = parser.parse_args()
    defaults = (2, 128, 2, 2) if args.dry_run else (8, 512, 8, 8) if args.gpu else (2, 256, 4, 4)
    for name, default in zip(("batch", "seq", "frames", "clips"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    if args.decode < 0:
        parser.error("--decode must be >= 0")
    if not args.gpu and (args.dry_run or args.preset or args.plan_json or args.decode):
        parser.error("--dry-run, --preset, --plan-json and --decode go with --gpu")
    if not args.gpu:
        apply_cpu_dots(args.jax_cpu_dots)
    (run_gpu if args.gpu else run_cpu)(args)


if __name__ == "__main__":
    main()
