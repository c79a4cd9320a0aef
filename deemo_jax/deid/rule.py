"""The one rule for "de-identified", used by every consumer of media (shard builder, infer, the demo).

A video is de-identified only when its sidecar ``<video>.deid.json`` (written by ``scripts/deidentify.py``)

  * can be read and is a JSON object,
  * describes this very file: ``output.sha256`` equals the sha256 of the video's bytes,
  * says de-identification finished (``deidentified: true``) and the privacy audit passed
    (``audit.passed: true``),
  * and that audit was not looser than the strict threshold :data:`AUDIT_THRESHOLD` (``audit.threshold``).

:func:`require_deidentified` applies the rule and raises :class:`NotDeidentifiedError` (what, which file, why,
how to fix) otherwise. :func:`check_foreign` is the ``--already-deidentified`` path for media de-identified
elsewhere: a video without a sidecar must still pass our audit, run here with the detector at the strict
threshold; a video *with* a sidecar is judged by the sidecar alone, so a sidecar that records a failure (failed
audit, unfinished run, other bytes, unreadable) refuses the file even then. Both fail closed: any doubt
(unreadable sidecar, video that cannot be audited) refuses the file.

A :class:`DeidCache` shared by the calls of one build hashes each file once and audits each content (sha256)
once, however many manifest rows use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pipeline import AUDIT_THRESHOLD, audit_video, file_sha256, load_sidecar, sidecar_path

# Why a file is refused (NotDeidentifiedError.reason).
MISSING = "missing"  # the video file does not exist
NO_SIDECAR = "no_sidecar"
UNREADABLE = "unreadable"  # the sidecar is not readable JSON / not an object
OTHER_BYTES = "other_bytes"  # the sidecar describes other bytes (video changed after, or sidecar copied)
AUDIT_FAILED = "audit_failed"  # the sidecar records a failed privacy audit
NOT_FINISHED = "not_finished"  # the sidecar does not record a finished de-identification with a passed audit
LENIENT_AUDIT = "lenient_audit"  # the recorded audit ran at a threshold looser than AUDIT_THRESHOLD
AUDIT_HERE_FAILED = "audit_here_failed"  # --already-deidentified: our audit found faces
NOT_AUDITABLE = "not_auditable"  # --already-deidentified: the video could not be audited (unreadable, ...)
REASONS = (MISSING, NO_SIDECAR, UNREADABLE, OTHER_BYTES, AUDIT_FAILED, NOT_FINISHED, LENIENT_AUDIT,
           AUDIT_HERE_FAILED, NOT_AUDITABLE)

_REDO = "re-run scripts/deidentify.py on the source video"


class NotDeidentifiedError(RuntimeError):
    """``path`` may not be used: it is not de-identified under the rule of this module.

    ``reason`` is one of :data:`REASONS`; ``str(error)`` is one line: the file, why, and how to fix it.
    """

    def __init__(self, path: str | Path, reason: str, message: str):
        self.path, self.reason = Path(path), reason
        super().__init__(message)


def _shown(text: Any, limit: int = 12) -> str:
    if isinstance(text, list) and len(text) > limit:
        return f"{text[:limit]} (+{len(text) - limit} more)"
    return str(text)


@dataclass
class DeidCache:
    """Memo for one build: sha256 per file (keyed by path, size and mtime) and audit reports per sha256."""

    detector: Any = None  # the CenterFace used by check_foreign's audits (created on first use)
    _sha: dict[tuple[str, int, int], str] = field(default_factory=dict)
    _audits: dict[str, Any] = field(default_factory=dict)
    audits_run: int = 0

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._sha:
            self._sha[key] = file_sha256(path)
        return self._sha[key]

    def audit(self, path: Path, sha: str):
        """:func:`audit_video` of ``path`` at :data:`AUDIT_THRESHOLD`, once per content."""
        if sha not in self._audits:
            if self.detector is None:
                from .centerface import CenterFace

                self.detector = CenterFace()
            self._audits[sha] = audit_video(path, AUDIT_THRESHOLD, detector=self.detector)
            self.audits_run += 1
        return self._audits[sha]


def _refuse(path: Path, name: str, reason: str, why: str, fix: str) -> NotDeidentifiedError:
    return NotDeidentifiedError(path, reason, f"{name}: not de-identified: {why}; {fix}")


def _judge_sidecar(path: Path, name: str, cache: DeidCache, *, foreign: bool) -> dict[str, Any] | None:
    """The sidecar of ``path`` if it satisfies the rule; None without a sidecar; raises otherwise."""
    if not path.is_file():
        raise NotDeidentifiedError(path, MISSING, f"{name}: video file not found; check the path")
    if not sidecar_path(path).is_file():
        return None
    never = " (--already-deidentified never overrides a sidecar)" if foreign else ""
    try:
        sidecar = load_sidecar(path, verify=False)
    except ValueError as e:
        cause = " ".join(str(e).split(";")[0].split()).replace(str(sidecar_path(path)), "the sidecar")
        raise _refuse(path, name, UNREADABLE, f"its sidecar {sidecar_path(path).name} cannot be read ({cause})",
                      f"{_REDO}, or delete the broken sidecar{never}") from None
    if not isinstance(sidecar, dict):
        raise _refuse(path, name, UNREADABLE, f"its sidecar {sidecar_path(path).name} is not a JSON object",
                      f"{_REDO}, or delete the broken sidecar{never}")
    output = sidecar.get("output")
    expected = output.get("sha256") if isinstance(output, dict) else None
    if expected is None or expected != cache.sha256(path):
        raise _refuse(
            path, name, OTHER_BYTES,
            "its sidecar was written for other bytes (the sha256 differs: the video was changed after "
            "de-identification, or the sidecar was copied from another video)",
            f"{_REDO} to get a matching sidecar{never}",
        )
    audit = sidecar.get("audit")
    if isinstance(audit, dict) and audit.get("passed") is False:
        raise _refuse(
            path, name, AUDIT_FAILED,
            f"its sidecar records a failed privacy audit (faces above {audit.get('threshold', AUDIT_THRESHOLD)} "
            f"in frames {_shown(audit.get('frames_with_faces', '?'))}, max score {audit.get('max_score', '?')})",
            f"{_REDO} with stronger masking (--mask-scale, --carry-frames or --mode solid) until its audit "
            f"passes{never}",
        )
    if sidecar.get("deidentified") is not True or not (isinstance(audit, dict) and audit.get("passed") is True):
        raise _refuse(path, name, NOT_FINISHED,
                      "its sidecar does not record a finished de-identification with a passed privacy audit",
                      f"{_REDO}{never}")
    threshold = audit.get("threshold", AUDIT_THRESHOLD)
    if not isinstance(threshold, int | float) or threshold > AUDIT_THRESHOLD:
        raise _refuse(
            path, name, LENIENT_AUDIT,
            f"its privacy audit ran at threshold {threshold!r}, looser than the strict {AUDIT_THRESHOLD}",
            f"{_REDO} with --audit-threshold {AUDIT_THRESHOLD} or lower{never}",
        )
    return sidecar


def require_deidentified(path: str | Path, *, name: str | None = None, cache: DeidCache | None = None
                         ) -> dict[str, Any]:
    """The sidecar of ``path`` when the rule accepts it, else :class:`NotDeidentifiedError`.

    ``name`` is how messages call the file (default ``str(path)``; the shard builder passes the manifest's
    ``video`` value). ``cache`` shares hashes between calls.
    """
    path = Path(path)
    name = str(path) if name is None else name
    sidecar = _judge_sidecar(path, name, cache or DeidCache(), foreign=False)
    if sidecar is None:
        raise _refuse(
            path, name, NO_SIDECAR, f"no de-identification sidecar ({sidecar_path(path).name})",
            "run scripts/deidentify.py on it first, or pass --already-deidentified if it was de-identified "
            "elsewhere (it is then audited here)",
        )
    return sidecar


def check_foreign(path: str | Path, *, detector: Any = None, name: str | None = None,
                  cache: DeidCache | None = None) -> dict[str, Any]:
    """``--already-deidentified``: accept ``path`` only if it is de-identified by the rule or, having no
    sidecar, passes our privacy audit run here (:func:`audit_video` at :data:`AUDIT_THRESHOLD`).

    A sidecar is never overridden: a failed, unfinished, unreadable or mismatching one refuses the file.
    Returns the sidecar, or for an audited file ``{"deidentified": True, "source": "audited here", "audit":
    {...}, "output": {"sha256": ...}}``. Raises :class:`NotDeidentifiedError`;
    :class:`~deemo_jax.deid.DetectorUnavailableError` when no detector backend is installed.
    """
    from .centerface import DetectorUnavailableError

    path = Path(path)
    name = str(path) if name is None else name
    cache = cache or DeidCache()
    if detector is not None:
        cache.detector = detector
    sidecar = _judge_sidecar(path, name, cache, foreign=True)
    if sidecar is not None:
        return sidecar
    sha = cache.sha256(path)
    try:
        report = cache.audit(path, sha)
    except DetectorUnavailableError:
        raise
    except Exception as e:  # fail closed: a video that cannot be audited is refused, with the real cause
        cause = " ".join(str(e).split()).replace(str(path), name) or type(e).__name__
        raise _refuse(path, name, NOT_AUDITABLE, f"it has no sidecar and could not be audited for faces ({cause})",
                      "fix or replace the file, then run scripts/deidentify.py on it") from None
    if not report.passed:
        raise _refuse(
            path, name, AUDIT_HERE_FAILED,
            f"--already-deidentified, but the privacy audit run here finds faces above {report.threshold} in "
            f"frames {_shown(report.frames_with_faces)} (max score {report.max_score:.3f})",
            "run scripts/deidentify.py on it (its audit must pass) and use its output",
        )
    return {"deidentified": True, "source": "audited here", "audit": report.to_dict(), "output": {"sha256": sha}}

