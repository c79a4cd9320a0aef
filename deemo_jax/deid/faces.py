"""Face regions: box enlargement, temporal carry-over and the anonymising filters.

Carry-over is what deface lacks (its issues #8, #56, #66): a face the detector misses for a frame or two
(turning head, hand in front) would otherwise be shown in clear. Here every box detected at frame t is also
applied to frames t-k .. t+k (``carry_frames = k``), with a look-ahead buffer of k frames.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

MODES = ("blur", "mosaic", "solid")
SHAPES = ("ellipse", "box")
# "none" leaves faces untouched. It exists so tests can show that the audit catches an un-anonymised video;
# the CLI does not offer it, and a video written with it always fails the audit.
ALL_MODES = MODES + ("none",)


def enlarge_boxes(boxes: np.ndarray, mask_scale: float, frame_shape: tuple[int, ...]) -> np.ndarray:
    """deface semantics: each side moves out by ``(mask_scale - 1) * size``, then round and clip to the frame.

    So ``mask_scale=1.3`` gives boxes 1.6x as wide and tall. Returns int32 ``[K, 4]``; boxes with no area left
    after clipping are dropped.
    """
    if mask_scale < 1.0:
        raise ValueError(f"mask_scale must be >= 1 (1 = detector box), got {mask_scale}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    height, width = frame_shape[:2]
    grow = (mask_scale - 1.0) * np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    out = np.round(boxes + np.concatenate([-grow, grow], axis=1))
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    out = out.astype(np.int32)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


class TemporalCarry:
    """Streams frames with a look-ahead of ``carry_frames``: each emitted frame gets the union of the boxes
    detected in the ``carry_frames`` frames before it, itself, and the ``carry_frames`` frames after it.

    ``push(frame, boxes)`` returns the frames that became ready (oldest first) as ``(index, frame, boxes)``;
    ``flush()`` returns the rest at the end of the video.
    """

    def __init__(self, carry_frames: int):
        if carry_frames < 0:
            raise ValueError(f"carry_frames must be >= 0, got {carry_frames}")
        self.carry = carry_frames
        self._frames: deque[np.ndarray] = deque()  # frames not yet emitted, indices next_out .. next_in - 1
        self._boxes: deque[tuple[int, np.ndarray]] = deque()  # (index, boxes) for indices >= next_out - carry
        self._next_in = 0
        self._next_out = 0

    def _emit(self) -> tuple[int, np.ndarray, np.ndarray]:
        index = self._next_out
        window = [b for i, b in self._boxes if abs(i - index) <= self.carry]
        frame = self._frames.popleft()
        self._next_out += 1
        while self._boxes and self._boxes[0][0] < self._next_out - self.carry:
            self._boxes.popleft()
        return index, frame, np.concatenate(window, axis=0)

    def push(self, frame: np.ndarray, boxes: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        self._frames.append(frame)
        self._boxes.append((self._next_in, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)))
        self._next_in += 1
        ready = []
        while self._frames and self._next_in - self._next_out > self.carry:
            ready.append(self._emit())
        return ready

    def flush(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        ready = []
        while self._frames:
            ready.append(self._emit())
        return ready


def _ellipse_mask(height: int, width: int) -> np.ndarray:
    ys = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    xs = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    return (ys[:, None] ** 2 + xs[None, :] ** 2) <= 1.0


def _gaussian(roi: np.ndarray, sigma: float) -> np.ndarray:
    """Strong Gaussian blur. Large sigmas run on an area-downsampled copy (same look, bounded cost)."""
    height, width = roi.shape[:2]
    factor = max(1.0, sigma / 4.0)
    if factor > 1.0:
        small_w, small_h = max(1, round(width / factor)), max(1, round(height / factor))
        small = cv2.resize(roi, (small_w, small_h), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(roi, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _mosaic(roi: np.ndarray, cell: int) -> np.ndarray:
    """Each ``cell x cell`` block replaced by its mean colour (edge cells: mean of the pixels they have)."""
    height, width = roi.shape[:2]
    row_starts, col_starts = np.arange(0, height, cell), np.arange(0, width, cell)
    sums = np.add.reduceat(np.add.reduceat(roi.astype(np.float32), row_starts, axis=0), col_starts, axis=1)
    counts = np.outer(np.diff(np.append(row_starts, height)), np.diff(np.append(col_starts, width)))
    means = np.round(sums / counts[:, :, None]).astype(roi.dtype)
    return np.repeat(np.repeat(means, cell, axis=0)[:height], cell, axis=1)[:, :width]


def _overlap_groups(boxes: np.ndarray) -> list[np.ndarray]:
    """Boxes grouped by (transitive) overlap, so each group is filtered once. With carry-over a face carries
    up to 2k+1 nearly identical boxes per frame; filtering them one by one would multiply the cost."""
    n = len(boxes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    x1, y1, x2, y2 = boxes.T
    overlap = (
        (np.minimum(x2[:, None], x2[None]) > np.maximum(x1[:, None], x1[None]))
        & (np.minimum(y2[:, None], y2[None]) > np.maximum(y1[:, None], y1[None]))
    )
    for i, j in zip(*np.nonzero(np.triu(overlap, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    roots = np.array([root(i) for i in range(n)])
    return [boxes[roots == r] for r in np.unique(roots)]


def anonymize_faces(
    frame: np.ndarray,
    boxes: np.ndarray,
    *,
    mode: str = "blur",
    shape: str = "ellipse",
    blur_strength: float = 0.15,
    mosaic_cells: int = 8,
) -> np.ndarray:
    """Apply the filter inside each (already enlarged, int) box of ``frame`` (modified in place and returned).

    Args:
      mode: "blur" (Gaussian, sigma = ``blur_strength`` x the longer side of the largest box of a group of
        overlapping boxes), "mosaic" (cell means, that side cut into ``mosaic_cells`` cells) or "solid"
        (black).
      shape: "ellipse" (the ellipse inscribed in each box) or "box" (the whole rectangle).
    """
    if mode not in ALL_MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if mode == "none" or len(boxes) == 0:
        return frame
    for group in _overlap_groups(boxes):
        gx1, gy1 = group[:, :2].min(axis=0)
        gx2, gy2 = group[:, 2:].max(axis=0)
        roi = frame[gy1:gy2, gx1:gx2]
        longest = int(np.max(group[:, 2:] - group[:, :2]))
        if mode == "blur":
            filtered = _gaussian(roi, max(1.0, blur_strength * longest))
        elif mode == "mosaic":
            filtered = _mosaic(roi, max(2, -(-longest // mosaic_cells)))
        else:
            filtered = np.zeros_like(roi)
        mask = np.zeros(roi.shape[:2], bool)
        for x1, y1, x2, y2 in group - np.array([gx1, gy1, gx1, gy1]):
            mask[y1:y2, x1:x2] |= _ellipse_mask(y2 - y1, x2 - x1) if shape == "ellipse" else True
        roi[mask] = filtered[mask]
    return frame
