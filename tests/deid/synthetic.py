"""A synthetic "interview" clip with a real face (``skimage.data.astronaut()``), for tests and benchmarks
(``from tests.deid.synthetic import write_face_video`` from the repository root).

The face moves and changes size from frame to frame; the optional audio is a vowel-like harmonic tone
with a varying amplitude envelope. Nothing here identifies a real participant (the photo is public domain).
"""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from deemo_jax.media import SAMPLE_RATE, FrameWriter, write_wav

# Face box of skimage.data.astronaut() (512x512) as CenterFace finds it at full resolution (x1, y1, x2, y2).
ASTRONAUT_FACE = (181.5, 58.2, 269.9, 177.8)


def face_frames(n_frames: int, width: int = 640, height: int = 360) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``[T, H, W, 3]`` uint8 and the true face box per frame ``[T, 4]`` (frame pixels)."""
    from skimage import data  # scikit-image takes about a second to import; only this function needs it

    photo = data.astronaut()
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([80 + 60 * xx / width, 90 + 40 * yy / height, 110 + 0 * xx], axis=-1).astype(
        np.uint8
    )
    frames, boxes = [], []
    for t in range(n_frames):
        phase = t / max(n_frames - 1, 1)
        size = int(height * (0.75 + 0.2 * np.sin(2 * np.pi * phase)))  # pasted photo side
        x0 = int((width - size) * phase)
        y0 = (height - size) // 2
        frame = background.copy()
        frame[y0 : y0 + size, x0 : x0 + size] = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
        frames.append(frame)
        s = size / photo.shape[0]
        fx1, fy1, fx2, fy2 = ASTRONAUT_FACE
        boxes.append([x0 + fx1 * s, y0 + fy1 * s, x0 + fx2 * s, y0 + fy2 * s])
    return np.stack(frames), np.asarray(boxes, np.float32)


def vowel_audio(seconds: float, sr: int = SAMPLE_RATE, f0: float = 140.0) -> np.ndarray:
    """Harmonic tone shaped by two formant-like resonances, amplitude-modulated like syllables."""
    t = np.arange(int(seconds * sr)) / sr
    wave = np.zeros_like(t)
    for k in range(1, 30):
        freq = k * f0 * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))
        if freq[0] > sr / 2:
            break
        gain = np.exp(-(((k * f0) - 700) ** 2) / (2 * 150**2)) + 0.5 * np.exp(-(((k * f0) - 1200) ** 2) / 8e4)
        wave += (gain + 0.02) * np.sin(2 * np.pi * np.cumsum(freq) / sr)
    envelope = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 1.5 * t))
    wave *= envelope
    return (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)


def write_face_video(
    path: str | Path,
    n_frames: int = 16,
    width: int = 640,
    height: int = 360,
    fps: int = 8,
    audio: bool = True,
) -> np.ndarray:
    """Encode :func:`face_frames` (with :func:`vowel_audio` if ``audio``) to ``path``; returns the boxes."""
    frames, boxes = face_frames(n_frames, width, height)
    with tempfile.TemporaryDirectory(prefix="deid-synth-") as tmp:
        wav = None
        if audio:
            wav = Path(tmp) / "tone.wav"
            write_wav(wav, vowel_audio(n_frames / fps), SAMPLE_RATE)
        with FrameWriter(path, width, height, Fraction(fps), audio=wav, crf=18) as writer:
            for frame in frames:
                writer.write(frame)
    return boxes
