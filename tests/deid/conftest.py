"""Shared, session-scoped fixtures: one detector, one small synthetic face video, one de-identified output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deemo_jax.deid import CenterFace, DeidSettings, deidentify_video
from tests.deid.synthetic import write_face_video

WIDTH, HEIGHT, FRAMES, FPS = 320, 240, 12, 8


@pytest.fixture(scope="session")
def detector() -> CenterFace:
    return CenterFace(threads=1)


@pytest.fixture(scope="session")
def face_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 12-frame 320x240 clip of a moving, resizing real face with a vowel-like audio track; true boxes."""
    path = tmp_path_factory.mktemp("raw") / "participant.mp4"
    boxes = write_face_video(path, FRAMES, WIDTH, HEIGHT, FPS, audio=True)
    return path, boxes


@pytest.fixture(scope="session")
def deid_output(face_video, detector, tmp_path_factory) -> tuple[Path, dict]:
    """``face_video`` de-identified with the default settings: (output path, returned sidecar)."""
    out = tmp_path_factory.mktemp("deid") / "participant.mp4"
    sidecar = deidentify_video(face_video[0], out, DeidSettings(), detector=detector)
    return out, sidecar
