"""Kaldi fbank parity with kaldi-native-fbank, and the ImageBind audio front end (reference_spec.md §9.2)."""

from __future__ import annotations

import logging

import kaldi_native_fbank as knf
import numpy as np
import pytest

from deemo_jax.data.fbank import (
    FBANK_MEAN,
    FBANK_STD,
    clip_timepoints,
    imagebind_audio_features,
    kaldi_fbank,
    resample,
)

PAD_VALUE = (0.0 + 4.268) / 9.138  # a zero-padded fbank column after normalisation


def _knf_fbank(wave: np.ndarray, sr: int, bins: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.round_to_power_of_two = True
    opts.mel_opts.num_bins = bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0
    opts.use_energy = False
    opts.use_power = True
    opts.use_log_fbank = True
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(sr, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def _signals(sr: int, seconds: float = 2.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    pitch = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    voiced = sum(np.sin(2 * np.pi * k * np.cumsum(pitch) / sr) / k for k in range(1, 12))
    speech_like = 0.2 * voiced * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(t.size)
    return {
        "speech_like": speech_like.astype(np.float32),
        "noise": (0.1 * rng.standard_normal(t.size)).astype(np.float32),
        "tone": (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05).astype(np.float32),  # with a DC offset
    }


@pytest.mark.parametrize("name", ["speech_like", "noise", "tone"])
def test_matches_kaldi_native_fbank_80_bins(name):
    wave = _signals(16000)[name]
    ours, ref = kaldi_fbank(wave, 16000, 80), _knf_fbank(wave, 16000, 80)
    assert ours.shape == ref.shape == (198, 80)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-3


def test_matches_kaldi_native_fbank_128_bins_where_it_accepts_them():
    # kaldi-native-fbank refuses 128 bins at 16 kHz (empty low filters) but accepts them at 44.1 kHz,
    # where the same mel-bank code must still agree with it.
    wave = _signals(44100, 1.0)["speech_like"]
    ours, ref = kaldi_fbank(wave, 44100, 128), _knf_fbank(wave, 44100, 128)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-3


def test_frames_channel_and_empty_filters():
    wave = _signals(16000)["noise"]
    assert kaldi_fbank(wave).shape == (198, 128)  # 1 + (32000 - 400) // 160
    assert kaldi_fbank(wave[:399]).shape == (0, 128)
    stereo = np.stack([wave, np.zeros_like(wave)])
    np.testing.assert_array_equal(kaldi_fbank(stereo), kaldi_fbank(wave))  # channel 0 only
    # At 16 kHz, 128 bins: filter 3 (97-141 mel) contains no FFT bin (96.4, 141.7 mel): log(float32 eps),
    # as in torchaudio; its neighbours do.
    feats = kaldi_fbank(wave)
    assert np.all(feats[:, 3] == np.float32(np.log(np.finfo(np.float32).eps)))
    assert np.all(np.median(feats[:, [2, 4, 64]], axis=0) > -12)


def test_clip_timepoints_constant_clips_sampler():
    assert clip_timepoints(2.0) == [(0, 2)] * 8
    starts = [float(s) for s, _ in clip_timepoints(10.0)]
    np.testing.assert_allclose(starts, [i * 8 / 7 for i in range(8)])
    assert all(e - s == 2 for s, e in clip_timepoints(7.3))


def test_imagebind_features_long_input():
    sr = 16000
    wave = np.tile(_signals(sr)["speech_like"], 5)  # 10 s
    feats, times = imagebind_audio_features(wave, sr)
    assert feats.shape == (8, 128, 204) and feats.dtype == np.float32
    assert times.shape == (8, 2) and times.dtype == np.float32
    np.testing.assert_allclose(times[:, 0], [i * 8 / 7 for i in range(8)], atol=1e-6)
    np.testing.assert_allclose(times[:, 1] - times[:, 0], 2.0, atol=1e-6)
    np.testing.assert_allclose(feats[:, :, 198:], PAD_VALUE, rtol=1e-6)
    assert abs(PAD_VALUE - 0.46706) < 1e-5
    for i in (0, 3, 7):  # clip i is waveform[int(start*sr): +32000], mean removed, fbank, normalised
        start = int(clip_timepoints(10.0)[i][0] * sr)
        clip = wave[start: start + 32000]
        expected = (kaldi_fbank(clip - clip.mean()).T - FBANK_MEAN) / FBANK_STD
        np.testing.assert_allclose(feats[i, :, :198], expected, atol=1e-5)


def test_imagebind_features_short_input_is_padded(caplog):
    sr = 16000
    wave = _signals(sr, 1.0)["tone"]
    with caplog.at_level(logging.WARNING, logger="deemo_jax.data.fbank"):
        feats, times = imagebind_audio_features(wave, sr)
    assert "zero-padded" in caplog.text
    np.testing.assert_array_equal(times, np.tile([[0.0, 2.0]], (8, 1)))
    padded = np.concatenate([wave, np.zeros(16000, np.float32)])
    expected = (kaldi_fbank(padded - padded.mean()).T - FBANK_MEAN) / FBANK_STD
    for i in range(8):
        np.testing.assert_allclose(feats[i, :, :198], expected, atol=1e-5)
    silent, _ = imagebind_audio_features(np.zeros(0, np.float32), sr, warn_short=False)
    assert np.all(np.isfinite(silent))
    with pytest.raises(ValueError, match="NaN"):
        imagebind_audio_features(np.full(100, np.nan, np.float32), sr)


def test_resample_keeps_a_tone():
    t48 = np.arange(48000) / 48000
    out = resample(np.sin(2 * np.pi * 440 * t48).astype(np.float32), 48000)
    assert out.shape == (16000,) and out.dtype == np.float32
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(out[200:-200], np.sin(2 * np.pi * 440 * t16)[200:-200], atol=1e-2)
    wave48 = np.sin(2 * np.pi * 440 * np.arange(3 * 48000) / 48000).astype(np.float32)
    feats48, times48 = imagebind_audio_features(wave48, 48000)  # resampled inside
    feats16, times16 = imagebind_audio_features(resample(wave48, 48000), 16000)
    np.testing.assert_array_equal(feats48, feats16)
    np.testing.assert_array_equal(times48, times16)
    assert times48[-1, 1] == 3.0
