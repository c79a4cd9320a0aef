"""Speech for the demo: espeak-ng with emotion-dependent prosody (:class:`.plan.Prosody`), as float32 mono."""

from __future__ import annotations

import io
import math
import shutil
import subprocess

import numpy as np
import soundfile as sf

from .plan import Prosody


class SpeechError(RuntimeError):
    """espeak-ng is missing or failed on one sentence."""


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise SpeechError(
            "espeak-ng not found on PATH; install it with `apt-get install -y espeak-ng` "
            "(scripts/setup_env.sh does this)"
        )
    return path


def synthesize_speech(text: str, voice: str, prosody: Prosody, sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with espeak-ng: float32 mono at ``sample_rate``, leading/trailing silence trimmed."""
    from scipy.signal import resample_poly  # scipy.signal costs 1-2 s to import: only when speaking

    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    ssml = f'<speak><prosody range="{prosody.pitch_range}">{escaped}</prosody></speak>'
    cmd = [
        require_espeak(), "-m", "-v", voice, "-p", str(prosody.pitch), "-s", str(prosody.speed),
        "-a", str(prosody.amplitude), "--stdout", ssml,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as e:
        raise SpeechError(f"espeak-ng timed out on {text[:40]!r}") from e
    if proc.returncode != 0 or not proc.stdout:
        reason = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise SpeechError(f"espeak-ng failed for voice {voice!r}: {reason}")
    wave, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wave.ndim > 1:
        wave = wave[:, 0]
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        wave = resample_poly(wave, sample_rate // g, sr // g).astype(np.float32)
    voiced = np.flatnonzero(np.abs(wave) > 0.01 * max(float(np.abs(wave).max()), 1e-6))
    if voiced.size == 0:
        raise SpeechError(f"espeak-ng produced silence for {text[:40]!r}")
    return np.ascontiguousarray(wave[voiced[0] : voiced[-1] + 1])
