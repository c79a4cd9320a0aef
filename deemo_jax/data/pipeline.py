"""Grain input pipeline: shard records -> batches of docs/DESIGN.md §3.

Pipeline (per process)::

    train: ArrayRecordDataSource(split files) -> seeded shuffle (reshuffled every epoch) -> infinite repeat
           -> decode + prompt + tokenise + labels + reference crop of the frames (per-example rng from the global index)
           -> this process's slices of the global stream -> optional mp_prefetch workers -> batch
    eval:  ArrayRecordDataSource(split files) -> [shard_index::shard_count] -> decode ... -> batch

Train-mode process sharding: every process defines the same seeded global example stream, cut into slices
of ``batch_size`` consecutive examples; process ``p`` of ``P`` takes slices ``p, p + P, p + 2P, ...``
(it reads only those records). So at every step the concatenation, in process order, of the processes'
batches is exactly the batch of size ``P * batch_size`` a single process would see: the global batch does
not depend on the process count, and a run gives the same losses on 1 or many hosts.

Shard files of a split are ``{shard_dir}/{split}.array_record`` or ``{shard_dir}/{split}-*.array_record``
(e.g. ``train-00000-of-00004.array_record``), read in sorted name order.

What the iterator yields: ``(batch, ids)``. ``batch`` holds exactly the keys of DESIGN.md §3 (``frames`` only
with video, ``fbank`` only with audio); ``ids`` is a list of ``B`` record ids, ``None`` for rows with
``example_mask == 0``.

Sequences: ``input_ids = [BOS] + prompt + target + pad``, padded to exactly ``max_length`` (BOS included in
``max_length``); ``labels`` are -100 except on the target tokens (the ``###`` end symbol included). Prompt and
target are tokenised separately with ``add_special_tokens=False`` (AffectGPT). Over-long examples follow
``overlong_policy``:

- ``"truncate_transcription"`` (default): drop transcription tokens from its end until the sequence fits;
  placeholders and the target are never cut. If the example does not fit even without its transcription, it
  is dropped as under ``"drop"``.
- ``"drop"``: the example is logged with its id, counted in ``DataIterator.num_dropped`` and its id goes to
  ``DataIterator.dropped_ids``; its row becomes a padding row (``example_mask = 0``, labels -100) in both
  modes, so no example is lost silently and the batch layout stays independent of the process count.
- ``"error"``: raise :class:`OverlongError`.

Train mode repeats forever and drops the remainder of the batch stream. Eval mode is one pass in shard order;
the last batch is completed with padding rows (``example_mask = 0``, labels -100, a valid empty prompt with
all placeholders so the model's checks hold), and every process yields the same number of batches
(``DataIterator.num_batches``) so multi-host evaluation steps stay in lockstep.

State: :class:`DataIterator` is a ``grain.DatasetIterator``; ``get_state()`` is a JSON-able dict and
``grain.checkpoint.CheckpointSave(iterator)`` / ``CheckpointRestore(iterator)`` work as Orbax args (e.g. the
``data_iter`` item of an ``ocp.args.Composite``).

Workers: ``worker_count > 0`` uses ``mp_prefetch`` (spawned processes) on single examples, and batches are
formed after it in the main process. Scripts must guard their entry point with ``if __name__ == "__main__":``
(workers re-import ``__main__``); absl flags are marked parsed here (grain 0.2.18 crashes with
``UnparsedFlagAccessError`` otherwise). Batches are deterministic for a given seed; the iterator state is
only valid for the worker count it was saved with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags
from transformers import PreTrainedTokenizerBase

from deemo_jax.data import schema, templates
from deemo_jax.data.augment import random_resized_crop_clip
from deemo_jax.data.prompts import PromptConfig, build_prompt, transcription_span
from deemo_jax.data.shards import (
    CorruptRecordError,
    LocatedRecord,
    ShardSource,
    find_shards,
    read_label_set,
    with_shard_facts,
)
from deemo_jax.data.tokenizer import load_tokenizer, placeholder_ids

logger = logging.getLogger(__name__)

OVERLONG_POLICIES = ("truncate_transcription", "drop", "error")
MODES = ("train", "eval")
IMAGE_SIZE = 224
FBANK_SHAPE = (128, 204)
IGNORE_INDEX = -100
STATUS_OK, STATUS_DROPPED, STATUS_PADDING, STATUS_CORRUPT = 0, 1, 2, 3
_HOST_KEYS = ("_id", "_status")


class OverlongError(ValueError):
    """An example longer than ``max_length`` under ``overlong_policy="error"``."""


@dataclasses.dataclass(frozen=True)
class DataConfig(PromptConfig):
    """Input pipeline settings: the prompt settings it inherits from :class:`PromptConfig` (stated once, there)
    plus where the data is and how it is read (plain fields, so an ``ml_collections.ConfigDict`` maps onto it).

    ``instructions`` empty means the task's default instruction; ``labels`` empty means the label set of
    ``{shard_dir}/metadata.json``. ``num_frames``/``num_audio_clips`` are the per-record T/S every record
    of the split must have (batches are stacked); 0 (the default) reads them from the shards' metadata.json
    (:func:`with_shard_facts`). ``read_threads``/``read_buffer_size`` bound the threads
    and the elements decoded ahead in each process (Grain's defaults, 16 and 500, would hold ~1 GB of frames).
    ``augment``: the reference's train-time crop of the frames (:mod:`deemo_jax.data.augment`; train mode only).
    """

    shard_dir: str = ""
    split: str = "train"
    tokenizer_path: str = ""
    batch_size: int = 2
    max_length: int = 512
    seed: int = 0
    num_frames: int = 0
    num_audio_clips: int = 0
    overlong_policy: str = "truncate_transcription"
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 4
    read_buffer_size: int = 32
    skip_corrupt_records: bool = False
    augment: bool = True

    def __post_init__(self) -> None:
        """No prompt checks here: the label set may still come from the shards. :meth:`prompt_config` builds
        the checked :class:`PromptConfig` once the labels are known."""

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DataConfig:
        """Build from a dict or ``ConfigDict`` (lists become tuples); unknown keys are an error."""
        items = dict(mapping.items())
        unknown = sorted(set(items) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            known = [f.name for f in dataclasses.fields(cls)]
            raise ValueError(f"DataConfig: unknown keys {unknown}; known: {known}")
        for key in ("instructions", "labels"):
            if key in items and not isinstance(items[key], str):
                items[key] = tuple(items[key])
        return cls(**items)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for name in ("batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("num_frames", "num_audio_clips"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"DataConfig.{name} must be an int >= 0 (0 = from the shards), got "
                                 f"{getattr(self, name)!r}")
        if not isinstance(self.worker_count, int) or self.worker_count < 0:
            raise ValueError(f"DataConfig.worker_count must be an int >= 0 (0 = in-process), got {self.worker_count!r}")
        for name in ("worker_buffer_size", "read_threads", "read_buffer_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.overlong_policy not in OVERLONG_POLICIES:
            raise ValueError(
                f"DataConfig.overlong_policy must be one of {OVERLONG_POLICIES}, got {self.overlong_policy!r}"
            )
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"DataConfig.seed must be an int in [0, 2**32), got {self.seed!r}")
        for name in ("shard_dir", "split", "tokenizer_path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"DataConfig.{name} must be a non-empty string, got {getattr(self, name)!r}")

    def prompt_config(self, labels: Sequence[str] = (), tokenizer: Any = None) -> PromptConfig:
        """The prompt settings; ``labels`` is used when ``self.labels`` is empty. A template given by name is
        resolved here (``""``: the tokenizer's chat template, else vicuna; see :mod:`deemo_jax.data.templates`)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PromptConfig)}
        template = self.template
        if isinstance(template, str):
            template = templates.resolve(template, tokenizer)
        return PromptConfig(**{**fields, "labels": tuple(self.labels or labels), "template": template})


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    """One tokenised example, padded to ``max_length`` (int32 arrays)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    num_tokens: int
    truncated_tokens: int


def _placeholder_run(ids: np.ndarray, token_id: int, expected: int, name: str, example_id: str) -> None:
    positions = np.flatnonzero(ids == token_id)
    if len(positions) != expected or (expected and positions[-1] - positions[0] != expected - 1):
        raise ValueError(
            f"example {example_id!r}: expected one run of {expected} consecutive {name} placeholder ids "
            f"({token_id}), found {len(positions)} at positions {positions[:5].tolist()}...; the prompt and "
            "the tokenizer disagree (load the tokenizer with deemo_jax.data.tokenizer.load_tokenizer)"
        )


def tokenize_example(
    prompt: str,
    target: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    overlong_policy: str = "truncate_transcription",
    num_video_tokens: int = 0,
    num_audio_tokens: int = 0,
    example_id: str = "",
    bos: bool = True,
) -> TokenizedExample | None:
    """Tokenise ``prompt``/``target`` into padded arrays; ``None`` when the example is dropped.

    ``bos`` puts the tokenizer's BOS id first (the prompt template says whether its LLM expects one).

    ``num_video_tokens``/``num_audio_tokens`` are the placeholder counts the prompt must contain (0 when the
    modality is off); they are checked to form one consecutive run each.
    """
    if overlong_policy not in OVERLONG_POLICIES:
        raise ValueError(f"overlong_policy must be one of {OVERLONG_POLICIES}, got {overlong_policy!r}")
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    prompt_ids = np.asarray(encoding["input_ids"], dtype=np.int64)
    target_ids = np.asarray(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=np.int64)
    video_id, audio_id = placeholder_ids(tokenizer)
    _placeholder_run(prompt_ids, video_id, num_video_tokens, "video", example_id)
    _placeholder_run(prompt_ids, audio_id, num_audio_tokens, "audio", example_id)

    lead = int(bos)
    excess = lead + len(prompt_ids) + len(target_ids) - max_length
    truncated = 0
    if excess > 0:
        if overlong_policy == "error":
            raise OverlongError(
                f"example {example_id!r} has {excess + max_length} tokens (BOS + prompt + target) > "
                f"max_length {max_length}; raise max_length or use overlong_policy "
                "'truncate_transcription' or 'drop'"
            )
        span = transcription_span(prompt) if overlong_policy == "truncate_transcription" else None
        removable = np.zeros(0, dtype=np.int64)
        offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        if span is not None:
            inside = (offsets[:, 0] >= span[0]) & (offsets[:, 1] <= span[1]) & (offsets[:, 1] > offsets[:, 0])
            removable = np.flatnonzero(inside)
        if excess > len(removable):
            logger.warning(
                "dropping example %r: %d tokens > max_length %d even without its transcription (policy %s)",
                example_id, excess + max_length, max_length, overlong_policy,
            )
            return None
        cut = len(removable) - excess
        # Byte-fallback tokens of one character share its offsets: never keep half a character.
        while 0 < cut < len(removable) and (offsets[removable[cut]] == offsets[removable[cut - 1]]).all():
            cut -= 1
        prompt_ids = np.delete(prompt_ids, removable[cut:])
        truncated = len(removable) - cut

    n = lead + len(prompt_ids) + len(target_ids)
    input_ids = np.full(max_length, tokenizer.pad_token_id, dtype=np.int32)
    if bos:
        input_ids[0] = tokenizer.bos_token_id
    input_ids[lead:lead + len(prompt_ids)] = prompt_ids
    input_ids[lead + len(prompt_ids):n] = target_ids
    labels = np.full(max_length, IGNORE_INDEX, dtype=np.int32)
    labels[lead + len(prompt_ids):n] = target_ids
    attention_mask = np.zeros(max_length, dtype=np.int32)
    attention_mask[:n] = 1
    return TokenizedExample(input_ids, attention_mask, labels, n, truncated)


class ExampleProcessor:
    """Serialized record -> one pipeline element (picklable, so it runs inside Grain workers).

    An element holds the model keys of a batch row plus the host-only keys ``_id`` (record id) and
    ``_status`` (``STATUS_OK``/``STATUS_DROPPED``/``STATUS_PADDING``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_config: PromptConfig,
        *,
        kind: str,
        max_length: int,
        overlong_policy: str,
        num_frames: int, num_audio_clips: int,
        skip_corrupt_records: bool = False,
        augment: bool = False,
    ):
        self.skip_corrupt_records, self.augment = skip_corrupt_records, augment
        self.tokenizer = tokenizer
        self.prompt_config = prompt_config
        self.kind = kind
        self.max_length = max_length
        self.overlong_policy = overlong_policy
        self.num_frames = num_frames
        self.num_audio_clips = num_audio_clips
        self._padding: dict[str, np.ndarray] | None = None

    @property
    def num_video_tokens(self) -> int:
        return self.prompt_config.num_video_query_tokens if self.prompt_config.use_video else 0

    @property
    def num_audio_tokens(self) -> int:
        return self.prompt_config.num_audio_query_tokens if self.prompt_config.use_audio else 0

    def _tokenize(self, record: Mapping[str, Any], rng: np.random.Generator | None, policy: str):
        prompt, target = build_prompt(record, self.prompt_config, rng)
        return tokenize_example(
            prompt, target, self.tokenizer, max_length=self.max_length, overlong_policy=policy,
            num_video_tokens=self.num_video_tokens, num_audio_tokens=self.num_audio_tokens,
            example_id=str(record.get("id")), bos=self.prompt_config.template.bos,
        )

    def _media(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        if self.prompt_config.use_video:
            frames = record["frames"]
            expected = (self.num_frames, IMAGE_SIZE, IMAGE_SIZE, 3)
            if frames.shape != expected:
                raise ValueError(
                    f"record {record.get('id')!r}: frames {frames.shape}, expected {expected}; set "
                    "DataConfig.num_frames to the shards' frame count (all records of a split must agree)"
                )
            out["frames"] = frames
        if self.prompt_config.use_audio:
            if "fbank" not in record:  # schema: has_audio false
                raise ValueError(
                    f"record {record.get('id')!r} comes from a video without an audio track, but this run uses "
                    "the audio modality; set config.data.use_audio=False, or rebuild the shards without that clip"
                )
            fbank = record["fbank"]
            expected = (self.num_audio_clips, *FBANK_SHAPE)
            if fbank.shape != expected:
                raise ValueError(
                    f"record {record.get('id')!r}: fbank {fbank.shape}, expected {expected}; set "
                    "DataConfig.num_audio_clips to the shards' clip count (all records of a split must agree)"
                )
            out["fbank"] = fbank[:, None]
        return out

    def padding_element(self) -> dict[str, np.ndarray]:
        """A masked row: a record with empty texts and zero media, labels all -100, ``example_mask`` 0."""
        if self._padding is None:
            record: dict[str, Any] = {
                "kind": self.kind, "id": "", "caption": "", "transcription": "", "label": "", "reasoning": "",
                "nfbl": [],
            }
            try:
                tokens = self._tokenize(record, None, "error")
            except OverlongError as e:
                raise ValueError(
                    f"max_length {self.max_length} is too small for the prompt skeleton (placeholders, tags "
                    f"and instruction alone): {e}"
                ) from e
            media = {}
            if self.prompt_config.use_video:
                media["frames"] = np.zeros((self.num_frames, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            if self.prompt_config.use_audio:
                media["fbank"] = np.zeros((self.num_audio_clips, 1, *FBANK_SHAPE), np.float32)
            self._padding = {
                "input_ids": tokens.input_ids,
                "attention_mask": tokens.attention_mask,
                "labels": np.full(self.max_length, IGNORE_INDEX, np.int32),
                **media,
                "label_index": np.int32(-1),
                "example_mask": np.int32(0),
                "_id": np.str_(""),
                "_status": np.int32(STATUS_PADDING),
            }
        return dict(self._padding)

    def _corrupt(self, where: str, reason: str) -> dict[str, np.ndarray]:
        if not self.skip_corrupt_records:
            raise CorruptRecordError(
                f"corrupt shard record: {where} ({reason}); rebuild that shard with scripts/build_shards.py, or "
                "set data.skip_corrupt_records=True to skip and count such records"
            )
        logger.warning("skipping corrupt shard record %s (%s)", where, reason)
        return {**self.padding_element(), "_id": np.str_(where), "_status": np.int32(STATUS_CORRUPT)}

    def __call__(self, item: LocatedRecord | bytes, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        if not isinstance(item, LocatedRecord):
            item = LocatedRecord("(in-memory record)", item)
        if item.error is not None:
            return self._corrupt(item.where, item.error)
        try:
            record = schema.decode(item.data)
        except Exception as e:  # msgpack/validation errors of bytes that passed the file checksum
            return self._corrupt(item.where, f"undecodable: {' '.join(str(e).split())[:200]}")
        record_id = str(record["id"])
        if record["kind"] != self.kind:
            raise ValueError(
                f"record {record_id!r} has kind {record['kind']!r} but this split starts with {self.kind!r} "
                "records; a split must hold one kind (caption pre-training and emotion data use separate "
                "shards)"
            )
        tokens = self._tokenize(record, rng, self.overlong_policy)
        if tokens is None:
            return {**self.padding_element(), "_id": np.str_(record_id), "_status": np.int32(STATUS_DROPPED)}
        media = self._media(record)
        if rng is not None and self.augment and "frames" in media:  # after the prompt's draws: they stay as is
            media["frames"] = random_resized_crop_clip(media["frames"], np.random.default_rng(rng.integers(2**63)))
        return {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "labels": tokens.labels,
            **media,
            "label_index": np.int32(record.get("label_index", -1)),
            "example_mask": np.int32(1),
            "_id": np.str_(record_id),
            "_status": np.int32(STATUS_OK),
        }


class _ProcessSlices(grain.MapDataset):
    """Process ``index`` of ``count``: slices ``index, index + count, ...`` of ``group`` consecutive elements.

    Element ``j`` of this dataset is element ``(j // group) * group * count + index * group + j % group`` of
    the parent, so local batches of ``group`` elements concatenate (in process order) to the global batches.
    """

    def __init__(self, parent: grain.MapDataset, *, group: int, index: int, count: int):
        super().__init__(parent)
        self._group, self._index, self._count = group, index, count

    def __len__(self) -> int:
        return len(self._parent) // (self._group * self._count) * self._group

    def __str__(self) -> str:
        return f"ProcessSlices(group={self._group}, index={self._index}, count={self._count})"

    def _global_index(self, index: int) -> int:
        block, offset = divmod(index, self._group)
        return (block * self._count + self._index) * self._group + offset

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._global_index(index)]


class DataIterator(grain.DatasetIterator):
    """Yields ``(batch, ids)``; see the module docstring.

    ``num_batches`` is the pass length in eval mode (None in train mode); ``num_examples`` is the number of
    records this process reads per pass (eval) or the epoch length of the global stream (train).
    """

    def __init__(
        self,
        parent: grain.DatasetIterator,
        *,
        mode: str,
        num_batches: int | None,
        num_examples: int,
        fingerprint: dict[str, Any],
    ):
        super().__init__(parent)
        self.mode = mode
        self.num_batches = num_batches
        self.num_examples = num_examples
        self._fingerprint = fingerprint
        self.num_dropped = 0
        self.dropped_ids: list[str] = []
        self.corrupt_records: list[str] = []  # where each skipped corrupt record was (file and index)

    def __next__(self) -> tuple[dict[str, np.ndarray], list[str | None]]:
        batch = dict(next(self._parent))
        ids, status = (np.asarray(batch.pop(k)) for k in _HOST_KEYS)
        dropped = [str(i) for i, s in zip(ids, status, strict=True) if s == STATUS_DROPPED]
        self.num_dropped += len(dropped)
        self.dropped_ids.extend(dropped)
        self.corrupt_records.extend(str(i) for i, s in zip(ids, status, strict=True) if s == STATUS_CORRUPT)
        mask = batch["example_mask"]
        return {k: np.asarray(v) for k, v in batch.items()}, [
            str(i) if m else None for i, m in zip(ids, mask, strict=True)
        ]

    def get_state(self) -> dict[str, Any]:
        return {
            "pipeline": self._parent.get_state(),
            "num_dropped": self.num_dropped,
            "dropped_ids": list(self.dropped_ids),
            "corrupt_records": list(self.corrupt_records),
            "fingerprint": self._fingerprint,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                f"data iterator state was saved for {state.get('fingerprint')} but this pipeline is "
                f"{self._fingerprint}; restore with the same split, batch size, seed, mode, shard and worker "
                "count"
            )
        self._parent.set_state(state["pipeline"])
        self.num_dropped = int(state["num_dropped"])
        self.dropped_ids = list(state["dropped_ids"])
        self.corrupt_records = list(state.get("corrupt_records", []))


def _split_kind(source: ShardSource, split: str) -> str:
    """The record kind of a split, from its first readable record (a corrupt one is reported when reached)."""
    for index in range(len(source)):
        item = source[index]
        if item.error is None:
            try:
                return schema.decode(item.data)["kind"]
            except Exception:  # reported with its location when the pipeline reaches it
                continue
    raise CorruptRecordError(
        f"split {split!r}: none of its {len(source)} records can be read; rebuild its shards with "
        "scripts/build_shards.py"
    )


def _mark_absl_flags_parsed() -> None:
    """Grain 0.2.18 workers read an absl flag; unparsed flags crash them (google/grain #1355)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_iterator(
    config: DataConfig,
    *,
    mode: str = "train",
    tokenizer: PreTrainedTokenizerBase | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> DataIterator:
    """Build the pipeline of ``config.split`` and return its iterator.

    ``shard_index``/``shard_count`` default to ``jax.process_index()``/``jax.process_count()``. In train mode
    ``config.batch_size`` is the per-process batch and the process takes its slices of the global stream
    (module docstring); in eval mode it reads the records ``shard_index::shard_count``. ``tokenizer``
    defaults to ``load_tokenizer(config.tokenizer_path)``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    config.validate()
    config = with_shard_facts(config)
    if shard_index is None or shard_count is None:
        if shard_index is not None or shard_count is not None:
            raise ValueError("pass both shard_index and shard_count, or neither (then the JAX process is used)")
        import jax  # only for this default: the pipeline itself (and its worker processes) never needs JAX

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
    if tokenizer is None:
        tokenizer = load_tokenizer(config.tokenizer_path)

    files = find_shards(config.shard_dir, config.split)
    source = ShardSource(files)
    num_examples = len(source)
    if mode == "eval" and num_examples < shard_count:
        raise ValueError(
            f"split {config.split!r} has {num_examples} records, fewer than the {shard_count} processes "
            "reading it"
        )
    kind = _split_kind(source, config.split)
    processor = ExampleProcessor(
        tokenizer, config.prompt_config(read_label_set(config.shard_dir), tokenizer), kind=kind,
        max_length=config.max_length, overlong_policy=config.overlong_policy,
        num_frames=config.num_frames, num_audio_clips=config.num_audio_clips,
        skip_corrupt_records=config.skip_corrupt_records, augment=config.augment,
    )
    processor.padding_element()  # fail here, not in a worker, when max_length cannot hold the prompt

    options = grain.MultiprocessingOptions(
        num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size
    )
    read_options = grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=config.read_buffer_size
    )
    if config.worker_count:
        _mark_absl_flags_parsed()
    if mode == "train":
        ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None).random_map(processor)
        ds = _ProcessSlices(ds, group=config.batch_size, index=shard_index, count=shard_count)
        it_ds = ds.to_iter_dataset(read_options)
        if config.worker_count:
            it_ds = it_ds.mp_prefetch(options)
        it_ds = it_ds.batch(config.batch_size, drop_remainder=True)
        num_batches, local_examples = None, num_examples
    else:
        ds = grain.MapDataset.source(source)[shard_index::shard_count]
        local_examples = len(ds)
        ds = ds.map(processor)
        num_batches = math.ceil(math.ceil(num_examples / shard_count) / config.batch_size)
        num_padding = num_batches * config.batch_size - local_examples
        if num_padding:
            padding = grain.MapDataset.source([processor.padding_element()] * num_padding)
            ds = grain.MapDataset.concatenate([ds, padding])
        it_ds = ds.to_iter_dataset(read_options)
        if config.worker_count:
            it_ds = it_ds.mp_prefetch(options)
        it_ds = it_ds.batch(config.batch_size, drop_remainder=False)

    fingerprint = {
        "split": config.split, "mode": mode, "seed": config.seed, "batch_size": config.batch_size,
        "shard_index": shard_index, "shard_count": shard_count, "worker_count": config.worker_count,
        "num_examples": num_examples,
    }
    return DataIterator(iter(it_ds), mode=mode, num_batches=num_batches, num_examples=local_examples,
                        fingerprint=fingerprint)
