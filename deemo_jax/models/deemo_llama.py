"""DEEMO-LLaMA: de-identified video + audio + text into a frozen Vicuna (paper §4, Eq. 1).

video frames -> EVA ViT-g -> ln_vision -> image Q-Former -> + frame position -> video Q-Former -> llama_proj
audio clips  -> ImageBind audio -> + clip position -> audio Q-Former -> audio_llama_proj
The projected tokens overwrite the embedding rows of the ``<ImageHere>`` (32) and ``<AudioHere>`` (8)
placeholder runs of the prompt (see docs/DESIGN.md §4). Frozen encoder outputs are wrapped in
``stop_gradient``: no gradient is ever computed for them, so the frozen weights cannot change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deemo_jax.models import layers
from deemo_jax.models.eva_vit import EvaViT, EvaViTConfig
from deemo_jax.models.imagebind_audio import ImageBindAudio, ImageBindAudioConfig
from deemo_jax.models.llama import Llama, LlamaConfig
from deemo_jax.models.qformer import QFormer, QFormerConfig
from deemo_jax.sharding import constrain

# CLIP normalisation of the Video-LLaMA eval/train video processors (reference_spec §9.1).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Top-level attributes that train in the paper (the configs' trainable rules match these names).
PAPER_TRAINABLE = (
    "video_qformer", "video_frame_position_embedding", "llama_proj",
    "audio_qformer", "audio_position_embedding", "audio_llama_proj",
)


@dataclasses.dataclass(frozen=True)
class DeemoLlamaConfig:
    """Whole-model configuration. ``vit``/``audio_encoder`` set to None drops that branch entirely."""

    vit: EvaViTConfig | None
    image_qformer: QFormerConfig | None
    video_qformer: QFormerConfig | None
    audio_encoder: ImageBindAudioConfig | None
    audio_qformer: QFormerConfig | None
    llm: LlamaConfig
    max_frame_positions: int = 32
    max_audio_clips: int = 8
    ln_vision_eps: float = 1e-5
    # Storage/compute dtype of the frozen parts (ViT, ln_vision, image Q-Former, ImageBind, LLM).
    frozen_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.vit is not None and (self.image_qformer is None or self.video_qformer is None):
            raise ValueError("DeemoLlamaConfig: the video branch needs vit, image_qformer and video_qformer")
        if self.audio_encoder is not None and self.audio_qformer is None:
            raise ValueError("DeemoLlamaConfig: the audio branch needs audio_encoder and audio_qformer")

    @property
    def video_placeholder_id(self) -> int:
        return self.llm.vocab_size

    @property
    def audio_placeholder_id(self) -> int:
        return self.llm.vocab_size + 1

    @property
    def num_video_tokens(self) -> int:
        return self.video_qformer.num_queries

    @property
    def num_audio_tokens(self) -> int:
        return self.audio_qformer.num_queries

    @classmethod
    def deemo_7b(cls, frozen_dtype: Any = jnp.bfloat16) -> DeemoLlamaConfig:
        """The paper's model: EVA ViT-g/14, BLIP-2 Q-Former, ImageBind-Huge audio, Vicuna-7B."""
        return cls(
            vit=EvaViTConfig.giant(),
            image_qformer=QFormerConfig.image(),
            video_qformer=QFormerConfig.video(),
            audio_encoder=ImageBindAudioConfig.huge(),
            audio_qformer=QFormerConfig.audio(),
            llm=LlamaConfig.vicuna_7b(),
            frozen_dtype=frozen_dtype,
        )

    @classmethod
    def tiny(cls, frozen_dtype: Any = jnp.float32, *, llm: LlamaConfig | None = None) -> DeemoLlamaConfig:
        """A few-MB model with the real structure, for tests and the demo."""
        vit = EvaViTConfig.tiny()
        audio = ImageBindAudioConfig.tiny()
        image_qformer = QFormerConfig.tiny(encoder_width=vit.width, num_queries=8, cross_attention_freq=2)
        return cls(
            vit=vit,
            image_qformer=image_qformer,
            video_qformer=QFormerConfig.tiny(encoder_width=image_qformer.hidden_size, num_queries=8),
            audio_encoder=audio,
            audio_qformer=QFormerConfig.tiny(encoder_width=audio.out_dim, num_queries=4),
            llm=llm or LlamaConfig.tiny(),
            frozen_dtype=frozen_dtype,
        )

    @classmethod
    def preset(cls, name: str, overrides: Mapping[str, Any] | None = None) -> DeemoLlamaConfig:
        """The config of ``PRESETS[name]`` with ``overrides`` applied (see :meth:`with_overrides`)."""
        if name not in PRESETS:
            raise ValueError(f"DeemoLlamaConfig: unknown preset {name!r}; one of {sorted(PRESETS)}")
        return PRESETS[name]().with_overrides(overrides)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> DeemoLlamaConfig:
        """A copy with ``overrides`` applied; keys are field names, nested like the configs themselves.

        ``{"frozen_dtype": jnp.float32}`` sets a field of this config; ``{"llm": {"num_hidden_layers": 1}}`` sets
        fields of a component config; ``{"llm": LlamaConfig(...)}`` replaces a component and ``{"vit": None}``
        drops one. An unknown field, or field values inside a component that is None, raise ``ValueError``.
        """
        return _replace_nested(self, overrides or {}, "DeemoLlamaConfig")

    def with_attention_impl(self, implementation: str | None) -> DeemoLlamaConfig:
        """The attention implementation of every component that calls ``attention.dot_product_attention``
        (EVA ViT, ImageBind, LLM) set to ``implementation``; None picks per backend (see ``models/attention.py``)."""
        r = dataclasses.replace
        return r(
            self,
            vit=None if self.vit is None else r(self.vit, attention_impl=implementation),
            audio_encoder=None if self.audio_encoder is None else r(self.audio_encoder, attention_impl=implementation),
            llm=r(self.llm, attention_impl=implementation),
        )

    def frozen(self, cfg):
        """A component config switched to the frozen dtype."""
        return dataclasses.replace(cfg, dtype=self.frozen_dtype, param_dtype=self.frozen_dtype)


def _replace_nested(config: Any, overrides: Mapping[str, Any], where: str) -> Any:
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(f"{where} has no field {key!r}; fields: {names}")
        current = getattr(config, key)
        if isinstance(value, Mapping):
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"{where}.{key} is {current!r}, not a config; cannot set {dict(value)} in it")
            value = _replace_nested(current, value, f"{where}.{key}")
        changes[key] = value
    return dataclasses.replace(config, **changes)


def _one_layer_everywhere() -> dict[str, Any]:
    return {
        "vit": {"depth": 1},
        "image_qformer": {"num_layers": 1},
        "video_qformer": {"num_layers": 1},
        "audio_encoder": {"depth": 1},
        "audio_qformer": {"num_layers": 1},
        "llm": {"num_hidden_layers": 1},
    }


# Named model sizes: name -> config factory. The real model, the few-MB test model, the demo's model (tiny
# encoders, a wider LLM that is trained from scratch) and the fastest smoke-test model (one layer per stack).
PRESETS: dict[str, Callable[[], DeemoLlamaConfig]] = {
    "deemo_7b": DeemoLlamaConfig.deemo_7b,
    "tiny": DeemoLlamaConfig.tiny,
    "demo": lambda: DeemoLlamaConfig.tiny().with_overrides({"llm": {"hidden_size": 128, "intermediate_size": 256}}),
    "tiny_1layer": lambda: DeemoLlamaConfig.tiny().with_overrides(_one_layer_everywhere()),
}


class DeemoLlama(nnx.Module):
    def __init__(self, config: DeemoLlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        llm = config.llm
        if config.vit is not None:
            self.visual_encoder = EvaViT(config.frozen(config.vit), rngs=rngs)
            self.ln_vision = layers.LayerNorm(
                config.vit.width, eps=config.ln_vision_eps, param_dtype=config.frozen_dtype
            )
            self.image_qformer = QFormer(config.frozen(config.image_qformer), rngs=rngs)
            hidden = config.video_qformer.encoder_width
            self.video_frame_position_embedding = nnx.Embed(
                config.max_frame_positions, hidden, rngs=rngs,
                embedding_init=layers.DEFAULT_KERNEL_INIT,
                embedding_metadata={"logical_axes": ("positions", "embed")},
            )
            self.video_qformer = QFormer(config.video_qformer, rngs=rngs)
            self.llama_proj = layers.dense(
                config.video_qformer.hidden_size, llm.hidden_size, (None, "embed"), rngs=rngs
            )
        if config.audio_encoder is not None:
            self.audio_encoder = ImageBindAudio(config.frozen(config.audio_encoder), rngs=rngs)
            self.audio_position_embedding = nnx.Embed(
                config.max_audio_clips, config.audio_qformer.encoder_width, rngs=rngs,
                embedding_init=layers.DEFAULT_KERNEL_INIT,
                embedding_metadata={"logical_axes": ("positions", "embed")},
            )
            self.audio_qformer = QFormer(config.audio_qformer, rngs=rngs)
            self.audio_llama_proj = layers.dense(
                config.audio_qformer.hidden_size, llm.hidden_size, (None, "embed"), rngs=rngs
            )
        self.llama = Llama(config.frozen(llm), rngs=rngs)

    # ----------------------------------------------------------------------------------------------- encoders
    def encode_video(self, frames: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """uint8/float frames [B, T, H, W, 3] in 0..255 -> LLM tokens [B, num_video_tokens, D] (float32)."""
        cfg = self.config
        if cfg.vit is None:
            raise ValueError("this DeemoLlama has no video branch (config.vit is None) but frames were given")
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected [B, T, H, W, 3], got shape {tuple(frames.shape)}")
        b, t, h, w, _ = frames.shape
        size = cfg.vit.img_size
        if (h, w) != (size, size):
            raise ValueError(f"frames: expected {size}x{size} images, got {h}x{w}")
        if t > cfg.max_frame_positions:
            raise ValueError(f"frames: at most {cfg.max_frame_positions} frames (frame position table), got {t}")
        mean = jnp.asarray(CLIP_MEAN, jnp.float32)
        std = jnp.asarray(CLIP_STD, jnp.float32)
        pixels = (frames.astype(jnp.float32) / 255.0 - mean) / std
        pixels = pixels.reshape(b * t, h, w, 3).astype(cfg.frozen_dtype)
        feats = self.ln_vision(self.visual_encoder(pixels))
        queries = self.image_qformer(feats)
        queries = jax.lax.stop_gradient(queries.astype(jnp.float32))
        q, d = queries.shape[1:]
        queries = queries.reshape(b, t, q, d) + self.video_frame_position_embedding.embedding[:t][None, :, None, :]
        queries = constrain(queries.reshape(b, t * q, d), ("activation_batch", "activation_length", "activation_embed"))
        video = self.video_qformer(queries, rngs=rngs)
        return self.llama_proj(video)

    def encode_audio(self, fbank: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """fbank [B, S, 1, 128, 204] -> LLM tokens [B, num_audio_tokens, D] (float32)."""
        cfg = self.config
        if cfg.audio_encoder is None:
            raise ValueError("this DeemoLlama has no audio branch (config.audio_encoder is None) but fbank was given")
        if fbank.ndim != 5:
            raise ValueError(f"fbank: expected [B, S, 1, mel, frames], got shape {tuple(fbank.shape)}")
        b, s = fbank.shape[:2]
        if s > cfg.max_audio_clips:
            raise ValueError(f"fbank: at most {cfg.max_audio_clips} audio clips (clip position table), got {s}")
        embeds = self.audio_encoder(fbank.reshape(b * s, *fbank.shape[2:]).astype(cfg.frozen_dtype))
        embeds = jax.lax.stop_gradient(embeds.astype(jnp.float32)).reshape(b, s, -1)
        embeds = embeds + self.audio_position_embedding.embedding[:s][None]
        audio = self.audio_qformer(embeds, rngs=rngs)
        return self.audio_llama_proj(audio)

    # ------------------------------------------------------------------------------------------- LLM inputs
    def embed_inputs(
        self,
        input_ids: jax.Array,
        frames: jax.Array | None = None,
        fbank: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Token embeddings with the placeholder runs replaced by the projected modality tokens."""
        cfg = self.config
        check_inputs(cfg, input_ids, frames, fbank)
        vid_id, aud_id = cfg.video_placeholder_id, cfg.audio_placeholder_id
        is_placeholder = (input_ids == vid_id) | (input_ids == aud_id)
        embeds = self.llama.embed(jnp.where(is_placeholder, 0, input_ids))
        if frames is not None:
            embeds = _splice(embeds, input_ids == vid_id, self.encode_video(frames, rngs=rngs))
        if fbank is not None:
            embeds = _splice(embeds, input_ids == aud_id, self.encode_audio(fbank, rngs=rngs))
        return embeds

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        frames: jax.Array | None = None,
        fbank: jax.Array | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Logits [B, L, vocab] (float32) of the spliced sequence."""
        embeds = self.embed_inputs(input_ids, frames, fbank, rngs=rngs)
        logits, _ = self.llama(inputs_embeds=embeds, attention_mask=attention_mask)
        return logits


def _splice(embeds: jax.Array, is_slot: jax.Array, tokens: jax.Array) -> jax.Array:
    """Write tokens[b, k] into the k-th placeholder position of row b (runs are checked by ``check_inputs``)."""
    slot_index = jnp.clip(jnp.cumsum(is_slot, axis=1) - 1, 0, tokens.shape[1] - 1)
    gathered = jnp.take_along_axis(tokens.astype(embeds.dtype), slot_index[..., None], axis=1)
    return jnp.where(is_slot[..., None], gathered, embeds)


def check_inputs(
    config: DeemoLlamaConfig, input_ids: Any, frames: Any = None, fbank: Any = None
) -> None:
    """Shape and placeholder checks; value checks run only on concrete (host or un-traced) ids.

    Raises ValueError naming the expected and actual value: batch sizes must agree, and every row must hold
    exactly one consecutive run of ``num_video_tokens`` video placeholders iff frames are given (likewise audio).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids: expected [B, L], got shape {tuple(input_ids.shape)}")
    batch = input_ids.shape[0]
    for name, value in (("frames", frames), ("fbank", fbank)):
        if value is not None and value.shape[0] != batch:
            raise ValueError(f"{name}: batch size {value.shape[0]} does not match input_ids batch size {batch}")
    if isinstance(input_ids, jax.core.Tracer):
        return
    ids = np.asarray(input_ids)
    runs = []
    if config.vit is not None:
        runs.append(("video", config.video_placeholder_id, config.num_video_tokens, frames is not None))
    if config.audio_encoder is not None:
        runs.append(("audio", config.audio_placeholder_id, config.num_audio_tokens, fbank is not None))
    for name, token_id, expected, present in runs:
        for row in range(batch):
            positions = np.flatnonzero(ids[row] == token_id)
            want = expected if present else 0
            if len(positions) != want:
                raise ValueError(
                    f"input_ids row {row}: expected {want} {name} placeholder tokens (id {token_id}), "
                    f"got {len(positions)}" + ("" if present else f" although no {name} input was given")
                )
            if want and positions[-1] - positions[0] != want - 1:
                raise ValueError(f"input_ids row {row}: the {want} {name} placeholders must be consecutive")
