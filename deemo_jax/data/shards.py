"""A split's shard files on disk: finding them, reading their records with their location, and the facts
the shard builder states about them in ``metadata.json`` (the one reader of that file).

Shard files of a split are ``{shard_dir}/{split}.array_record`` or ``{shard_dir}/{split}-*.array_record``
(e.g. ``train-00000-of-00004.array_record``), read in sorted name order.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import grain
import numpy as np

SHARD_SUFFIX = ".array_record"
ConfigT = TypeVar("ConfigT")  # a frozen dataclass with shard_dir, num_frames, num_audio_clips


class CorruptRecordError(ValueError):
    """A shard record (or a whole shard file) cannot be read or decoded; the message names the file and the
    record index, and how to go on (rebuild the shard, or ``data.skip_corrupt_records=True``)."""


@dataclasses.dataclass(frozen=True)
class LocatedRecord:
    """What the shard source yields: the serialized record and where it came from, or why it is unreadable."""

    where: str  # "train-00000-of-00002.array_record record 3" (file name and index inside the file)
    data: bytes | None
    error: str | None = None


class ShardSource:
    """The records of a split's shard files, each tagged with its file and index (a Grain data source).

    A record the reader cannot read comes back as a :class:`LocatedRecord` with ``error`` set instead of
    raising deep inside Grain, so the pipeline can name it (or skip and count it). A file that cannot even be
    opened is an error at once: how many records it held is unknown, so skipping it would lose data silently.
    """

    def __init__(self, files: Sequence[Path]):
        self._files = [str(f) for f in files]
        lengths = []
        for f in self._files:
            try:
                lengths.append(len(grain.sources.ArrayRecordDataSource([f])))
            except Exception as e:  # the reader raises RuntimeError/ValueError with a Riegeli message
                raise CorruptRecordError(
                    f"shard file {f} cannot be opened ({' '.join(str(e).split())[:200]}); the file is damaged or "
                    "truncated: rebuild it with scripts/build_shards.py (or move it out of the shard folder)"
                ) from None
        self._starts = np.cumsum([0, *lengths])
        self._source = grain.sources.ArrayRecordDataSource(self._files)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def where(self, index: int) -> str:
        file = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f"{self._files[file]} record {index - int(self._starts[file])}"

    def __getitem__(self, index: int) -> LocatedRecord:
        try:
            return LocatedRecord(self.where(index), self._source[index])
        except Exception as e:  # checksum/decompression errors of a damaged record
            return LocatedRecord(self.where(index), None, " ".join(str(e).split())[:200])


def find_shards(shard_dir: str | Path, split: str) -> list[Path]:
    """The ArrayRecord files of ``split`` in ``shard_dir`` (sorted); a clear error when there are none."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise FileNotFoundError(
            f"shard directory {str(shard_dir)!r} does not exist; build shards with scripts/build_shards.py "
            "or fix DataConfig.shard_dir"
        )
    pattern = re.compile(rf"^{re.escape(split)}(-.+)?{re.escape(SHARD_SUFFIX)}$")
    files = sorted(p for p in shard_dir.iterdir() if p.is_file() and pattern.match(p.name))
    if not files:
        present = sorted(p.name for p in shard_dir.iterdir() if p.name.endswith(SHARD_SUFFIX))
        splits = sorted({re.sub(rf"(-.+)?{re.escape(SHARD_SUFFIX)}$", "", name) for name in present})
        raise FileNotFoundError(
            f"no shards for split {split!r} in {str(shard_dir)!r} (expected {split}{SHARD_SUFFIX} or "
            f"{split}-*{SHARD_SUFFIX}); splits present: {splits}; shard files: {present[:20]}"
        )
    return files


@dataclasses.dataclass(frozen=True)
class ShardFacts:
    """What ``{shard_dir}/metadata.json`` (written by the shard builder) says about every record.

    A field is None when the file (or the field) is absent, e.g. for shards written by hand in tests.
    """

    labels: tuple[str, ...] = ()
    num_frames: int | None = None
    num_audio_clips: int | None = None
    schema_version: int | None = None


def read_shard_facts(shard_dir: str | Path) -> ShardFacts:
    """The one reader of a shard directory's ``metadata.json``."""
    path = Path(shard_dir) / "metadata.json"
    if not path.is_file():
        return ShardFacts()
    try:
        meta = json.loads(path.read_text())
        labels = meta.get("labels", [])
        frames, audio = meta.get("frames") or {}, meta.get("audio") or {}
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(
            f"{str(path)!r} is not a JSON object ({e}); rebuild the shards with scripts/build_shards.py"
        ) from e
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{str(path)!r}: 'labels' must be a list of strings, got {labels!r}")
    return ShardFacts(tuple(labels), frames.get("num_frames"), audio.get("num_clips"), meta.get("schema_version"))


def read_label_set(shard_dir: str | Path) -> tuple[str, ...]:
    """The ``labels`` list of ``{shard_dir}/metadata.json``; empty when the file or the field is absent."""
    return read_shard_facts(shard_dir).labels


def with_shard_facts(config: ConfigT) -> ConfigT:
    """``config`` (a ``DataConfig``) with ``num_frames``/``num_audio_clips`` from the shards' metadata when 0.

    They are facts of the shards: a config may state them only to assert that they match.
    """
    facts = read_shard_facts(config.shard_dir)
    values = {}
    for name, fact, used in (("num_frames", facts.num_frames, getattr(config, "use_video", True)),
                             ("num_audio_clips", facts.num_audio_clips, getattr(config, "use_audio", True))):
        stated = getattr(config, name)
        if not used and not stated:  # a modality the run does not read needs no count
            continue
        if stated and fact is not None and stated != fact:
            raise ValueError(
                f"data.{name} = {stated} but the shards in {config.shard_dir!r} hold {fact} per record "
                f"(metadata.json); remove data.{name} from the config (it is read from the shards) or rebuild them"
            )
        if not stated:
            if fact is None:
                raise ValueError(
                    f"{config.shard_dir!r} has no metadata.json stating {name}; set data.{name} to the records' "
                    "count or rebuild the shards with scripts/build_shards.py"
                )
            values[name] = fact
    return dataclasses.replace(config, **values) if values else config
