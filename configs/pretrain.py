"""Caption pre-training of the video branch (Video-LLaMA stage 1, reference_spec §10.4): WebVid/CC3M-style
caption records (``kind == "caption"``: frames + caption; 1 frame for images), no audio branch built.

    # Video-LLaMA VL stage 1: frozen EVA ViT-g, BLIP-2 image Q-Former and LLM; trainable video Q-Former (queries
    # included), frame position embedding and llama_proj; lr 1e-4 -> 8e-5, 2500 warm-up steps, batch 32 / GPU.
    python scripts/train.py --config=configs/pretrain.py --config.workdir=runs/pretrain \
        --config.data.shard_dir=shards/webvid --config.checkpoints.eva_vit=converted/eva_vit_g \
        --config.checkpoints.blip2=converted/blip2 --config.checkpoints.llm=converted/vicuna-7b

    # Then instruction tuning starts from its video branch (stage-1 -> stage-2 hand-off is one flag):
    python scripts/train.py --config=configs/instruct.py ... --config.checkpoints.init_trainable=runs/pretrain

    # A few-step smoke run of a tiny model (random frozen parts) on caption shards, e.g. in tests:
    python scripts/train.py --config=configs/pretrain.py:small --config.data.shard_dir=DIR \
        --config.data.tokenizer_path=TOKENIZER_DIR --config.workdir=runs/pretrain_small
"""

from ml_collections import ConfigDict

from deemo_jax.train.config import base_config

VARIANTS = ("paper", "small")
VIDEO_TRAINABLE = ("video_qformer", "video_frame_position_embedding", "llama_proj")


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"configs/pretrain.py: unknown variant {variant!r}; use one of {VARIANTS}")
    c = base_config()
    c.workdir = "runs/pretrain"
    c.trainable = VIDEO_TRAINABLE
    c.model.use_audio = False  # the audio branch is not built at all
    c.data.use_audio = False
    c.data.use_transcription = False
    c.data.shard_dir = "shards/webvid"
    c.data.max_length = 128  # Video-LLaMA stage 1: max_txt_len 32 caption tokens after a 32-query prompt
    c.train.global_batch_size = 256  # 32 per GPU on 8 GPUs
    c.train.total_steps = 12_500  # 5 epochs x 2500 iterations
    c.train.checkpoint_every = 2500
    c.optim.init_lr = 1e-4
    c.optim.min_lr = 8e-5
    c.optim.warmup_steps = 2500
    if variant == "small":
        c.workdir = "runs/pretrain_small"
        c.model.preset = "tiny_1layer"
        c.model.frozen_dtype = "float32"
        c.model.random_frozen = True
        c.data.num_frames = 2
        c.data.max_length = 128
        c.data.read_threads = 1
        c.data.read_buffer_size = 4
        c.train.global_batch_size = 2
        c.train.total_steps = 2
        c.train.checkpoint_every = 2
        c.train.log_every = 1
        c.optim.warmup_steps = 1
        c.mesh.data, c.mesh.fsdp = -1, 1
    c.lock()
    return c
