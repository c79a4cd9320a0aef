"""Lazy, one-tensor-at-a-time readers for the checkpoint files the PyTorch projects ship.

* safetensors (one file, or HF shards listed by ``model.safetensors.index.json``): ``safe_open`` for the
  header, one tensor per ``get_tensor`` (a copy; bf16 comes back as ``ml_dtypes.bfloat16``).
* ``.pth`` / ``pytorch_model-*.bin``: ``torch.load(mmap=True, weights_only=True, map_location="cpu")``; the
  ``["model"]`` container of LAVIS / Video-LLaMA checkpoints is unwrapped when asked for. torch is an optional
  dependency (``pip install 'deemo-jax[convert]'``), needed only for these files.

Memory: every ``read`` returns a fresh array that owns its memory. The memory-mapped source (the safetensors
mmap, torch's mmap'd storages) is dropped after ``release_bytes`` have been read through it, so the pages it
touched leave the process' RSS instead of accumulating over a 13 GB shard.

Files are checked before anything is unpickled: a truncated zip, a non-checkpoint file and a pickle that would
import anything other than tensors (``weights_only=True`` refuses it; nothing is executed) raise
:class:`CheckpointFormatError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

TORCH_INSTALL_HINT = (
    "reading .pth/.bin checkpoints needs PyTorch: pip install 'deemo-jax[convert]' "
    "(or pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
)
DEFAULT_RELEASE_BYTES = 512 * 2**20

_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


class CheckpointFormatError(ValueError):
    """The file cannot be read as a checkpoint (not one, truncated, unsafe, or the wrong container)."""


class UnsafeCheckpointError(CheckpointFormatError):
    """A pickle that would build objects other than tensors; refused without running it."""


class DamagedCheckpointError(CheckpointFormatError):
    """A checkpoint file whose content is broken (truncated, corrupt): bad data, not a wrong argument."""


@dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: Path
    order: int  # position for sequential reading (byte offset for safetensors, entry order for torch)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class TensorReader:
    """Key -> shape/dtype without reading data; ``read(key)`` loads one tensor."""

    def __init__(self, files: Sequence[Path], release_bytes: int):
        self.files = [Path(f) for f in files]
        self.release_bytes = release_bytes
        self.infos: dict[str, TensorInfo] = {}
        self.non_tensor_keys: list[str] = []  # entries of a state dict that are not tensors
        self.notes: list[str] = []  # what the reader did (unwrapped ``model``, ...), for the manifest/log
        self._open_file: Path | None = None
        self._handle: Any = None
        self._read_through_handle = 0

    # -- shape-only view -------------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: i.shape for k, i in self.infos.items()}

    def reading_order(self, keys: Sequence[str]) -> list[str]:
        """``keys`` sorted by file then position, so shards are read front to back."""
        file_rank = {f: r for r, f in enumerate(self.files)}
        return sorted(keys, key=lambda k: (file_rank[self.infos[k].file], self.infos[k].order))

    # -- data ------------------------------------------------------------------------------------------
    def read(self, key: str) -> np.ndarray:
        info = self.infos[key]
        if self._open_file != info.file or self._read_through_handle >= self.release_bytes:
            self.release()
            self._handle = self._open(info.file)
            self._open_file = info.file
        array = self._get(self._handle, key)
        self._read_through_handle += info.nbytes
        if tuple(array.shape) != info.shape:
            raise DamagedCheckpointError(
                f"corrupt checkpoint: {info.file}: {key} has shape {tuple(array.shape)} but the header says "
                f"{info.shape}; replace it with a fresh download"
            )
        return array

    def release(self) -> None:
        """Drop the memory-mapped source (its pages leave the RSS)."""
        self._handle = None
        self._open_file = None
        self._read_through_handle = 0

    def close(self) -> None:
        self.release()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, file: Path) -> Any:
        raise NotImplementedError

    def _get(self, handle: Any, key: str) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------------------------------ safetensors
class SafetensorsReader(TensorReader):
    def __init__(self, files: Sequence[Path], release_bytes: int = DEFAULT_RELEASE_BYTES):
        super().__init__(files, release_bytes)
        for file in self.files:
            header = _safetensors_header(file)
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                if key in self.infos:
                    raise CheckpointFormatError(
                        f"{file.name}: tensor {key} is also in {self.infos[key].file.name}; the shards overlap"
                    )
                dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
                if dtype is None:
                    raise CheckpointFormatError(f"{file.name}: {key} has unsupported dtype {entry.get('dtype')}")
                self.infos[key] = TensorInfo(
                    key, tuple(int(d) for d in entry["shape"]), dtype, file, int(entry["data_offsets"][0])
                )

    def _open(self, file: Path) -> Any:
        return safe_open(str(file), framework="numpy")

    def _get(self, handle: Any, key: str) -> np.ndarray:
        return handle.get_tensor(key)


def _safetensors_header(file: Path) -> dict:
    """The header, validated by ``safe_open`` (which also checks that the data covers the whole file)."""
    try:
        with safe_open(str(file), framework="numpy"):
            pass
    except SafetensorError as e:
        detail = str(e)
        if "incomplete metadata" in detail or "not fully covered" in detail:
            raise DamagedCheckpointError(
                f"truncated file: {file} ({file.stat().st_size} bytes) is shorter than its safetensors header "
                "says; replace it with a fresh download or copy"
            ) from None
        raise CheckpointFormatError(
            f"not a safetensors file: {file} ({detail}); check that --input is the checkpoint"
        ) from None
    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


# ------------------------------------------------------------------------------------------------ torch
def _import_torch():
    try:
        import torch  # here, not at the top: torch is optional (only .pth/.bin need it) and takes seconds to import
    except ImportError:
        raise CheckpointFormatError(TORCH_INSTALL_HINT) from None
    return torch


_TORCH_TO_NUMPY = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


def _torch_dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def sniff_torch_file(file: Path) -> str:
    """``'zip'`` (torch >= 1.6 format) or ``'legacy'``; raises for anything that is not a torch checkpoint."""
    with open(file, "rb") as f:
        head = f.read(4)
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(file):
            raise DamagedCheckpointError(
                f"truncated file: {file} ({file.stat().st_size} bytes) is an incomplete zip archive (PyTorch "
                "checkpoints are zip files whose index is at the end); replace it with a fresh download or copy"
            )
        with zipfile.ZipFile(file) as z:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist()):
                raise CheckpointFormatError(
                    f"not a PyTorch checkpoint: {file} is a zip archive without data.pkl; check that --input is "
                    "the checkpoint"
                )
        return "zip"
    if head[:1] == b"\x80":  # pickle protocol opcode: torch's pre-1.6 format (or a bare pickle)
        return "legacy"
    raise CheckpointFormatError(
        f"not a PyTorch checkpoint: {file} starts with {head!r}, neither a zip archive nor a pickle; check that "
        "--input is the checkpoint"
    )


def _torch_load(file: Path, fmt: str) -> Any:
    torch = _import_torch()
    try:
        if fmt == "zip":
            return torch.load(file, mmap=True, weights_only=True, map_location="cpu")
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "truncated" in str(e) or "ran out of input" in str(e).lower():
            raise DamagedCheckpointError(
                f"truncated file: {file} ({file.stat().st_size} bytes) ends inside its pickle; replace it with a "
                "fresh download or copy"
            ) from None
        lines = [ln.strip() for ln in str(e).splitlines() if "unsupported" in ln.lower() or "not an allowed" in ln]
        detail = lines[0] if lines else str(e).splitlines()[0]
        # Keep the offending global, drop torch's advice to allowlist it (that would run the pickle).
        detail = detail.removeprefix("WeightsUnpickler error: ").split(" was not an allowed global")[0]
        raise UnsafeCheckpointError(
            f"refused: {file} contains pickled objects that are not plain tensors ({detail}); it was not "
            "unpickled and nothing in it ran. Re-save only its state dict from a trusted environment "
            "(torch.save(state_dict)) or use a safetensors file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, struct.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedCheckpointError(
            f"corrupt or truncated PyTorch checkpoint: {file} ({first}); replace it with a fresh download or copy"
        ) from None


def _is_tensor(value: Any) -> bool:
    torch = _import_torch()
    return isinstance(value, torch.Tensor)


def _unwrap(obj: Any, file: Path, container_key: str | None) -> tuple[dict, str | None]:
    """The state dict inside a loaded object, and a note when a container was unwrapped."""
    if not isinstance(obj, dict):
        raise CheckpointFormatError(
            f"not a state dict: {file} holds a {type(obj).__name__}, expected a dict of tensors"
        )
    if container_key is not None and isinstance(obj.get(container_key), dict):
        others = sorted(str(k) for k in obj if k != container_key)
        note = f"{file.name}: unwrapped [{container_key!r}]" + (f" (also holds {others})" if others else "")
        return obj[container_key], note
    if any(_is_tensor(v) for v in obj.values()):
        return obj, None
    if isinstance(obj.get("model"), dict):  # a training checkpoint given for a raw-state-dict kind
        return obj["model"], f"{file.name}: unwrapped ['model'] (the kind expects a raw state dict)"
    wanted = f" and no {container_key!r} entry" if container_key else ""
    raise CheckpointFormatError(
        f"not a state dict: {file} has no tensors at the top level{wanted} (top-level keys: "
        f"{sorted(str(k) for k in obj)[:8]})"
    )


class TorchReader(TensorReader):
    """``.pth`` / ``.bin`` files; ``container_key`` (e.g. ``"model"``) is unwrapped when present."""

    def __init__(
        self,
        files: Sequence[Path],
        container_key: str | None = None,
        release_bytes: int = DEFAULT_RELEASE_BYTES,
    ):
        super().__init__(files, release_bytes)
        self.container_key = container_key
        self._formats: dict[Path, str] = {}
        self._legacy: dict[Path, dict] = {}  # pre-zip files cannot be mmap'd: kept loaded
        for file in self.files:
            fmt = sniff_torch_file(file)
            self._formats[file] = fmt
            state_dict, note = _unwrap(_torch_load(file, fmt), file, container_key)
            if note:
                self.notes.append(note)
            if fmt == "legacy":
                self.notes.append(f"{file.name}: pre-1.6 torch format, loaded whole (no mmap)")
                self._legacy[file] = state_dict
            for order, (key, value) in enumerate(state_dict.items()):
                key = str(key)
                if not _is_tensor(value):
                    self.non_tensor_keys.append(key)
                    continue
                if key in self.infos:
                    raise CheckpointFormatError(
                        f"{file.name}: tensor {key} is also in {self.infos[key].file.name}; the shards overlap"
                    )
                name = _torch_dtype_name(value)
                if name not in _TORCH_TO_NUMPY:
                    raise CheckpointFormatError(f"{file.name}: {key} has unsupported dtype {name}")
                self.infos[key] = TensorInfo(
                    key, tuple(value.shape), np.dtype(_TORCH_TO_NUMPY[name]), file, order
                )
            del state_dict

    def _open(self, file: Path) -> Any:
        if file in self._legacy:
            return self._legacy[file]
        return _unwrap(_torch_load(file, self._formats[file]), file, self.container_key)[0]

    def _get(self, handle: Any, key: str) -> np.ndarray:
        torch = _import_torch()
        tensor = handle[key].detach()
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
        return tensor.numpy().copy()

    def close(self) -> None:
        super().close()
        self._legacy.clear()


# ----------------------------------------------------------------------------------------- entry points
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointFormatError(f"bad shard index {index}: {e!r} (expected a JSON with 'weight_map')") from None
    shards = sorted({index.parent / name for name in weight_map.values()})
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise CheckpointFormatError(f"{index} lists shards that are not in {index.parent}: {missing}")
    return shards


def weight_files(directory: Path) -> tuple[str, list[Path]]:
    """(``'safetensors'`` | ``'torch'``, shard files) of a Hugging Face model directory (safetensors preferred)."""
    if (directory / SAFETENSORS_INDEX).exists():
        return "safetensors", _index_shards(directory / SAFETENSORS_INDEX)
    singles = sorted(directory.glob("*.safetensors"))
    if singles:
        return "safetensors", singles
    if (directory / TORCH_BIN_INDEX).exists():
        return "torch", _index_shards(directory / TORCH_BIN_INDEX)
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        return "torch", bins
    raise CheckpointFormatError(
        f"no weights in {directory}: expected {SAFETENSORS_INDEX}, *.safetensors, {TORCH_BIN_INDEX} or "
        "pytorch_model*.bin"
    )


def open_checkpoint(
    path: Path | Sequence[Path],
    *,
    container_key: str | None = None,
    release_bytes: int = DEFAULT_RELEASE_BYTES,
) -> TensorReader:
    """A reader for a file, a list of shards, or a Hugging Face directory; the format is taken from the name."""
    if isinstance(path, (str, Path)):
        path = Path(path)
        if not path.exists():
            raise CheckpointFormatError(f"no such file or directory: {path}; check --input")
        if path.is_dir():
            fmt, files = weight_files(path)
        else:
            files = [path]
            fmt = "safetensors" if path.suffix == ".safetensors" else "torch"
    else:
        files = [Path(p) for p in path]
        fmt = "safetensors" if all(f.suffix == ".safetensors" for f in files) else "torch"
    if fmt == "safetensors":
        return SafetensorsReader(files, release_bytes)
    return TorchReader(files, container_key, release_bytes)
