"""llama.cpp GGUF files -> the ``llama`` component: reader, dequantisation, name mapping, config.

* :class:`GGUFTensorReader` parses the file with the ``gguf`` library's ``GGUFReader`` (metadata and tensor
  infos: name, ggml type, shape, data offset), then forgets it: tensor bytes are read through a plain memory map
  of the file, one tensor at a time, and dequantised to float32 (:func:`dequantize`), so the pipeline streams a
  GGUF like any other checkpoint (the map is dropped every ``release_bytes``). Shapes are reported in torch
  order (``[out, in]``; ggml lists dimensions fastest-first).
* :func:`dequantize` is our own vectorised numpy decoding of the ggml block formats (below).
* :func:`gguf_key_table` maps GGUF tensor names (``token_embd``, ``blk.N.attn_q``, ...) onto the LLaMA tree via
  :mod:`deemo_jax.convert.llama`'s table, undoing llama.cpp's q/k row permutation
  (:func:`deinterleave_rope_rows`).
* :func:`hf_config_from_gguf` turns the ``llama.*`` metadata into the equivalent Hugging Face ``config.json``
  dict, which :func:`deemo_jax.convert.llama.llama_config_from_hf` reads.

Block formats (ggml; every multi-byte field little-endian, ``f16`` = IEEE half). A row of ``n`` values is
``n / block_elements`` consecutive blocks:

==========  ======  =====  ==================================================================================
type        values  bytes  block layout and value
==========  ======  =====  ==================================================================================
``Q8_0``    32      34     ``d: f16, q: int8[32]``; ``x = d * q``
``Q4_0``    32      18     ``d: f16, q: u8[16]``; value j < 16 is the low nibble of ``q[j]``, value 16 + j its
                           high nibble; ``x = d * (nibble - 8)``
``Q4_1``    32      20     ``d: f16, m: f16, q: u8[16]`` (nibbles as Q4_0); ``x = d * nibble + m``
``Q5_0``    32      22     ``d: f16, qh: u32, q: u8[16]``; 5-bit value = nibble (as Q4_0) plus bit j of ``qh``
                           as bit 4 for value j; ``x = d * (q5 - 16)``
``Q5_1``    32      24     ``d: f16, m: f16, qh: u32, q: u8[16]``; ``x = d * q5 + m``
``Q4_K``    256     144    ``d: f16, dmin: f16, scales: u8[12], q: u8[128]``: 8 sub-blocks of 32 with 6-bit
                           scale ``sc`` and min ``mn`` packed in the 12 bytes (j < 4: ``sc = s[j] & 63``,
                           ``mn = s[j+4] & 63``; j >= 4: ``sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4``,
                           ``mn = (s[j+4] >> 4) | (s[j] >> 6) << 4``); byte group i (``q[32i:32i+32]``) holds
                           sub-block 2i in its low nibbles and 2i+1 in its high nibbles;
                           ``x = d * sc * nibble - dmin * mn``
``Q5_K``    256     176    ``d, dmin: f16, scales: u8[12], qh: u8[32], q: u8[128]``: as Q4_K, plus bit j of
                           ``qh[l]`` as bit 4 of value l of sub-block j
``Q6_K``    256     210    ``ql: u8[128], qh: u8[64], scales: int8[16], d: f16``: two halves of 128 values;
                           in half h (``ql[64h:]``, ``qh[32h:]``) value ``32k + l`` (k < 4, l < 32) takes the
                           low nibble of ``ql[l]`` (k=0), of ``ql[32+l]`` (k=1), the high nibble of ``ql[l]``
                           (k=2), of ``ql[32+l]`` (k=3), and bits ``2k, 2k+1`` of ``qh[l]`` as bits 4-5;
                           every 16 values share one scale: ``x = d * scales[i // 16] * (q6 - 32)``
``F32``/``F16``/``BF16``  1  4/2/2  plain (``BF16`` = the high half of a float32)
==========  ======  =====  ==================================================================================
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deemo_jax.convert.common import TensorRule, linear_kernel
from deemo_jax.convert.llama import expected_llama_keys, llama_key_to_target
from deemo_jax.convert.readers import (
    DEFAULT_RELEASE_BYTES,
    CheckpointFormatError,
    DamagedCheckpointError,
    TensorInfo,
    TensorReader,
)
from deemo_jax.models.llama import LlamaConfig

GGUF_MAGIC = b"GGUF"
GGUF_INSTALL_HINT = "reading GGUF files needs the gguf package: pip install gguf==0.19.0"
SUPPORTED_ARCHITECTURES = ("llama",)


# ------------------------------------------------------------------------------------------ dequantise
def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The f16 field at byte ``start`` of every block, as float32 ``[n_blocks, 1]``."""
    return np.ascontiguousarray(blocks[:, start : start + 2]).view(np.float16).astype(np.float32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """``u8[..., 16]`` -> ``[..., 32]``: the 16 low nibbles, then the 16 high nibbles."""
    return np.concatenate([q & 0x0F, q >> 4], axis=-1)


def _q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(np.float32)


def _q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * (_nibbles(b[:, 2:18]).astype(np.float32) - 8.0)


def _q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * _nibbles(b[:, 4:20]).astype(np.float32) + _f16(b, 2)


def _high_bits_32(qh: np.ndarray) -> np.ndarray:
    """``u8[n, 4]`` (a little-endian u32) -> bit j of it as ``u8[n, 32]`` (j = 0..31)."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q5_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 6:22]) | (_high_bits_32(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.astype(np.float32) - 16.0)


def _q5_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 8:24]) | (_high_bits_32(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins packed in ``u8[n, 12]`` (Q4_K, Q5_K), each ``float32[n, 8]``."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k_sub_blocks(q: np.ndarray) -> np.ndarray:
    """``u8[n, 128]`` -> the 4-bit values of 8 sub-blocks ``u8[n, 8, 32]`` (group i: sub-blocks 2i, 2i+1)."""
    q = q.reshape(-1, 4, 1, 32)
    return np.concatenate([q & 0x0F, q >> 4], axis=2).reshape(-1, 8, 32)


def _k_apply(b: np.ndarray, values: np.ndarray) -> np.ndarray:
    scales, mins = _k_scales_mins(b[:, 4:16])
    d, dmin = _f16(b, 0), _f16(b, 2)
    out = (d * scales)[:, :, None] * values.astype(np.float32) - (dmin * mins)[:, :, None]
    return out.reshape(-1, 256)


def _q4_k(b: np.ndarray) -> np.ndarray:
    return _k_apply(b, _k_sub_blocks(b[:, 16:144]))


def _q5_k(b: np.ndarray) -> np.ndarray:
    # qh[l] bit j is bit 4 of value l of sub-block j.
    high = np.unpackbits(b[:, 16:48, None], axis=-1, bitorder="little")  # [n, 32 (l), 8 (j)]
    return _k_apply(b, _k_sub_blocks(b[:, 48:176]) | (high.transpose(0, 2, 1) << 4))


def _q6_k(b: np.ndarray) -> np.ndarray:
    ql = b[:, 0:128].reshape(-1, 2, 2, 32)  # [n, half, first/second 32 bytes, l]
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)  # [n, half, 1, l]
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [n, half, k, l]
    shifts = np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    q = (low | (((qh >> shifts) & 3) << 4)).reshape(-1, 16, 16).astype(np.float32) - 32.0
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    return ((_f16(b, 208) * scales)[:, :, None] * q).reshape(-1, 256)


@dataclass(frozen=True)
class BlockFormat:
    elements: int  # values per block
    bytes: int  # bytes per block
    decode: Callable[[np.ndarray], np.ndarray]  # u8[n_blocks, bytes] -> float32[n_blocks, elements]


def _plain(dtype: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda b: b.reshape(-1).view(dtype).astype(np.float32).reshape(-1, 1)


def _bf16(b: np.ndarray) -> np.ndarray:
    return (b.reshape(-1).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(-1, 1)


BLOCK_FORMATS: dict[str, BlockFormat] = {
    "F32": BlockFormat(1, 4, _plain(np.float32)),
    "F16": BlockFormat(1, 2, _plain(np.float16)),
    "BF16": BlockFormat(1, 2, _bf16),
    "Q8_0": BlockFormat(32, 34, _q8_0),
    "Q4_0": BlockFormat(32, 18, _q4_0),
    "Q4_1": BlockFormat(32, 20, _q4_1),
    "Q5_0": BlockFormat(32, 22, _q5_0),
    "Q5_1": BlockFormat(32, 24, _q5_1),
    "Q4_K": BlockFormat(256, 144, _q4_k),
    "Q5_K": BlockFormat(256, 176, _q5_k),
    "Q6_K": BlockFormat(256, 210, _q6_k),
}
# Decoded this many blocks at a time: bounds the float32 temporaries of a large tensor.
_DECODE_CHUNK_BLOCKS = 2**16


def tensor_nbytes(type_name: str, n_values: int) -> int:
    fmt = _format(type_name)
    return n_values // fmt.elements * fmt.bytes


def _format(type_name: str) -> BlockFormat:
    if type_name not in BLOCK_FORMATS:
        raise CheckpointFormatError(
            f"GGUF tensor type {type_name} is not supported; supported: {sorted(BLOCK_FORMATS)}"
        )
    return BLOCK_FORMATS[type_name]


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decode the bytes of one ggml tensor (``type_name`` e.g. ``"Q4_K"``) into float32 of ``shape``.

    ``shape`` is in numpy order (last dimension = ggml's fastest, ``ne[0]``), whose size must be a multiple of
    the block size; ``raw`` holds exactly ``prod(shape) / elements * bytes`` bytes.
    """
    fmt = _format(type_name)
    n = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % fmt.elements:
        raise CheckpointFormatError(
            f"GGUF {type_name} tensor of shape {tuple(shape)}: rows of {shape[-1]} values are not whole "
            f"{fmt.elements}-value blocks"
        )
    blocks = np.frombuffer(np.ascontiguousarray(raw).data, np.uint8)
    if blocks.size != n // fmt.elements * fmt.bytes:
        raise DamagedCheckpointError(
            f"GGUF {type_name} tensor of shape {tuple(shape)} needs {n // fmt.elements * fmt.bytes} bytes, "
            f"got {blocks.size}"
        )
    blocks = blocks.reshape(-1, fmt.bytes)
    out = np.empty((blocks.shape[0], fmt.elements), np.float32)
    for start in range(0, blocks.shape[0], _DECODE_CHUNK_BLOCKS):
        out[start : start + _DECODE_CHUNK_BLOCKS] = fmt.decode(blocks[start : start + _DECODE_CHUNK_BLOCKS])
    return out.reshape(shape)


# ----------------------------------------------------------------------------------- rope row order
def interleave_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """HF q/k rows (per head: the first halves of the rotary pairs, then the second halves) -> llama.cpp's
    (per head: pairs adjacent). Row ``h*hd + s*hd/2 + i`` moves to ``h*hd + 2i + s``."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return weight.reshape(num_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def deinterleave_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The inverse of :func:`interleave_rope_rows`: llama.cpp q/k rows back to HF's rotate-half order."""
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise ValueError(f"cannot split {rows} rows into {num_heads} heads of rotary pairs")
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# -------------------------------------------------------------------------------------------- reader
def _import_gguf():
    try:
        import gguf  # here, not at the top: only the gguf kind needs it
    except ImportError:
        raise CheckpointFormatError(GGUF_INSTALL_HINT) from None
    return gguf


# Metadata arrays longer than this (the vocabulary, merges, scores) are recorded by their length only.
_MAX_METADATA_ARRAY = 64


class GGUFShapes(dict):
    """``reader.shapes()`` of a GGUF: name -> torch-order shape, plus the file's metadata and tensor types."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, Any],
                 tensor_types: Mapping[str, str], array_lengths: Mapping[str, int]):
        super().__init__(shapes)
        self.metadata = dict(metadata)
        self.tensor_types = dict(tensor_types)
        self.array_lengths = dict(array_lengths)


@dataclass(frozen=True)
class _Raw:
    offset: int
    nbytes: int
    type_name: str


class GGUFTensorReader(TensorReader):
    """One ``.gguf`` file: tensors by their GGUF names, dequantised to float32, in torch shape order.

    ``metadata`` holds every key/value of the file (arrays longer than 64 entries, i.e. the vocabulary, only by
    their length in ``array_lengths``), ``tensor_types`` the ggml type of every tensor.
    """

    def __init__(self, file: Path, release_bytes: int = DEFAULT_RELEASE_BYTES):
        file = Path(file)
        super().__init__([file], release_bytes)
        if not file.exists():
            raise CheckpointFormatError(f"no such file: {file}; check --input")
        with open(file, "rb") as fh:
            head = fh.read(4)
        if head != GGUF_MAGIC:
            raise CheckpointFormatError(
                f"not a GGUF file: {file} starts with {head!r}, not {GGUF_MAGIC!r}; check --input (--source gguf "
                "reads llama.cpp .gguf files)"
            )
        gguf = _import_gguf()
        try:
            parsed = gguf.GGUFReader(file)
        except (ValueError, KeyError, IndexError, OSError, TypeError) as e:
            detail = " ".join(str(e).split()) or type(e).__name__
            raise DamagedCheckpointError(
                f"corrupt or truncated GGUF file: {file} ({detail}); replace it with a fresh download"
            ) from None
        self.version = int(parsed.fields["GGUF.version"].contents()) if "GGUF.version" in parsed.fields else None
        self.metadata: dict[str, Any] = {}
        self.array_lengths: dict[str, int] = {}
        for name, fld in parsed.fields.items():
            if name.startswith("GGUF."):
                continue
            is_array = fld.types and fld.types[0] == gguf.GGUFValueType.ARRAY
            if is_array and len(fld.data) > _MAX_METADATA_ARRAY:
                self.array_lengths[name] = len(fld.data)
                continue
            value = fld.contents()
            self.metadata[name] = value.item() if isinstance(value, np.generic) else value
        self.tensor_types: dict[str, str] = {}
        self._raw: dict[str, _Raw] = {}
        size = file.stat().st_size
        for t in parsed.tensors:
            type_name = t.tensor_type.name
            shape = tuple(int(d) for d in reversed(list(t.shape)))  # ggml: fastest first; torch: last
            self.tensor_types[t.name] = type_name
            if t.data_offset + t.n_bytes > size:
                raise DamagedCheckpointError(
                    f"truncated file: {file} ({size} bytes) ends inside tensor {t.name} (bytes {t.data_offset}.."
                    f"{t.data_offset + t.n_bytes}); replace it with a fresh download"
                )
            self._raw[t.name] = _Raw(int(t.data_offset), int(t.n_bytes), type_name)
            self.infos[t.name] = TensorInfo(t.name, shape, np.dtype(np.float32), file, int(t.data_offset))
        del parsed  # drops its memory map of the whole file
        counts = Counter(self.tensor_types.values())
        self.notes.append(
            f"{file.name}: GGUF v{self.version}, architecture {self.metadata.get('general.architecture')!r}, "
            f"{len(self.infos)} tensors ({', '.join(f'{n} {k}' for k, n in counts.most_common())}), dequantised to "
            "float32"
        )

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def type_counts(self) -> dict[str, int]:
        return dict(Counter(self.tensor_types.values()).most_common())

    def shapes(self) -> GGUFShapes:
        return GGUFShapes(super().shapes(), self.metadata, self.tensor_types, self.array_lengths)

    def _open(self, file: Path) -> Any:
        return np.memmap(file, dtype=np.uint8, mode="r")

    def _get(self, handle: Any, key: str) -> np.ndarray:
        raw = self._raw[key]
        return dequantize(handle[raw.offset : raw.offset + raw.nbytes], raw.type_name, self.infos[key].shape)


# ------------------------------------------------------------------------------------------- mapping
_GGUF_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_PER_LAYER = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_HF_TO_GGUF_TOP = {v: k for k, v in _GGUF_TOP.items()}
_HF_TO_GGUF_LAYER = {v: k for k, v in _GGUF_PER_LAYER.items()}


def gguf_name(hf_key: str) -> str:
    """The GGUF tensor name of a Hugging Face LLaMA key (``model.layers.3.mlp.up_proj.weight`` ->
    ``blk.3.ffn_up.weight``)."""
    if hf_key in _HF_TO_GGUF_TOP:
        return _HF_TO_GGUF_TOP[hf_key]
    m = _HF_LAYER.fullmatch(hf_key)
    if m is None or m.group(2) not in _HF_TO_GGUF_LAYER:
        raise KeyError(hf_key)
    return f"blk.{m.group(1)}.{_HF_TO_GGUF_LAYER[m.group(2)]}"


def _deinterleaved_linear(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def transform(weight: np.ndarray) -> np.ndarray:
        return linear_kernel(deinterleave_rope_rows(weight, num_heads))

    return transform


def gguf_key_table(config: LlamaConfig, component: str = "llama") -> dict[str, TensorRule]:
    """GGUF name -> rule (target path under ``component``, torch-order shape, transform) for every tensor read.

    Uses :mod:`deemo_jax.convert.llama`'s table through the Hugging Face names; q and k rows are put back from
    llama.cpp's interleaved rotary pairs into HF's rotate-half order before the usual ``[in, out]`` transpose.
    """
    table = {}
    for hf_key in expected_llama_keys(config):
        target = llama_key_to_target(hf_key, config)
        transform = target.transform
        if hf_key.endswith("self_attn.q_proj.weight"):
            transform = _deinterleaved_linear(config.num_attention_heads)
        elif hf_key.endswith("self_attn.k_proj.weight"):
            transform = _deinterleaved_linear(config.num_key_value_heads)
        table[gguf_name(hf_key)] = TensorRule((component, *target.path), target.torch_shape, transform)
    return table


def check_tensor_types(shapes: GGUFShapes, names: Iterable[str], file: str = "the GGUF file") -> None:
    """Raise a one-line ``CheckpointFormatError`` naming the tensors of ``names`` whose type cannot be decoded."""
    bad = {n: shapes.tensor_types[n] for n in sorted(names) if shapes.tensor_types.get(n, "F32") not in BLOCK_FORMATS}
    if bad:
        listed = ", ".join(f"{n} ({t})" for n, t in list(bad.items())[:8]) + (", ..." if len(bad) > 8 else "")
        types = sorted(set(bad.values()))
        raise CheckpointFormatError(
            f"{file}: {len(bad)} tensors of type {'/'.join(types)} that --source gguf cannot dequantise: {listed}; "
            f"supported types: {sorted(BLOCK_FORMATS)} (re-quantise the model, e.g. to Q4_K_M or Q8_0)"
        )


# -------------------------------------------------------------------------------------------- config
def _meta(metadata: Mapping[str, Any], key: str, file: str) -> Any:
    if key not in metadata:
        raise ValueError(f"{file}: GGUF metadata lacks {key}; the file is not a complete llama.cpp LLaMA model")
    return metadata[key]


def hf_config_from_gguf(
    shapes: GGUFShapes, file: str = "the GGUF file"
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict equivalent to a llama-architecture GGUF's metadata.

    Raises ``ValueError`` (one line, naming it) for another architecture, and for what the LLaMA implementation
    does not compute: RoPE scaling other than linear (llama3's ``rope_freqs.weight`` included), mixture of experts,
    a rotary dimension other than the head size.
    """
    md = shapes.metadata
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r} in {file}: --source gguf converts {list(SUPPORTED_ARCHITECTURES)}"
            " models only"
        )
    p = f"{arch}."
    if int(md.get(p + "expert_count", 0) or 0) > 0:
        raise ValueError(
            f"{file}: a mixture-of-experts model ({p}expert_count={md[p + 'expert_count']}) is not supported"
        )
    if "rope_freqs.weight" in shapes:
        raise ValueError(
            f"{file}: rope_freqs.weight (per-frequency RoPE factors, e.g. Llama 3.1's scaling) is not supported"
        )
    scaling = md.get(p + "rope.scaling.type", "none") or "none"
    if scaling not in ("none", "linear"):
        raise ValueError(
            f"{file}: RoPE scaling {p}rope.scaling.type={scaling!r} is not supported (only none or linear)"
        )
    hidden = int(_meta(md, p + "embedding_length", file))
    heads = int(_meta(md, p + "attention.head_count", file))
    kv_heads = int(md.get(p + "attention.head_count_kv", heads))
    head_dim = int(md.get(p + "attention.key_length", hidden // heads))
    value_dim = int(md.get(p + "attention.value_length", head_dim))
    if value_dim != head_dim:
        raise ValueError(f"{file}: {p}attention.value_length={value_dim} differs from key_length={head_dim}")
    rot = md.get(p + "rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(
            f"{file}: {p}rope.dimension_count={rot} differs from the head size {head_dim}; partial rotary "
            "embeddings are not supported"
        )
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(md.get(p + "rope.freq_base", 10000.0))}
    if scaling == "linear":
        rope = {**rope, "rope_type": "linear", "factor": float(_meta(md, p + "rope.scaling.factor", file))}
    if "tokenizer.ggml.tokens" in shapes.array_lengths:
        vocab = shapes.array_lengths["tokenizer.ggml.tokens"]
    elif "tokenizer.ggml.tokens" in md:
        vocab = len(md["tokenizer.ggml.tokens"])
    elif p + "vocab_size" in md:
        vocab = int(md[p + "vocab_size"])
    else:
        raise ValueError(f"{file}: GGUF metadata has no tokenizer.ggml.tokens (nor {p}vocab_size)")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(_meta(md, p + "feed_forward_length", file)),
        "num_hidden_layers": int(_meta(md, p + "block_count", file)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(_meta(md, p + "attention.layer_norm_rms_epsilon", file)),
        "rope_parameters": rope,
        "max_position_embeddings": int(md.get(p + "context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for name in ("bos", "eos", "padding"):
        key = f"tokenizer.ggml.{name}_token_id"
        if key in md:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(md[key])
    return config


def gguf_source_info(shapes: GGUFShapes, file: Path) -> dict[str, Any]:
    """What the manifest records about a GGUF source besides its name, size and sha256."""
    md = shapes.metadata
    small = {
        k: v for k, v in md.items() if k != "tokenizer.chat_template" and not (isinstance(v, str) and len(v) > 256)
    }
    return {
        "format": "gguf",
        "file": file.name,
        "architecture": md.get("general.architecture"),
        "name": md.get("general.name"),
        "file_type": md.get("general.file_type"),
        "tensor_types": dict(Counter(shapes.tensor_types.values()).most_common()),
        "chat_template": md.get("tokenizer.chat_template") is not None,
        "metadata": small,
        "metadata_array_lengths": shapes.array_lengths,
    }


def save_gguf_tokenizer(file: Path, target: Path, chat_template: str | None = None) -> list[str]:
    """Write the file's tokenizer (and chat template) as a Hugging Face tokenizer folder; returns the file names.

    transformers builds the tokenizer from the GGUF vocabulary (``AutoTokenizer.from_pretrained(folder,
    gguf_file=name)``); the chat template of the metadata is set when transformers did not keep it.
    """
    from transformers import AutoTokenizer  # here: transformers takes seconds to import

    file = Path(file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except (ValueError, KeyError, OSError) as e:
        detail = " ".join(str(e).split())
        raise CheckpointFormatError(f"cannot build the tokenizer of {file} with transformers ({detail})") from None
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    target.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(target))
    return sorted(p.name for p in target.iterdir())


def transformers_reference(file: Path, num_layers: int | None = None, dtype: Any = np.float32) -> Any:
    """transformers' own reading of the GGUF (``LlamaForCausalLM``, eager attention, float32): the ``--verify``
    reference. Its weights are rounded through ``dtype`` (the converted output's), and only the first
    ``num_layers`` decoder layers are kept when given. Needs torch.
    """
    import torch  # here: torch is optional (--verify and the tests only)
    from transformers import AutoModelForCausalLM

    file = Path(file)
    model = AutoModelForCausalLM.from_pretrained(
        str(file.parent), gguf_file=file.name, dtype=torch.float32, attn_implementation="eager"
    )
    if num_layers is not None and num_layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:num_layers]
        model.config.num_hidden_layers = num_layers
    if np.dtype(dtype) != np.float32:
        rounded = {np.dtype("float16"): torch.float16}.get(np.dtype(dtype), torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(rounded).to(torch.float32))
    return model.eval()
