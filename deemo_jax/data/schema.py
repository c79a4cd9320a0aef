"""The versioned record schema of a DEEMO shard (one ArrayRecord record = one clip).

A record is a msgpack map. Arrays are stored as ``{"__nd__": dtype, "shape": [...], "data": bytes}`` so that a
record can be decoded without pickle and without this package's classes. ``SCHEMA_VERSION`` is written in every
record and in the dataset metadata; readers refuse records of a newer major version.

Fields (``kind == "mer"``, emotion recognition/reasoning clips):
  schema_version  int
  kind            "mer" | "caption"
  id              str      clip id from the manifest (never a file path: paths may carry names)
  split           str      e.g. "train" / "val" / "test"
  start, end      float    seconds in the source video
  transcription   str
  label           str      one of the dataset's label set (metadata.json "labels")
  label_index     int      index of ``label`` in that label set
  reasoning       str      free-text emotion reasoning (target of the reasoning task)
  nfbl            list of {"label": str, "start": float, "end": float} (seconds, clip-relative)
  frames          uint8   [T=8, 224, 224, 3] RGB, de-identified
  frame_times     float32 [T] seconds, clip-relative
  has_audio       bool, optional (default true); false: the video has no audio track, and the record has no
                  fbank / audio_clip_times (readers refuse it when the audio modality is on)
  fbank           float32 [S=8, 128, 204] ImageBind-normalised Kaldi fbank (one per 2 s audio clip)
  audio_clip_times float32 [S, 2] start/end seconds of each audio clip, clip-relative
Optional (precomputed frozen-encoder features, filled by a later feature-caching step):
  video_features  float16/float32 [T, 32, 768]  image Q-Former output per frame
  audio_features  float16/float32 [S, 1024]     ImageBind postprocessed embedding per clip
Fields of ``kind == "caption"`` (pre-training): schema_version, kind, id, split, caption, frames [T, 224, 224, 3]
(T = 1 for images), frame_times.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1

MER_REQUIRED = (
    "schema_version", "kind", "id", "split", "start", "end", "transcription", "label", "label_index",
    "reasoning", "nfbl", "frames", "frame_times",
)
MER_AUDIO = ("fbank", "audio_clip_times")  # required unless has_audio is false
CAPTION_REQUIRED = ("schema_version", "kind", "id", "split", "caption", "frames", "frame_times")
OPTIONAL_FEATURES = ("video_features", "audio_features")


class SchemaError(ValueError):
    """A record that does not follow the schema (names the field and what was expected)."""


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__nd__": obj.dtype.str, "shape": list(obj.shape), "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} in a shard record")


def _unpack_hook(obj: dict) -> Any:
    if "__nd__" in obj:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["__nd__"])).reshape(obj["shape"])
    return obj


def validate(record: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` naming the first problem in ``record``."""
    kind = record.get("kind")
    if kind not in ("mer", "caption"):
        raise SchemaError(f"record {record.get('id')!r}: kind must be 'mer' or 'caption', got {kind!r}")
    required = MER_REQUIRED if kind == "mer" else CAPTION_REQUIRED
    if kind == "mer" and record.get("has_audio", True) is not False:
        required = (*required, *MER_AUDIO)
    missing = [k for k in required if k not in record]
    if missing:
        raise SchemaError(f"record {record.get('id')!r}: missing fields {missing}")
    version = record["schema_version"]
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise SchemaError(
            f"record {record['id']!r}: schema_version {version!r} is newer than this reader ({SCHEMA_VERSION}); "
            "upgrade deemo-jax or rebuild the shards"
        )
    frames = record["frames"]
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        raise SchemaError(
            f"record {record['id']!r}: frames must be uint8 [T, H, W, 3], got "
            f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}"
        )
    if kind == "mer" and "fbank" in record:
        fbank = record["fbank"]
        if not (isinstance(fbank, np.ndarray) and fbank.ndim == 3 and fbank.dtype == np.float32):
            raise SchemaError(
                f"record {record['id']!r}: fbank must be float32 [S, 128, 204], got "
                f"{getattr(fbank, 'dtype', type(fbank))} {getattr(fbank, 'shape', '')}"
            )


def encode(record: dict[str, Any]) -> bytes:
    """Validate and serialise one record."""
    validate(record)
    return msgpack.packb(record, default=_pack_default, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    """Deserialise one record (arrays come back as read-only numpy views of the buffer)."""
    record = msgpack.unpackb(data, object_hook=_unpack_hook, raw=False)
    validate(record)
    return record
