"""Train-time video augmentation of the reference (reference_spec §9.1, ``alpro_video_train``).

The reference applies ``RandomResizedCropVideo(224, scale=(0.5, 1.0), ratio=(3/4, 4/3), "bicubic")`` to the
224x224 frames of a clip: ONE crop box, drawn like torchvision's ``RandomResizedCrop.get_params``, for all
frames, resized back to 224x224 with ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``
on the float (0..255) tensor, then cast to uint8 by ``ToUint8``. :func:`random_resized_crop_clip` does the
same on uint8 ``[T, H, W, 3]`` frames with a numpy ``Generator``; see its docstring for the resize.
"""

from __future__ import annotations

import math

import numpy as np

SCALE = (0.5, 1.0)
RATIO = (3 / 4, 4 / 3)
OUTPUT_SIZE = 224
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient (PIL uses -0.5)
_INTEGER_TOLERANCE = 1e-6  # float results this close below an integer count as it (rounding error)


def sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A crop box ``(top, left, h, w)`` as torchvision's ``RandomResizedCrop.get_params`` draws it.

    Up to ``attempts`` tries: area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``,
    sides rounded; the first box that fits is placed uniformly. Otherwise the central box of the whole frame,
    its aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.75`` at distances ``x``."""
    x = np.abs(x)
    a = _CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` matrix of PyTorch's 1-D bicubic resize (``align_corners=False``, no antialias,
    border taps clamped to the edge pixel)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    t = src - base
    weights = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    for tap in (-1, 0, 1, 2):
        index = np.clip(base.astype(np.int64) + tap, 0, in_size - 1)
        np.add.at(weights, (rows, index), _cubic(t - tap))
    return weights


def resize_bicubic(frames: np.ndarray, size: int = OUTPUT_SIZE) -> np.ndarray:
    """uint8 ``[T, h, w, C]`` -> uint8 ``[T, size, size, C]`` (see :func:`random_resized_crop_clip`)."""
    _, h, w, _ = frames.shape
    wy = bicubic_weights(h, size)
    wx = bicubic_weights(w, size)
    x = frames.astype(np.float64).transpose(0, 3, 1, 2)  # [T, C, h, w]
    out = wy @ x @ wx.T  # [T, C, size, size]
    out = np.floor(np.clip(out, 0.0, 255.0) + _INTEGER_TOLERANCE)
    return out.astype(np.uint8).transpose(0, 2, 3, 1)


def random_resized_crop_clip(
    frames: np.ndarray,
    rng: np.random.Generator,
    size: int = OUTPUT_SIZE,
    scale: tuple[float, float] = SCALE,
    ratio: tuple[float, float] = RATIO,
) -> np.ndarray:
    """The reference's ``RandomResizedCropVideo`` on uint8 ``[T, H, W, 3]`` frames -> uint8 ``[T, size, size, 3]``.

    One box (:func:`sample_crop`) for every frame of the clip. The resize is PyTorch's bicubic interpolation
    (``a = -0.75``, ``align_corners=False``, no antialias: the reference's ``F.interpolate`` on its float
    0..255 tensor), computed in float64 and truncated to uint8 as the reference's ``ToUint8`` cast does
    (equal to torch's uint8 except where its float32 rounding crosses an integer: off by one on ~0.03% of
    pixels of noise frames). One deliberate difference: where bicubic overshoots outside
    0..255, the reference's cast wraps around (e.g. 260 -> 4, -3 -> 253); here the value is clipped. PIL's
    BICUBIC would differ more (``a = -0.5``, and it rounds instead of truncating).
    """
    top, left, h, w = sample_crop(rng, frames.shape[1], frames.shape[2], scale, ratio)
    return resize_bicubic(frames[:, top:top + h, left:left + w], size)
