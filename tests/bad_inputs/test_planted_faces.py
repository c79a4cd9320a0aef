"""A face-visible video planted in a manifest in every way the de-identification rule must catch never reaches a
shard: failed-audit sidecar, sidecar of a video changed afterwards, sidecar copied from another video, no
sidecar, and with --already-deidentified a raw face video (our audit runs, at the strict threshold) or a failed
sidecar (never overridden). The shards are opened and every stored frame is re-checked by the face detector."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

from deemo_jax.data import schema
from deemo_jax.data.builder import build_shards
from deemo_jax.data.cli import main
from deemo_jax.deid import CenterFace
from deemo_jax.deid.rule import AUDIT_THRESHOLD as AUDIT
from deemo_jax.exit_codes import SOME_FAILED

from .helpers import assert_one_line_error, run_main
from .test_build_shards import place, row, sidecar, write_manifest

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")

WIDTH, HEIGHT, FRAMES, FPS = 320, 240, 12, 8


def write_face_video(path: Path) -> None:
    """A moving, resizing real face (skimage's public-domain astronaut photo) with a tone: clearly identifiable."""
    import cv2
    from skimage import data

    photo = data.astronaut()
    frames = []
    for t in range(FRAMES):
        size = int(HEIGHT * (0.8 + 0.15 * np.sin(2 * np.pi * t / FRAMES)))
        x0, y0 = int((WIDTH - size) * t / (FRAMES - 1)), (HEIGHT - size) // 2
        frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        frame[y0:y0 + size, x0:x0 + size] = cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
         "-r", str(FPS), "-i", "pipe:0", "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=16000",
         "-t", str(FRAMES / FPS), "-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", "-shortest", str(path)],
        input=np.stack(frames).tobytes(), check=True,
    )


class SpyDetector:
    """The real CenterFace, recording the frames it is asked about."""

    def __init__(self, detector: CenterFace):
        self.detector, self.backend, self.shapes = detector, detector.backend, []

    def detect(self, frame, threshold, scale=None):
        self.shapes.append(frame.shape)
        return self.detector.detect(frame, threshold, scale)


@pytest.fixture(scope="module")
def detector() -> CenterFace:
    return CenterFace(threads=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, detector) -> Path:
    """A folder with a clean de-identified video and the face video planted five ways."""
    d = tmp_path_factory.mktemp("planted")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "3", "-pix_fmt", "yuv420p",
                    str(d / "clean.mp4")], check=True)
    face = d / "face.mp4"
    write_face_video(face)
    assert all(detector.detect(f, AUDIT)[1].size for f in _decode(face)), "the planted video must show a face"
    place(d, d, "ok.mp4", "clean.mp4")  # de-identified, passed audit, matching sidecar
    shutil.copy(face, d / "raw.mp4")  # no sidecar
    shutil.copy(face, d / "raw_copy.mp4")  # the same bytes under another name
    shutil.copy(face, d / "failed.mp4")
    sidecar(d / "failed.mp4", passed=False)  # what deidentify.py writes when its audit fails
    place(d, d, "stale.mp4", "clean.mp4")
    shutil.copy(face, d / "stale.mp4")  # changed after its (passing) sidecar was written
    shutil.copy(face, d / "copied.mp4")
    shutil.copy(d / "ok.mp4.deid.json", d / "copied.mp4.deid.json")  # another video's passing sidecar
    shutil.copy(d / "clean.mp4", d / "foreign_clean.mp4")  # de-identified elsewhere, no face, no sidecar
    return d


def _decode(path: Path) -> list[np.ndarray]:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                         capture_output=True, check=True).stdout
    return list(np.frombuffer(raw, np.uint8).reshape(-1, HEIGHT, WIDTH, 3))


def shard_records(out: Path) -> list[dict]:
    meta = json.loads((out / "metadata.json").read_text())
    records = []
    for shard in meta["shards"]:
        reader = ArrayRecordReader(str(out / shard["file"]))
        records += [schema.decode(r) for r in reader.read_all()]
        reader.close()
    return records


def assert_no_face_in_shards(out: Path, detector: CenterFace, expected_ids: set[str]) -> None:
    records = shard_records(out)
    assert {r["id"] for r in records} == expected_ids
    for r in records:
        for frame in r["frames"]:
            _, scores = detector.detect(np.ascontiguousarray(frame), AUDIT)
            assert not scores.size, f"a face (score {scores.max():.2f}) in record {r['id']}"
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    counts = json.loads((out / "metadata.json").read_text())["counts"]
    assert counts["written"] + len(failures) == counts["manifest_rows"] and len(records) == counts["written"]


def test_planted_faces_without_the_flag_never_reach_a_shard(planted, detector, tmp_path, capsys):
    rows = [row("ok", str(planted / "ok.mp4")), row("failed", str(planted / "failed.mp4")),
            row("stale", str(planted / "stale.mp4")), row("copied", str(planted / "copied.mp4")),
            row("raw", str(planted / "raw.mp4"))]
    out = tmp_path / "shards"
    result = run_main(main, ["--manifest", str(write_manifest(tmp_path, rows)), "--output", str(out),
                             "--no-progress"], capsys)
    assert_one_line_error(result, "4 row(s) were not written", "failures.jsonl", code=SOME_FAILED)
    assert_no_face_in_shards(out, detector, {"ok"})
    reasons = {f["id"]: f["reason"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert "failed.mp4: not de-identified: its sidecar records a failed privacy audit" in reasons["failed"]
    assert "stale.mp4: not de-identified: its sidecar was written for other bytes" in reasons["stale"]
    assert "copied.mp4: not de-identified: its sidecar was written for other bytes" in reasons["copied"]
    assert "raw.mp4: not de-identified: no de-identification sidecar" in reasons["raw"]


def test_planted_faces_with_already_deidentified_are_audited_here_or_refused(planted, detector, tmp_path):
    rows = [row("ok", "ok.mp4"), row("foreign_clean", "foreign_clean.mp4"),
            row("raw", "raw.mp4"), row("raw_again", "raw.mp4", start=0.5, end=1.5), row("raw_copy", "raw_copy.mp4"),
            row("failed", "failed.mp4"), row("stale", "stale.mp4"), row("copied", "copied.mp4")]
    manifest = write_manifest(planted / "manifest_flag", [{**r, "video": f"../{r['video']}"} for r in rows])
    spy = SpyDetector(detector)
    out = tmp_path / "shards"
    report = build_shards(manifest, out, already_deidentified=True, progress=False, detector=spy)
    assert (report.written, report.failed) == (2, 6)
    assert_no_face_in_shards(out, detector, {"ok", "foreign_clean"})
    reasons = {f.id: f.reason for f in report.failures}
    for clip in ("raw", "raw_again", "raw_copy"):  # our audit at the strict threshold finds the face
        assert f"the privacy audit run here finds faces above {AUDIT} in frames" in reasons[clip], reasons[clip]
    assert "records a failed privacy audit" in reasons["failed"] and "never overrides" in reasons["failed"]
    assert "other bytes" in reasons["stale"] and "other bytes" in reasons["copied"]
    # Audited once per content: the clean foreign video and the face video (3 rows, 2 file names) once each;
    # the videos with sidecars are judged by their sidecar alone.
    assert spy.shapes.count((HEIGHT, WIDTH, 3)) == FRAMES
    assert len(spy.shapes) == FRAMES + 30
    assert AUDIT == 0.5
