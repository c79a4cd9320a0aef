"""PyTorch references of each component, loaded from the *original* checkpoint key names (for ``--verify``).

| component | reference |
|---|---|
| EVA ViT-g | ``transformers.Blip2VisionModel`` (``eva_vit_g.pth`` keys renamed; ``post_layernorm`` = identity) |
| Q-Formers | ``transformers.Blip2QFormerModel`` (LAVIS ``*Qformer.bert.*`` keys renamed) + the query tokens |
| ImageBind audio | :class:`ImageBindAudioReference` (torch layers named like ``imagebind_huge.pth``) |
| LLaMA | ``transformers.LlamaForCausalLM`` (HF keys as they are) |

All references are float32 and in eval mode. Needs torch and transformers (``pip install 'deemo-jax[convert]'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from deemo_jax.convert.llama import EMBED_KEY, TIED_LM_HEAD_KEY, llama_config_to_hf
from deemo_jax.models.eva_vit import EvaViTConfig
from deemo_jax.models.imagebind_audio import ImageBindAudioConfig
from deemo_jax.models.llama import LlamaConfig
from deemo_jax.models.qformer import QFormerConfig


def _tensors(sd: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, dtype=np.float32, order="C")) for k, v in sd.items()}


# -------------------------------------------------------------------------------------------- EVA ViT-g
def eva_to_blip2_vision(sd: Mapping[str, np.ndarray], width: int, depth: int) -> dict[str, np.ndarray]:
    """``eva_vit_g.pth`` names (blocks 0..depth-1) -> ``Blip2VisionModel`` names (k bias = zeros)."""
    out = {
        "embeddings.class_embedding": sd["cls_token"],
        "embeddings.position_embedding": sd["pos_embed"],
        "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
    }
    renames = {
        "norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.projection",
        "attn.qkv": "self_attn.qkv", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }
    for i in range(depth):
        for old, new in renames.items():
            for leaf in ("weight", "bias"):
                key = f"blocks.{i}.{old}.{leaf}"
                if key in sd:
                    out[f"encoder.layers.{i}.{new}.{leaf}"] = sd[key]
        q, v = sd[f"blocks.{i}.attn.q_bias"], sd[f"blocks.{i}.attn.v_bias"]
        out[f"encoder.layers.{i}.self_attn.qkv.bias"] = np.concatenate([q, np.zeros(width, q.dtype), v])
    return out


def eva_vit_reference(sd: Mapping[str, np.ndarray], config: EvaViTConfig) -> nn.Module:
    """``Blip2VisionModel`` with the EVA weights; its ``last_hidden_state`` is the token sequence [N, T, W]."""
    # Imported here: transformers takes seconds to import and the ImageBind reference does not need it.
    from transformers import Blip2VisionConfig, Blip2VisionModel

    c = config
    model = Blip2VisionModel(
        Blip2VisionConfig(
            hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
            num_attention_heads=c.num_heads, image_size=c.img_size, patch_size=c.patch_size,
            layer_norm_eps=c.layer_norm_eps, qkv_bias=True, hidden_act="gelu", attn_implementation="eager",
        )
    )
    model.post_layernorm = nn.Identity()  # eva_vit_g has no final norm (BLIP-2's ln_vision is separate)
    model.load_state_dict(_tensors(eva_to_blip2_vision(sd, c.width, c.depth)), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------- Q-Formers
def lavis_to_blip2_qformer(sd: Mapping[str, np.ndarray], prefix: str, num_layers: int) -> dict[str, np.ndarray]:
    """LAVIS ``{prefix}*`` names (``Qformer.bert.``) -> ``Blip2QFormerModel`` names (queries-only parts)."""
    out = {
        "layernorm.weight": sd[f"{prefix}embeddings.LayerNorm.weight"],
        "layernorm.bias": sd[f"{prefix}embeddings.LayerNorm.bias"],
    }
    for key, value in sd.items():
        if not key.startswith(f"{prefix}encoder.layer."):
            continue
        rest = key[len(prefix):]
        layer = int(rest.split(".")[2])
        sub = rest.split(".", 3)[3]
        if layer >= num_layers or not sub.startswith(("attention.", "crossattention.", "intermediate_query.",
                                                      "output_query.")):
            continue
        rest = rest.replace(".attention.self.", ".attention.attention.")
        out[rest.replace(".crossattention.self.", ".crossattention.attention.")] = value
    return out


def qformer_reference(
    sd: Mapping[str, np.ndarray], config: QFormerConfig, prefix: str, query_tokens_key: str
) -> tuple[nn.Module, torch.Tensor]:
    """(``Blip2QFormerModel``, query tokens [1, Q, H]); call with ``query_embeds=tokens.expand(N, -1, -1)``."""
    # Imported here: transformers takes seconds to import and the ImageBind reference does not need it.
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    c = config
    model = Blip2QFormerModel(
        Blip2QFormerConfig(
            hidden_size=c.hidden_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
            intermediate_size=c.intermediate_size, encoder_hidden_size=c.encoder_width,
            cross_attention_frequency=c.cross_attention_freq, layer_norm_eps=c.layer_norm_eps, hidden_act="gelu",
            attn_implementation="eager",
        )
    )
    model.load_state_dict(_tensors(lavis_to_blip2_qformer(sd, prefix, c.num_layers)), strict=True)
    return model.eval(), _tensors({"q": sd[query_tokens_key]})["q"]


# ------------------------------------------------------------------------------------------------ LLaMA
def llama_reference(sd: Mapping[str, np.ndarray], config: LlamaConfig) -> nn.Module:
    """``LlamaForCausalLM`` (Qwen2: ``Qwen2ForCausalLM``; eager attention, float32) with the HF weights of
    ``config.num_hidden_layers``."""
    # Imported here: transformers takes seconds to import and the ImageBind reference does not need it.
    import transformers

    # LlamaForCausalLM, or Qwen2ForCausalLM for q/k/v biases without an o_proj bias (llama_config_to_hf).
    fields = llama_config_to_hf(config)
    hf_config = transformers.AutoConfig.for_model(**fields, attn_implementation="eager")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    if config.tie_word_embeddings:  # the mapping never reads a tied lm_head; HF's state dict still names it
        sd = {**sd, TIED_LM_HEAD_KEY: sd[EMBED_KEY]}
    model.load_state_dict(_tensors(sd), strict=True, assign=True)
    # The RoPE module only holds non-persistent buffers, created on "meta" above: rebuild it on the CPU.
    model.model.rotary_emb = type(model.model.rotary_emb)(model.config)
    return model.eval()


# ------------------------------------------------------------------------------------- ImageBind audio
class _Stem(nn.Module):
    """``PatchEmbedGeneric``: conv (no bias) -> flatten (mel-major, time-minor) -> LayerNorm (eps 1e-5)."""

    def __init__(self, width: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=kernel, stride=stride, bias=False)
        self.norm_layer = nn.LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_layer(self.proj(x).flatten(2).transpose(1, 2))


class _PosEmbed(nn.Module):
    def __init__(self, num_tokens: int, width: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))


class _AudioPreprocessor(nn.Module):
    def __init__(self, width: int, kernel: int, stride: int, num_tokens: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.rgbt_stem = _Stem(width, kernel, stride)
        self.pos_embedding_helper = _PosEmbed(num_tokens, width)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        tokens = self.rgbt_stem(fbank)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embedding_helper.pos_embed


class _Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, bias=True, add_bias_kv=True, batch_first=True)
        self.norm_1 = nn.LayerNorm(width, eps=1e-6)
        self.norm_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(width, heads, mlp_dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class _SelectCLS(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1, p=2)


class _LogitScale(nn.Module):
    """Non-learnable: the scale is a buffer, as in ImageBind's audio postprocessor."""

    def __init__(self, init: float = 20.0, max_scale: float = 100.0):
        super().__init__()
        self.max_scale = max_scale
        self.register_buffer("log_logit_scale", torch.ones([]) * math.log(init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clip(self.log_logit_scale.exp(), max=self.max_scale) * x


class ImageBindAudioReference(nn.Module):
    """fbank [N, 1, mel, frames] -> [N, out_dim] (L2-normalised x 20); ``state_dict()`` uses the real names."""

    def __init__(
        self,
        *,
        width: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        out_dim: int,
        num_mel_bins: int = 128,
        target_len: int = 204,
        kernel: int = 16,
        stride: int = 10,
    ):
        super().__init__()
        grid = [(n - kernel) // stride + 1 for n in (num_mel_bins, target_len)]
        num_tokens = 1 + grid[0] * grid[1]
        self.modality_preprocessors = nn.ModuleDict({"audio": _AudioPreprocessor(width, kernel, stride, num_tokens)})
        self.modality_trunks = nn.ModuleDict({"audio": _Trunk(width, depth, heads, mlp_dim)})
        self.modality_heads = nn.ModuleDict(
            {"audio": nn.Sequential(nn.LayerNorm(width, eps=1e-6), _SelectCLS(), nn.Linear(width, out_dim, bias=False))}
        )
        self.modality_postprocessors = nn.ModuleDict({"audio": nn.Sequential(_Normalize(), _LogitScale())})

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.modality_preprocessors["audio"](fbank)
        x = self.modality_trunks["audio"](x)
        return self.modality_postprocessors["audio"](self.modality_heads["audio"](x))


def imagebind_audio_reference(sd: Mapping[str, np.ndarray], config: ImageBindAudioConfig) -> nn.Module:
    """The reference with the audio keys of ``sd`` (other modalities' keys are ignored)."""
    c = config
    model = ImageBindAudioReference(
        width=c.width, depth=c.depth, heads=c.num_heads, mlp_dim=c.mlp_dim, out_dim=c.out_dim,
        num_mel_bins=c.num_mel_bins, target_len=c.target_len, kernel=c.kernel_size, stride=c.stride,
    )
    own = set(model.state_dict())
    model.load_state_dict(_tensors({k: v for k, v in sd.items() if k in own}), strict=True)
    return model.eval()


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (biases, LayerNorms, bias_k/v, cls, positions included) a non-default random value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim >= 2 and "weight" in name:
                param.copy_(noise / math.sqrt(param[0].numel()))
            else:
                param.copy_(0.2 * noise)
    return module.eval()
