import cv2
import numpy as np
import pytest

from deemo_jax.deid import (
    AuditFailedError,
    DeidSettings,
    TemporalCarry,
    anonymize_faces,
    deidentify_video,
    enlarge_boxes,
    faces,
)
from deemo_jax.media import iter_frames, probe


def test_enlarge_boxes_uses_deface_semantics_and_drops_empty_boxes():
    boxes = np.array([[10, 20, 30, 60], [95, 95, 140, 140], [50, 50, 50, 70]], np.float32)
    out = enlarge_boxes(boxes, 1.3, (100, 120, 3))
    # each side grows by 0.3 x size: 20x40 -> 32x64 (1.6x), centred
    assert out[0].tolist() == [4, 8, 36, 72]
    assert out[1].tolist() == [82, 82, 120, 100]  # clipped to the 120x100 frame
    assert len(out) == 2  # the zero-width box is gone
    assert enlarge_boxes(boxes[:1], 1.0, (100, 120)).tolist() == [[10, 20, 30, 60]]
    with pytest.raises(ValueError, match="mask_scale"):
        enlarge_boxes(boxes, 0.9, (100, 120))


def _carried_counts(detections, carry_frames):
    carry = TemporalCarry(carry_frames)
    out = [item for boxes in detections for item in carry.push(np.empty(0), boxes)] + carry.flush()
    return [len(boxes) for _, _, boxes in out]


def test_carry_over_covers_frames_before_and_after_a_detection():
    empty = np.zeros((0, 4), np.float32)
    box = np.array([[1, 2, 3, 4]], np.float32)
    detections = [empty, empty, empty, box, empty, empty, empty, empty]
    assert _carried_counts(detections, 2) == [0, 1, 1, 1, 1, 1, 0, 0]
    assert _carried_counts(detections, 0) == [0, 0, 0, 1, 0, 0, 0, 0]


def test_temporal_carry_streams_frames_in_order_with_bounded_look_ahead():
    carry = TemporalCarry(2)
    emitted = []
    for i in range(5):
        ready = carry.push(np.full((1,), i), np.array([[i, i, i + 1, i + 1]], np.float32))
        assert len(emitted) + len(ready) == max(0, i - 1)  # a frame leaves once 2 later frames are known
        emitted += ready
    emitted += carry.flush()
    assert [index for index, _, _ in emitted] == [0, 1, 2, 3, 4]
    assert [int(frame[0]) for _, frame, _ in emitted] == [0, 1, 2, 3, 4]
    assert [sorted(boxes[:, 0].tolist()) for _, _, boxes in emitted] == [
        [0, 1, 2],
        [0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4],
        [2, 3, 4],
    ]


def _textured(height=60, width=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_blur_changes_only_the_ellipse_and_is_strong():
    frame = _textured()
    box = np.array([[10, 10, 50, 50]])
    out = anonymize_faces(frame.copy(), box, mode="blur")
    outside = np.ones(frame.shape[:2], bool)
    outside[10:50, 10:50] = False
    assert np.array_equal(out[outside], frame[outside])
    assert np.array_equal(out[10, 10], frame[10, 10])  # box corner is outside the inscribed ellipse
    centre_before, centre_after = frame[20:40, 20:40].astype(float), out[20:40, 20:40].astype(float)
    assert centre_after.std() < 0.2 * centre_before.std()
    boxed = anonymize_faces(frame.copy(), box, mode="blur", shape="box")
    assert not np.array_equal(boxed[10, 10], frame[10, 10])


def test_mosaic_cells_are_means_and_solid_is_black():
    frame = _textured()
    out = anonymize_faces(
        frame.copy(), np.array([[0, 0, 40, 40]]), mode="mosaic", shape="box", mosaic_cells=8
    )
    np.testing.assert_allclose(
        out[0:5, 0:5].reshape(-1, 3),
        np.round(frame[0:5, 0:5].reshape(-1, 3).mean(0))[None].repeat(25, 0),
        atol=0.5,
    )
    solid = anonymize_faces(frame.copy(), np.array([[0, 0, 40, 40]]), mode="solid", shape="box")
    assert not solid[:40, :40].any() and np.array_equal(solid[:, 40:], frame[:, 40:])


def test_overlapping_boxes_are_filtered_once_over_the_union_of_their_ellipses(monkeypatch):
    frame = _textured(60, 120)
    boxes = np.array([[10, 10, 40, 40], [14, 12, 44, 42], [70, 10, 100, 40]])  # two overlap, one apart
    solid = anonymize_faces(frame.copy(), boxes, mode="solid")
    expected = np.zeros(frame.shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        yy, xx = np.mgrid[y1:y2, x1:x2] + 0.5
        expected[y1:y2, x1:x2] |= ((yy - (y1 + y2) / 2) / ((y2 - y1) / 2)) ** 2 + (
            (xx - (x1 + x2) / 2) / ((x2 - x1) / 2)
        ) ** 2 <= 1
    assert not solid[expected].any() and np.array_equal(solid[~expected], frame[~expected])

    calls = []
    original = faces._gaussian
    monkeypatch.setattr(faces, "_gaussian", lambda roi, sigma: calls.append(roi.shape) or original(roi, sigma))
    anonymize_faces(frame.copy(), boxes, mode="blur")
    assert sorted(calls) == [(30, 30, 3), (32, 34, 3)]  # one blur per group, over the group's bounding box


def test_zero_area_boxes_are_skipped():
    frame = _textured()
    out = anonymize_faces(frame.copy(), np.array([[5, 5, 5, 30], [10, 10, 30, 10]]), mode="blur")
    assert np.array_equal(out, frame)


class DropsOneFrame:
    """Wraps the real detector and misses every face in one frame of the de-identification pass."""

    def __init__(self, detector, drop_frame):
        self.inner, self.drop_frame, self.calls = detector, drop_frame, 0
        self.backend = detector.backend

    def detect(self, frame, threshold=0.2, scale=None):
        call, self.calls = self.calls, self.calls + 1
        boxes, scores = self.inner.detect(frame, threshold, scale)
        if call == self.drop_frame:
            return boxes[:0], scores[:0]
        return boxes, scores


def _sharpness(frame, box):
    x1, y1, x2, y2 = (int(v) for v in box)
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    return cv2.Laplacian(gray, cv2.CV_64F).var()


def test_carry_over_blurs_a_face_the_detector_missed(face_video, detector, tmp_path):
    path, true_boxes = face_video
    missed = 5
    raw = list(iter_frames(path, probe(path)))[missed]
    out = tmp_path / "carried.mp4"
    deidentify_video(
        path, out, DeidSettings(carry_frames=2, audio="drop"), detector=DropsOneFrame(detector, missed)
    )
    frame = list(iter_frames(out, probe(out)))[missed]
    assert _sharpness(frame, true_boxes[missed]) < 0.2 * _sharpness(raw, true_boxes[missed])

    # Control: without carry-over the missed frame shows the face, and the audit catches it.
    leaked = tmp_path / "leaked.mp4"
    with pytest.raises(AuditFailedError) as failure:
        deidentify_video(
            path, leaked, DeidSettings(carry_frames=0, audio="drop"), detector=DropsOneFrame(detector, missed),
            keep_failed=True,
        )
    assert failure.value.report.frames_with_faces == [missed] and not leaked.exists()
    kept = failure.value.quarantined
    frame = list(iter_frames(kept, probe(kept)))[missed]
    assert _sharpness(frame, true_boxes[missed]) > 0.5 * _sharpness(raw, true_boxes[missed])
