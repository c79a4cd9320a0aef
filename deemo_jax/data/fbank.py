"""Kaldi-compatible log-mel filterbank in numpy, and the ImageBind audio front end (reference_spec.md §9.2).

torchaudio does not install on the project's machines and kaldi-native-fbank refuses 128 mel bins at 16 kHz
(some low filters contain no FFT bin), so the fbank is reimplemented here, vectorised: all frames are cut with
one strided view and transformed with one ``rfft``. With the defaults it computes what
``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000, use_energy=False,
window_type="hanning", num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10)`` computes; filters that
contain no FFT bin give ``log(float32 eps)``, as in torchaudio.

Resampling (only when the input is not 16 kHz) is :func:`deemo_jax.media.resample`, shared with the media
readers: libsoxr through ``soxr.resample(..., quality="HQ")``,
librosa's default resampler (linear-phase, band-limited, delay-compensated; far lighter to import than
``scipy.signal``, which matters in the builder's spawned workers). ImageBind uses
``torchaudio.functional.resample`` (windowed sinc, Hann window); both are band-limited, but they differ
slightly in the transition band just below the new Nyquist frequency (8 kHz).
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np

from deemo_jax.media import SAMPLE_RATE, resample

logger = logging.getLogger(__name__)

NUM_MEL_BINS = 128
TARGET_LENGTH = 204
NUM_CLIPS = 8
CLIP_DURATION = 2  # seconds (an int, as in ImageBind's ConstantClipsPerVideoSampler(clip_duration=2, ...))
FBANK_MEAN = -4.268
FBANK_STD = 9.138
_EPS = float(np.finfo(np.float32).eps)


def _mel(freq: np.ndarray | float) -> np.ndarray | float:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    num_mel_bins: int, padded_window_size: int, sr: int, low_freq: float = 20.0, high_freq: float = 0.0
) -> np.ndarray:
    """Kaldi's triangular mel filters, ``[num_mel_bins, padded_window_size // 2 + 1]`` (Nyquist column 0).

    Triangles are linear in the mel domain between the neighbouring centre frequencies, which are equally
    spaced in mel between ``low_freq`` and ``high_freq`` (``high_freq <= 0`` means Nyquist + ``high_freq``).
    """
    nyquist = 0.5 * sr
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(
            f"mel bank: need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq={low_freq}, "
            f"high_freq={high_freq}"
        )
    num_fft_bins = padded_window_size // 2
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    edges = mel_low + delta * np.arange(num_mel_bins + 2, dtype=np.float64)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    mel = _mel(np.arange(num_fft_bins, dtype=np.float64) * (sr / padded_window_size))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1)))


def kaldi_fbank(
    wave: np.ndarray, sr: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS, **options: float
) -> np.ndarray:
    """Log-mel filterbank features ``float32 [num_frames, num_mel_bins]`` of channel 0 of ``wave``.

    ``wave`` is ``[samples]`` or ``[channels, samples]`` (only channel 0 is used, as with torchaudio's default
    ``channel=-1``). Fixed Kaldi settings: snip_edges, dither 0, per-frame DC removal, pre-emphasis with the
    first sample replicated, symmetric Hann window, FFT size rounded up to a power of two, power spectrum,
    log with a float32-eps floor. A signal shorter than one frame gives ``[0, num_mel_bins]``.
    ``options`` (keyword-only) are those of :func:`_log_mel_frames`: ``frame_length_ms`` (25), ``frame_shift_ms``
    (10), ``preemphasis`` (0.97), ``low_freq`` (20 Hz) and ``high_freq`` (0: Nyquist).
    """
    wave = np.asarray(wave)
    if wave.ndim == 2:
        wave = wave[0]
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank: wave must be [samples] or [channels, samples], got {wave.shape}")
    return _log_mel_frames(wave, sr, num_mel_bins, **options)


def _log_mel_frames(
    x: np.ndarray,
    sr: int,
    num_mel_bins: int,
    *,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
) -> np.ndarray:
    """Kaldi fbank of each signal along the last axis of ``x [..., samples]`` -> ``[..., frames, bins]``."""
    if sr <= 0 or num_mel_bins <= 0:
        raise ValueError(f"kaldi_fbank: sr and num_mel_bins must be > 0, got sr={sr}, bins={num_mel_bins}")
    window_size = int(sr * frame_length_ms * 0.001)
    window_shift = int(sr * frame_shift_ms * 0.001)
    padded = 1 << (window_size - 1).bit_length()
    banks = kaldi_mel_banks(num_mel_bins, padded, sr, low_freq, high_freq)
    if x.shape[-1] < window_size:
        return np.zeros((*x.shape[:-1], 0, num_mel_bins), np.float32)

    x = x.astype(np.float64, copy=False)
    frames = np.lib.stride_tricks.sliding_window_view(x, window_size, axis=-1)[..., ::window_shift, :]
    frames = frames - frames.mean(axis=-1, keepdims=True)
    previous = np.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = frames - preemphasis * previous
    n = np.arange(window_size, dtype=np.float64)
    frames = frames * (0.5 - 0.5 * np.cos(2.0 * math.pi * n / (window_size - 1)))
    spectrum = np.fft.rfft(frames, n=padded, axis=-1)
    power = spectrum.real**2 + spectrum.imag**2
    mel_energy = power @ banks.T
    return np.log(np.maximum(mel_energy, _EPS)).astype(np.float32)


def clip_timepoints(
    duration: float, num_clips: int = NUM_CLIPS, clip_duration: int = CLIP_DURATION
) -> list[tuple[Fraction, Fraction]]:
    """ConstantClipsPerVideoSampler: ``start_i = i * max(D - clip, 0) / (N - 1)``, ``end_i = start_i + clip``
    (exact fractions, as pytorchvideo computes them)."""
    if num_clips < 1:
        raise ValueError(f"clip_timepoints: num_clips must be >= 1, got {num_clips}")
    step = Fraction(max(duration - clip_duration, 0)) / max(num_clips - 1, 1)
    return [(step * i, step * i + clip_duration) for i in range(num_clips)]


def imagebind_audio_features(
    wave: np.ndarray,
    sr: int,
    *,
    num_clips: int = NUM_CLIPS,
    num_mel_bins: int = NUM_MEL_BINS,
    target_length: int = TARGET_LENGTH,
    warn_short: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """ImageBind/AffectGPT audio preprocessing of one clip's waveform.

    Returns ``(fbank float32 [num_clips, num_mel_bins, target_length], clip_times float32 [num_clips, 2])``,
    the times being start/end seconds relative to the start of ``wave`` (after zero-padding).
    Steps: resample to 16 kHz; zero-pad to 2 s if shorter (AffectGPT; logged unless
    ``warn_short=False``, for callers that report it themselves); ``num_clips`` 2-s clips by
    the constant-clips sampler; per clip subtract its mean, Kaldi fbank, transpose, zero-pad/truncate the
    frame axis to ``target_length``; normalise ``(x + 4.268) / 9.138``.

    Unlike ImageBind, the clip mean is subtracted from a copy: the reference subtracts it in place on
    overlapping slices (it also shifts the overlap of later clips); per-frame DC removal makes that a tiny
    difference.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 1:
        wave = wave[None, :]
    if wave.ndim != 2 or wave.shape[0] < 1:
        raise ValueError(
            f"imagebind_audio_features: wave must be [samples] or [channels, samples], got shape {wave.shape}"
        )
    if not np.all(np.isfinite(wave)):
        raise ValueError("imagebind_audio_features: wave contains NaN or Inf samples")
    wave = resample(wave, sr, SAMPLE_RATE)
    min_samples = CLIP_DURATION * SAMPLE_RATE
    if wave.shape[1] < min_samples:
        if warn_short:
            logger.warning(
                "audio is %.3f s long, shorter than one %d-s clip: zero-padded to %d samples",
                wave.shape[1] / SAMPLE_RATE, CLIP_DURATION, min_samples,
            )
        wave = np.pad(wave, ((0, 0), (0, min_samples - wave.shape[1])))
    duration = wave.shape[1] / SAMPLE_RATE
    times = clip_timepoints(duration, num_clips)
    # Every clip is exactly 2 s of samples here (duration >= 2 s), so all clips go through one batched fbank.
    clips = np.stack([wave[0, int(s * SAMPLE_RATE): int(e * SAMPLE_RATE)] for s, e in times])
    channel_means = np.stack([wave[:, int(s * SAMPLE_RATE): int(e * SAMPLE_RATE)].mean() for s, e in times])
    feats = _log_mel_frames(clips - channel_means[:, None], SAMPLE_RATE, num_mel_bins)  # [N, frames, bins]
    feats = np.swapaxes(feats, 1, 2)[:, :, :target_length]
    out = np.pad(feats, ((0, 0), (0, 0), (0, target_length - feats.shape[2])))
    out = (out - FBANK_MEAN) / FBANK_STD
    clip_times = np.array([[float(s), float(e)] for s, e in times], np.float32)
    return out.astype(np.float32, copy=False), clip_times
