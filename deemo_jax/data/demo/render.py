"""Drawing the demo's video: the figure's pose over time (gestures eased in and out) and one OpenCV frame of
the athlete at a press-conference table, whose head is the face of ``skimage.data.astronaut()``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from skimage import data as skimage_data

from .vocabulary import GESTURE_MEANING

# Pose vector (coordinates of the 320x240 design canvas; x relative to the figure's centre line):
# head x, head y, left elbow x, y, left hand x, y, right elbow x, y, right hand x, y, shoulder dy.
# "left" is the image's left.
_HX, _HY, _LEX, _LEY, _LHX, _LHY, _REX, _REY, _RHX, _RHY, _SDY = range(11)
REST_POSE = np.array([0, 78, -50, 158, -28, 176, 50, 158, 28, 176, 0], np.float32)
_HEAD_HALF = (22, 30)  # half width, half height of the head on the design canvas
_TABLE_Y = 172
_MIC = (40, 138)  # microphone head (x relative to centre, y)
_RAMP_S = 0.3


def _pose_target(name: str, tau: float) -> np.ndarray:
    """Target pose of a gesture ``tau`` seconds after it started (oscillating gestures move with tau)."""
    p = REST_POSE.copy()
    wave = math.sin(2 * math.pi * tau)
    if name == "spreading arms":
        p[_LEX : _LHY + 1] = (-74, 132, -102, 104 + 4 * wave)
        p[_REX : _RHY + 1] = (74, 132, 102, 104 + 4 * wave)
    elif name == "raising a fist":
        p[_REX : _RHY + 1] = (62, 104, 64, 58 + 5 * math.sin(2 * math.pi * 1.5 * tau))
    elif name == "nodding":
        p[_HY] += 7 * math.sin(2 * math.pi * 1.6 * tau)
    elif name == "sitting upright":
        p[_SDY], p[_HY] = -9, p[_HY] - 10
        p[[_LHY, _RHY]] -= 14
        p[[_LEY, _REY]] -= 8
    elif name == "folding arms":
        p[_LEX : _LHY + 1] = (-50, 150, 24, 140)
        p[_REX : _RHY + 1] = (50, 154, -24, 146)
    elif name == "lowering the head":
        p[_HY], p[_SDY] = p[_HY] + 20, 4
    elif name == "slumping":
        p[_SDY], p[_HX], p[_HY] = 12, 5, p[_HY] + 22
        p[_LEX : _LHY + 1] = (-46, 172, -32, 190)
        p[_REX : _RHY + 1] = (46, 172, 32, 190)
    elif name == "scratching the nose":
        p[_REX : _RHY + 1] = (44, 140, 2 + 3 * math.sin(2 * math.pi * 3 * tau), p[_HY] + 8)
    elif name == "touching the ear":
        p[_REX : _RHY + 1] = (54, 132, _HEAD_HALF[0] + 3, p[_HY] + 2 + 2 * wave)
    elif name == "rubbing the eyes":
        s = 4 * math.sin(2 * math.pi * 2.5 * tau)
        p[_LEX : _LHY + 1] = (-42, 140, -9 + s, p[_HY] - 6)
        p[_REX : _RHY + 1] = (42, 140, 9 - s, p[_HY] - 6)
    elif name == "illustrative hand gestures":
        s, c = math.sin(2 * math.pi * 1.2 * tau), math.cos(2 * math.pi * 1.2 * tau)
        p[_LEX : _LHY + 1] = (-54, 158, -30 - 12 * s, 146 + 6 * c)
        p[_REX : _RHY + 1] = (54, 158, 30 + 12 * c, 146 + 6 * s)
    elif name == "adjusting the microphone":
        p[_REX : _RHY + 1] = (64, 160, _MIC[0] + 2 * wave, _MIC[1] + 4)
    else:
        raise ValueError(f"unknown gesture {name!r}; known: {sorted(GESTURE_MEANING)}")
    return p


def _smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def pose_at(t: float, gestures: Sequence[dict[str, Any]]) -> np.ndarray:
    """Pose at time ``t`` (s) given NFBL spans ``{label, start, end}`` on the same timeline."""
    pose = REST_POSE.copy()
    pose[_HX] += 2 * math.sin(2 * math.pi * 0.25 * t)  # idle sway
    for g in gestures:
        if g["start"] <= t <= g["end"]:
            ramp = min(_RAMP_S, (g["end"] - g["start"]) / 3)
            w = _smoothstep((t - g["start"]) / ramp) * _smoothstep((g["end"] - t) / ramp)
            pose = pose + w * (_pose_target(g["label"], t - g["start"]) - REST_POSE)
    return pose


@functools.lru_cache(maxsize=1)
def _face_crop() -> np.ndarray:
    """The face of ``skimage.data.astronaut()`` (public-domain NASA portrait), BGR."""
    return np.ascontiguousarray(skimage_data.astronaut()[28:178, 172:280, ::-1])


@functools.lru_cache(maxsize=8)
def _face_sprite(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Face resized to the head, and a soft elliptical alpha mask ``[h, w, 1]`` float32."""
    face = cv2.resize(_face_crop(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = ((xx + 0.5 - width / 2) / (width / 2)) ** 2 + ((yy + 0.5 - height / 2) / (height / 2)) ** 2
    alpha = np.clip((1.0 - r) * 6.0, 0.0, 1.0)[..., None]
    return face, alpha


@functools.lru_cache(maxsize=8)
def backdrop(width: int, height: int, bgr: tuple[int, int, int]) -> np.ndarray:
    """Step-and-repeat sponsor backdrop (the static part of every frame), BGR."""
    s = height / 240
    img = np.empty((height, width, 3), np.uint8)
    img[:] = bgr
    light = tuple(min(255, c + 45) for c in bgr)
    for row, y in enumerate(range(int(8 * s), height, int(34 * s))):
        for x in range(int(-10 * s + (row % 2) * 22 * s), width, int(44 * s)):
            cv2.rectangle(img, (x, y), (x + int(26 * s), y + int(12 * s)), light, -1)
            cv2.circle(img, (x + int(34 * s), y + int(6 * s)), max(2, int(4 * s)), light, -1)
    return img


def _shift(pt: tuple[float, float], cx: float, s: float) -> tuple[int, int]:
    return int(round(cx + pt[0] * s)), int(round(pt[1] * s))


def render_frame(
    pose: np.ndarray, background: np.ndarray, shirt_bgr: tuple[int, int, int], x_offset: int, sport: str
) -> np.ndarray:
    """One BGR frame of the figure in ``pose`` over a copy of ``background``."""
    img = background.copy()
    height, width = img.shape[:2]
    s = height / 240
    cx = width / 2 + x_offset * s
    skin = (120, 160, 205)
    sdy = float(pose[_SDY])
    shoulders = ((-34, 118 + sdy), (34, 118 + sdy))
    torso = np.array(
        [
            _shift((-34, 118 + sdy), cx, s),
            _shift((34, 118 + sdy), cx, s),
            _shift((44, 200), cx, s),
            _shift((-44, 200), cx, s),
        ],
        np.int32,
    )
    cv2.fillConvexPoly(img, torso, shirt_bgr, cv2.LINE_AA)
    head = (float(pose[_HX]), float(pose[_HY]))
    neck_top = _shift((head[0], head[1] + _HEAD_HALF[1] - 4), cx, s)
    cv2.line(img, neck_top, _shift((0, 120 + sdy), cx, s), skin, max(2, int(14 * s)), cv2.LINE_AA)
    # Head: the astronaut face, alpha-blended inside an ellipse.
    hw, hh = int(2 * _HEAD_HALF[0] * s), int(2 * _HEAD_HALF[1] * s)
    face, alpha = _face_sprite(hw, hh)
    x0, y0 = _shift((head[0] - _HEAD_HALF[0], head[1] - _HEAD_HALF[1]), cx, s)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + hw, width), min(y0 + hh, height)
    if xb > xa and yb > ya:
        roi = img[ya:yb, xa:xb].astype(np.float32)
        f = face[ya - y0 : yb - y0, xa - x0 : xb - x0]
        a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0]
        img[ya:yb, xa:xb] = (roi + a * (f - roi)).astype(np.uint8)
    # Table front, name card and microphone.
    cv2.rectangle(img, (0, int(_TABLE_Y * s)), (width, height), (40, 55, 70), -1)
    cv2.rectangle(img, (0, int(_TABLE_Y * s)), (width, int((_TABLE_Y + 4) * s)), (70, 90, 110), -1)
    card0, card1 = _shift((-30, 192), cx, s), _shift((30, 212), cx, s)
    cv2.rectangle(img, card0, card1, (235, 235, 235), -1)
    cv2.putText(
        img,
        sport.upper()[:8],
        (card0[0] + int(3 * s), card1[1] - int(6 * s)),
        cv2.FONT_HERSHEY_PLAIN,
        0.7 * s,
        (60, 60, 60),
        1,
        cv2.LINE_AA,
    )
    cv2.line(
        img,
        _shift((_MIC[0] + 6, _TABLE_Y), cx, s),
        _shift((_MIC[0], _MIC[1] + 6), cx, s),
        (30, 30, 30),
        max(1, int(3 * s)),
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img,
        _shift(_MIC, cx, s),
        (max(2, int(5 * s)), max(3, int(8 * s))),
        0,
        0,
        360,
        (25, 25, 25),
        -1,
        cv2.LINE_AA,
    )
    # Arms last: hands may cover the face (that is what NFBL self-manipulations look like).
    arm = max(2, int(11 * s))
    for shoulder, (ex, ey, hx, hy) in (
        (shoulders[0], pose[_LEX : _LHY + 1]),
        (shoulders[1], pose[_REX : _RHY + 1]),
    ):
        p_sh, p_el, p_ha = _shift(shoulder, cx, s), _shift((ex, ey), cx, s), _shift((hx, hy), cx, s)
        cv2.line(img, p_sh, p_el, shirt_bgr, arm, cv2.LINE_AA)
        cv2.line(img, p_el, p_ha, skin, max(2, int(9 * s)), cv2.LINE_AA)
        cv2.circle(img, p_ha, max(2, int(7 * s)), skin, -1, cv2.LINE_AA)
    return img

