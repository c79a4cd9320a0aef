import json
import shutil
import subprocess

import pytest

from deemo_jax.deid import (
    AuditFailedError,
    DeidSettings,
    NotDeidentifiedError,
    audit_video,
    deidentify_video,
    is_deidentified,
    load_sidecar,
    require_deidentified,
    sidecar_path,
)
from deemo_jax.deid.pipeline import partial_path, quarantine_path
from deemo_jax.media import extract_audio, iter_frames, probe


def test_output_passes_audit_keeps_audio_and_has_a_matching_sidecar(face_video, deid_output, detector):
    raw, _ = face_video
    out, returned = deid_output
    assert sidecar_path(out).name == "participant.mp4.deid.json"
    sidecar = load_sidecar(out)
    assert sidecar == returned and is_deidentified(out)
    assert sidecar["deidentified"] is True and sidecar["audit"]["passed"] is True
    assert sidecar["audit"]["frames"] == 12 and sidecar["audit"]["frames_with_faces"] == []
    assert sidecar["audio"]["method"] == "mcadams" and sidecar["audio"]["alpha"] == 0.8
    assert sidecar["video"]["mode"] == "blur" and sidecar["video"]["carry_frames"] == 3
    # no input path or name, no pixels, no samples: only settings, hashes and the audit
    text = sidecar_path(out).read_text()
    assert "participant" not in text.replace('"participant.mp4"', "") and str(raw.parent) not in text
    assert len(text) < 3000

    info = probe(out)
    assert (info.width, info.height, info.fps, info.has_audio) == (320, 240, 8, True)
    assert sum(1 for _ in iter_frames(out, info)) == 12
    voice, original = extract_audio(out), extract_audio(raw)
    assert abs(voice.size - original.size) < 0.1 * original.size
    assert audit_video(out, detector=detector).passed


def test_raw_video_fails_the_audit_on_every_frame(face_video, detector):
    report = audit_video(face_video[0], detector=detector)
    assert not report.passed and report.frames_with_faces == list(range(12)) and report.max_score > 0.7
    assert {d["frame"] for d in report.detections} == set(range(12))


def test_unanonymised_output_never_gets_its_final_name(face_video, detector, tmp_path):
    out = tmp_path / "none.mp4"
    settings = DeidSettings(mode="none", audio="drop")
    with pytest.raises(AuditFailedError, match="privacy audit failed.*output was deleted") as failure:
        deidentify_video(face_video[0], out, settings, detector=detector)
    assert failure.value.quarantined is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no video, no partial, no sidecar
    assert not is_deidentified(out)

    with pytest.raises(AuditFailedError, match="kept as quarantine/none.FAILED.mp4") as failure:
        deidentify_video(face_video[0], out, settings, detector=detector, keep_failed=True)
    kept = quarantine_path(out)
    assert failure.value.quarantined == kept == tmp_path / "quarantine" / "none.FAILED.mp4"
    assert not out.exists() and not sidecar_path(out).exists() and not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quarantine"]
    sidecar = load_sidecar(kept)  # describes the quarantined bytes, and says it failed
    assert sidecar["deidentified"] is False and sidecar["audit"]["passed"] is False
    assert sidecar["audit"]["frames_with_faces"] == list(range(12))
    assert sidecar["quarantine"]["file"] == "quarantine/none.FAILED.mp4"
    assert sidecar["quarantine"]["intended_output"] == "none.mp4"
    assert not is_deidentified(kept)
    with pytest.raises(NotDeidentifiedError, match="failed privacy audit"):
        require_deidentified(kept)


def test_video_without_audio_and_odd_size(tmp_path, detector):
    raw = tmp_path / "silent.mkv"  # lossless FFV1 keeps the odd size that H.264/yuv420p cannot store
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=321x241:rate=10",
            "-frames:v",
            "5",
            "-c:v",
            "ffv1",
            str(raw),
        ],
        check=True,
    )
    assert probe(raw).width == 321
    out = tmp_path / "out" / "silent.mp4"
    sidecar = deidentify_video(raw, out, DeidSettings(), detector=detector)
    assert sidecar["audio"] is None and sidecar["input"]["had_audio"] is False
    assert sidecar["audit"]["frames"] == 5 and sidecar["video"]["fps"] == "10"
    assert (sidecar["video"]["width"], sidecar["video"]["height"]) == (322, 242)
    info = probe(out)
    assert not info.has_audio and (info.width, info.height) == (322, 242)


def test_drop_audio_removes_the_voice(face_video, detector, tmp_path):
    out = tmp_path / "mute.mp4"
    sidecar = deidentify_video(
        face_video[0], out, DeidSettings(audio="drop", carry_frames=0), detector=detector
    )
    assert sidecar["audio"] == {"method": "dropped"} and not probe(out).has_audio


def test_sidecar_only_vouches_for_the_exact_file(deid_output, tmp_path):
    out, _ = deid_output
    copy = tmp_path / "copy.mp4"
    shutil.copy(out, copy)
    assert load_sidecar(copy) is None and not is_deidentified(copy)
    shutil.copy(sidecar_path(out), sidecar_path(copy))
    assert load_sidecar(copy)["audit"]["passed"] is True  # same bytes: still valid
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match"):
        load_sidecar(copy)
    sidecar_path(copy).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_sidecar(copy)


def test_random_alpha_is_not_recorded_and_needs_a_seed(face_video, detector, tmp_path):
    with pytest.raises(ValueError, match="needs a seed"):
        DeidSettings(random_alpha=True)
    out = tmp_path / "random.mp4"
    settings = DeidSettings(random_alpha=True, seed="s3cret", carry_frames=0)
    sidecar = deidentify_video(face_video[0], out, settings, detector=detector)
    assert sidecar["audio"]["alpha"] is None and sidecar["audio"]["seed"] is None
    assert sidecar["audio"]["alpha_range"] == [0.5, 0.9]
    assert "s3cret" not in json.dumps(sidecar)


def test_bad_inputs_raise_clear_errors(tmp_path, detector):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="junk.mp4: ffprobe cannot read it"):
        deidentify_video(junk, tmp_path / "o.mp4", detector=detector)
    with pytest.raises(ValueError, match=".mp4"):
        deidentify_video(junk, tmp_path / "o.avi", detector=detector)
    with pytest.raises(ValueError, match="mode"):
        DeidSettings(mode="pixelate")
    assert not (tmp_path / "o.mp4").exists() and not partial_path(tmp_path / "o.mp4").exists()
