"""De-identification of interview videos: CenterFace face blur with temporal carry-over, McAdams voice
anonymisation, a re-detection privacy audit, and a sidecar that downstream tools check before using a video.

Every consumer (shard builder, infer, demo) applies one rule, :mod:`deemo_jax.deid.rule`
(:func:`require_deidentified`; :func:`is_deidentified` is its boolean form).
"""

from deemo_jax.media import MediaError

from .centerface import CenterFace, DetectorUnavailableError
from .faces import MODES, SHAPES, TemporalCarry, anonymize_faces, enlarge_boxes
from .mcadams import alpha_for_seed, anonymize
from .pipeline import (
    AUDIT_THRESHOLD,
    AuditFailedError,
    AuditReport,
    DeidSettings,
    audit_video,
    deidentify_video,
    is_deidentified,
    load_sidecar,
    sidecar_path,
)
from .rule import DeidCache, NotDeidentifiedError, check_foreign, require_deidentified

__all__ = [
    "AUDIT_THRESHOLD",
    "AuditFailedError",
    "AuditReport",
    "CenterFace",
    "DeidCache",
    "DeidSettings",
    "DetectorUnavailableError",
    "MODES",
    "MediaError",
    "NotDeidentifiedError",
    "SHAPES",
    "TemporalCarry",
    "alpha_for_seed",
    "anonymize",
    "anonymize_faces",
    "audit_video",
    "check_foreign",
    "deidentify_video",
    "enlarge_boxes",
    "is_deidentified",
    "load_sidecar",
    "require_deidentified",
    "sidecar_path",
]
