"""A PyTorch reference of ImageBind's audio path, built from torch's own layers (reference_spec §5).

Modules are registered so that ``state_dict()`` carries the exact ``imagebind_huge.pth`` audio key names
(``modality_preprocessors.audio.rgbt_stem.proj.weight``, ``modality_trunks.audio.blocks.{i}.attn.in_proj_weight``,
``modality_heads.audio.2.weight``, ``modality_postprocessors.audio.1.log_logit_scale``, ...): it is a realistic
checkpoint for the audio tower, used by the model parity test and the conversion tests. Eval mode only (no
DropPath): the reference of the deterministic forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
    """fbank [N, 1, mel, frames] -> [N, out_dim] (L2-normalised x 20)."""

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
