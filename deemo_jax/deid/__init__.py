"""De-identification of interview videos: CenterFace face blur with temporal carry-over, McAdams voice
anonymisation, a re-detection privacy audit, and a sidecar that downstream tools check before using a video.

The shard builder accepts a video only if :func:`is_deidentified` is true (equivalently: :func:`load_sidecar`
returns a dict with ``deidentified`` and ``audit.passed`` true).
"""

from .centerface import CenterFace, DetectorUnavailableError
from .faces import MODES, SHAPES, TemporalCarry, anonymize_faces, enlarge_boxes
from .mcadams import alpha_for_seed, anonymize
from .pipeline import (
    AuditFailedError,
    AuditReport,
    DeidSettings,
    audit_video,
    deidentify_video,
    is_deidentified,
    load_sidecar,
    sidecar_path,
)
from .video import MediaError

__all__ = [
    "AuditFailedError",
    "AuditReport",
    "CenterFace",
    "DeidSettings",
    "DetectorUnavailableError",
    "MODES",
    "MediaError",
    "SHAPES",
    "TemporalCarry",
    "alpha_for_seed",
    "anonymize",
    "anonymize_faces",
    "audit_video",
    "deidentify_video",
    "enlarge_boxes",
    "is_deidentified",
    "load_sidecar",
    "sidecar_path",
]
