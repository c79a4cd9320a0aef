"""Speaker anonymisation with the McAdams coefficient (VoicePrivacy baseline B2, Patino et al. 2021,
arXiv:2011.01130), re-implemented from the algorithm description (the challenge code is GPL and not used).

Per 20 ms frame (10 ms hop): LPC order 20 (Burg), the poles of 1/A(z) are moved by replacing each complex
pole's angle phi by sign(phi)*|phi|**alpha (real poles unchanged), and the LPC residual of the frame is
re-filtered through the modified all-pole filter. Analysis and synthesis windows are sqrt-Hann, scaled so that
their product overlap-adds to exactly one.

Differences from the reference implementations, all deliberate:
  * Burg's method is computed here, vectorised over frames in numpy, instead of ``librosa.lpc``: librosa's
    numba kernel costs 4-50 s of JIT start-up per process on the 2-core machine, far more than the transform
    (``tests/deid/test_mcadams.py`` checks the coefficients against ``librosa.lpc``).
  * The signal is padded by one hop at both ends, so the first 10 ms and the tail are processed too (the
    reference leaves them silent), and the output has exactly the input's length.
  * Output level: the reference peak-normalises every utterance to full scale. Here the output is scaled so
    that its peak equals the input's peak (clipped to [-1, 1]), so quiet recordings stay quiet and the
    loudness contour across a video is kept.
  * The frame length is 2 x hop with hop = round(10 ms * sr) (320/160 samples at 16 kHz, as the reference),
    which keeps the overlap-add exact at any sample rate. The pole-angle warp is defined on radians, so the
    effect depends on the sample rate; the pipeline always uses 16 kHz like VoicePrivacy.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy.signal import lfilter

LPC_ORDER = 20
DEFAULT_ALPHA = 0.8
DEFAULT_ALPHA_RANGE = (0.5, 0.9)
_EPS = float(np.finfo(np.float32).eps)
_BLOCK_FRAMES = 4096  # frames per vectorised block: bounds memory on hour-long audio


def alpha_for_seed(seed: int | str, alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE) -> float:
    """Uniform alpha in ``alpha_range`` drawn from a generator seeded by sha256(seed): the same seed gives the
    same alpha in every process (unlike Python's salted ``hash``)."""
    low, high = alpha_range
    if not 0.0 < low <= high:
        raise ValueError(f"alpha_range must satisfy 0 < low <= high, got {alpha_range}")
    digest = hashlib.sha256(str(seed).encode("utf-8")).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "little")).uniform(low, high))


def burg_lpc(frames: np.ndarray, order: int) -> np.ndarray:
    """LPC coefficients ``[..., order + 1]`` (leading 1) by Burg's method for each row of ``frames``.

    All-zero frames give ``[1, 0, ..., 0]`` (the identity filter).
    """
    frames = np.asarray(frames, dtype=np.float64)
    batch = frames.shape[:-1]
    coeffs = np.zeros(batch + (order + 1,))
    coeffs[..., 0] = 1.0
    forward = frames[..., 1:]
    backward = frames[..., :-1]
    denominator = np.sum(forward**2, axis=-1) + np.sum(backward**2, axis=-1)
    for i in range(order):
        numerator = -2.0 * np.sum(backward * forward, axis=-1)
        reflection = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
        k = reflection[..., None]
        coeffs[..., 1 : i + 2] = coeffs[..., 1 : i + 2] + k * coeffs[..., i::-1]
        forward, backward = forward + k * backward, backward + k * forward
        denominator = (1.0 - reflection**2) * denominator - backward[..., -1] ** 2 - forward[..., 0] ** 2
        forward, backward = forward[..., 1:], backward[..., :-1]
    return coeffs


def _roots(coeffs: np.ndarray) -> np.ndarray:
    """Roots of each polynomial row ``[1, a1, ..., ap]`` (batched companion-matrix eigenvalues)."""
    n, p = coeffs.shape[0], coeffs.shape[1] - 1
    companion = np.zeros((n, p, p))
    companion[:, 0, :] = -coeffs[:, 1:]
    companion[:, np.arange(1, p), np.arange(p - 1)] = 1.0
    return np.linalg.eigvals(companion)


def _poly(roots: np.ndarray) -> np.ndarray:
    """Monic polynomial coefficients ``[n, p + 1]`` from roots ``[n, p]`` (batched)."""
    coeffs = np.ones((roots.shape[0], 1), dtype=np.complex128)
    for j in range(roots.shape[1]):
        shifted = np.pad(coeffs, ((0, 0), (1, 0)))
        coeffs = np.pad(coeffs, ((0, 0), (0, 1))) - roots[:, j : j + 1] * shifted
    return coeffs.real


def _warp_poles(coeffs: np.ndarray, alpha: float) -> np.ndarray:
    poles = _roots(coeffs)
    angles = np.angle(poles)
    is_complex = poles.imag != 0  # LAPACK returns real eigenvalues of a real matrix with an exact 0 imag part
    new_angles = np.where(is_complex, np.sign(angles) * np.abs(angles) ** alpha, angles)
    return _poly(np.abs(poles) * np.exp(1j * new_angles))


def anonymize(
    wave: np.ndarray,
    sr: int,
    alpha: float | None = DEFAULT_ALPHA,
    *,
    seed: int | str | None = None,
    alpha_range: tuple[float, float] = DEFAULT_ALPHA_RANGE,
) -> np.ndarray:
    """McAdams-anonymised copy of a mono waveform (same length; float32, level as the input's peak).

    Args:
      wave: ``[N]`` float (-1..1) or int16 samples.
      sr: sample rate in Hz (16000 recommended: the warp acts on pole angles in radians).
      alpha: McAdams coefficient; ``None`` draws it uniformly from ``alpha_range`` with :func:`alpha_for_seed`
        (VoicePrivacy 2024 style, per utterance), which then requires ``seed``.
      seed: int or string (e.g. an utterance id) that fixes the random alpha; ignored when ``alpha`` is given.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"anonymize expects mono audio [N], got shape {wave.shape}; mix down channels first")
    if sr < 4000:
        raise ValueError(f"sample rate {sr} Hz is too low for 20 ms LPC frames; use 16000")
    if alpha is None:
        if seed is None:
            raise ValueError("a random alpha (alpha=None) needs a seed, so the result is reproducible")
        alpha = alpha_for_seed(seed, alpha_range)
    if not 0.0 < alpha <= 2.0:
        raise ValueError(f"alpha must be in (0, 2], got {alpha} (0.5-0.9 anonymise; 1 is the identity)")
    x = wave.astype(np.float64) / 32768.0 if wave.dtype == np.int16 else wave.astype(np.float64)
    if x.size == 0:
        return np.zeros(0, np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or Inf samples")

    hop = max(1, round(0.010 * sr))
    length = 2 * hop
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)  # periodic: shifted copies sum to 1
    window = np.sqrt(hann / (hann.sum() / hop))
    n_frames = -(-x.size // hop) + 1
    padded = np.zeros((n_frames + 1) * hop)
    padded[hop : hop + x.size] = x
    blocks = padded.reshape(-1, hop)
    out = np.zeros_like(blocks)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, n_frames)
        frames = np.concatenate([blocks[start:stop], blocks[start + 1 : stop + 1]], axis=1) * window
        coeffs = burg_lpc(frames + _EPS, LPC_ORDER)
        warped = _warp_poles(coeffs, alpha)
        synth = np.empty_like(frames)
        for i in range(frames.shape[0]):
            residual = lfilter(coeffs[i], [1.0], frames[i])
            synth[i] = lfilter([1.0], warped[i], residual)
        synth *= window
        out[start:stop] += synth[:, :hop]
        out[start + 1 : stop + 1] += synth[:, hop:]
    y = out.reshape(-1)[hop : hop + x.size]
    peak_in, peak_out = np.max(np.abs(x)), np.max(np.abs(y))
    if peak_out > 0:
        y = y * (peak_in / peak_out)
    return np.clip(y, -1.0, 1.0).astype(np.float32)
