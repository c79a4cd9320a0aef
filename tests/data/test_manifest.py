"""Manifest parsing: every bad row is a failure with a reason, good rows come back resolved."""

from __future__ import annotations

import json

import pytest

from deemo_jax.data.manifest import parse_manifest, validate_labels


def _row(**overrides) -> dict:
    row = {"id": "c1", "video": "v/a.mp4", "start": 1.0, "end": 4.0, "transcription": "I won",
           "label": "positive", "reasoning": "", "split": "train"}
    row.update(overrides)
    return row


def _write(tmp_path, lines: list[bytes | dict | list]):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in lines))
    return path


def test_good_rows_resolve_paths_and_nfbl(tmp_path):
    absolute = tmp_path / "elsewhere" / "b.mp4"
    path = _write(tmp_path, [
        b"\xef\xbb\xbf" + json.dumps(_row(nfbl=[{"label": "arms", "start": 0.0, "end": 2.5}])).encode(),
        b"   ",
        _row(id="c2", video=str(absolute), label="neutral", split="val", start=0, end=2),
    ])
    m = parse_manifest(path, labels=("positive", "negative", "neutral"))
    assert m.failures == [] and m.num_rows == 2
    first, second = m.rows
    assert first.line == 1 and first.video_path == (tmp_path / "v" / "a.mp4").resolve()
    assert first.nfbl_clip_relative() == [{"label": "arms", "start": 0.0, "end": 1.5}]
    assert second.line == 3 and second.video_path == absolute and second.nfbl == ()
    assert (second.label_index, second.split, second.reasoning) == (2, "val", "")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (_row(start=True), "finite number"),
        (_row(start=-1.0), "negative"),
        (_row(end=0.5), "<= start"),
        (_row(split="train/x"), "split"),
        (_row(transcription=7), "must be a string"),
        (_row(nfbl={"label": "x"}), "must be a list"),
        (_row(nfbl=[{"label": "x", "start": 5.0, "end": 6.0}]), "does not overlap the clip"),
        (_row(nfbl=[{"label": "x", "start": 2.0}]), "nfbl[0]"),
        ([1, 2], "JSON object"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{'id': 1}", "invalid JSON"),
    ],
)
def test_bad_rows_are_failures(tmp_path, line, reason):
    m = parse_manifest(_write(tmp_path, [_row(id="ok"), line]))
    assert [r.id for r in m.rows] == ["ok"] and m.num_rows == 2
    (failure,) = m.failures
    assert failure.line == 2 and reason in failure.reason


def test_duplicate_ids_and_labels(tmp_path):
    m = parse_manifest(_write(tmp_path, [_row(), _row(start=5.0, end=6.0)]))
    assert len(m.rows) == 1 and m.failures[0].id == "c1" and "first used on line 1" in m.failures[0].reason
    with pytest.raises(ValueError, match="duplicates"):
        validate_labels(["a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        validate_labels([])
    with pytest.raises(FileNotFoundError, match="--manifest"):
        parse_manifest(tmp_path / "missing.jsonl")
