"""DEEMO-MER multimodal instruction tuning (paper §4; recipe of AffectGPT/Video-LLaMA, reference_spec §10.4).

    # The paper's model: frozen EVA ViT-g, BLIP-2 image Q-Former, ImageBind-Huge and Vicuna-7B (bf16); trainable
    # video/audio Q-Formers (queries included), frame/clip position embeddings and both projections.
    python scripts/train.py --config=configs/instruct.py --config.workdir=runs/deemo_mer \
        --config.data.shard_dir=shards/deemo_mer \
        --config.checkpoints.eva_vit=converted/eva_vit_g --config.checkpoints.blip2=converted/blip2 \
        --config.checkpoints.imagebind=converted/imagebind --config.checkpoints.llm=converted/vicuna-7b

    # The demo: tiny model on the bundled corpus (python scripts/make_demo_data.py --output demo_data first),
    # a few minutes on 2 CPU cores, ends with a test-split evaluation and workdir/loss.png.
    python scripts/train.py --config=configs/instruct.py:demo

    # The paper's recipe on the demo corpus: SmolLM2-135M-Instruct frozen (converted to demo_data/smollm2 by
    # `make demo-frozen-llm`), only the Q-Former branches and projections train.
    python scripts/train.py --config=configs/instruct.py:demo_frozen_llm

Any key can be overridden on the command line (``--config.optim.init_lr=1e-5``, ``--config.mesh.fsdp=8``);
unknown keys are errors. Several hosts: start the same command on each host with
``--config.distributed.coordinator_address=HOST0:PORT --config.distributed.num_processes=N
--config.distributed.process_id=I`` (or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID, or Slurm).
"""

from ml_collections import ConfigDict

from deemo_jax.models.deemo_llama import PAPER_TRAINABLE
from deemo_jax.train.config import base_config

VARIANTS = ("paper", "demo", "demo_frozen_llm")


def get_config(arg: str | None = None) -> ConfigDict:
    variant = arg or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"configs/instruct.py: unknown variant {variant!r}; use one of {VARIANTS}")
    c = base_config()  # the paper's recipe: deemo_jax/train/config.py states it once
    c.workdir = "runs/instruct"
    c.data.shard_dir = "shards/deemo_mer"
    if variant == "demo":
        _demo(c)
    elif variant == "demo_frozen_llm":
        _demo_frozen_llm(c)
    c.lock()
    return c


def _demo(c: ConfigDict) -> None:
    """Tiny model on the bundled demo corpus; no pretrained weights exist for it."""
    c.workdir = "runs/demo"
    c.model.preset = "demo"  # tiny encoders, LLM hidden 128 / MLP 256 (deemo_jax/models/deemo_llama.py PRESETS)
    c.model.frozen_dtype = "float32"
    # Random frozen encoders are fine for a demo; the random tiny LLM must learn language, so the demo ALSO
    # TRAINS THE LLM (unlike the paper, which keeps Vicuna frozen).
    c.model.random_frozen = True
    c.trainable = tuple(PAPER_TRAINABLE) + ("llama",)
    c.data.shard_dir = "demo_data/shards"
    c.data.tokenizer_path = "demo_data/tokenizer"
    c.data.task = "both"  # "{label}. {reasoning}": the label leads the answer, the eval parses it
    c.data.max_length = 288  # the longest demo example has 269 tokens
    # The README's demo figures were measured without the train-time crop (its effect there is not measured yet).
    c.data.augment = False
    c.train.global_batch_size = 4
    c.train.total_steps = 250  # ~7 epochs of the 140 training clips
    c.train.checkpoint_every = 50
    c.train.keep_checkpoints = 2
    c.train.log_every = 25
    c.optim.init_lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_lr = 1e-5
    c.optim.warmup_steps = 25
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    c.eval.at_end = True
    c.eval.split = "test"
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 8


def _demo_frozen_llm(c: ConfigDict) -> None:
    """The paper's recipe on the demo corpus: a real LLM (SmolLM2-135M-Instruct) frozen, random frozen encoders."""
    _demo(c)
    c.workdir = "runs/demo_frozen_llm"
    c.model.preset = "tiny"  # tiny encoders and Q-Formers; the LLM comes from the converted checkpoint
    c.checkpoints.llm = "demo_data/smollm2"  # its manifest gives the LLM config, its tokenizer/ the tokenizer
    c.data.tokenizer_path = ""
    c.data.template = ""  # SmolLM2's own ChatML chat template (system prompt included)
    c.trainable = tuple(PAPER_TRAINABLE)  # the LLM stays frozen
    c.data.max_length = 288  # the longest demo example has 273 SmolLM2 tokens (ChatML system prompt included)
    c.train.global_batch_size = 2  # the paper's batch size
    # 80 examples: a step runs back through all 30 frozen layers (16-32 s on 2 busy cores, vs 0.7 s for :demo).
    c.train.total_steps = 40
    c.train.checkpoint_every = 20
    c.train.log_every = 5
    c.optim.init_lr = 2e-3  # only Q-Formers and projections train: a high rate, few steps
    c.optim.min_lr = 2e-4
    c.optim.warmup_steps = 5
    c.eval.max_new_tokens = 48  # the label, then a sentence or two of reasoning
