"""The bundled demo corpus: synthetic post-game interviews made on the machine, with no download.

What it imitates (paper §3): athletes answering questions at a press-conference table after a match, clips
labelled positive or negative, non-facial body language (NFBL) annotated with start/end times, and a reasoning
text per clip that cites transcription, acoustic, visual and NFBL cues and ends by stating the emotion.

The modules, in the order the corpus is made:

- :mod:`.plan` (with the word bank in :mod:`.vocabulary`): :func:`plan_corpus` decides everything from the
  seed. Text: athlete-interview sentences from templates and a per-sport vocabulary; a fraction of the clips
  (``neutral_fraction``) gets a sentiment-neutral transcription, so that in those clips only the voice and the
  body language carry the label. The clip's cues are not perfectly consistent (``gesture_consistency``,
  prosody jitter around a per-speaker base), so no single signal is trivially perfect;
- :mod:`.speech`: ``espeak-ng`` speaks each sentence with emotion-dependent prosody (positive: higher pitch,
  faster, louder, wide pitch range; negative: lower, slower, quieter, flat), each interview with its own voice;
- :mod:`.render`: OpenCV frames of a seated figure at a table with a microphone and a sponsor backdrop, whose
  gestures follow a per-clip schedule (positive: spreading arms, raising a fist, nodding, sitting upright;
  negative: folding arms, lowering the head, slumping, scratching the nose, touching the ear, rubbing the eyes;
  either: illustrative hand gestures, adjusting the microphone). The head is the face of
  ``skimage.data.astronaut()`` (public-domain NASA photo shipped with scikit-image), so the real face detector
  has a real face to find;
- :mod:`.interview` (:func:`generate_interview`, one process per interview): video and audio are muxed by
  ffmpeg into ``raw/``, de-identified with :func:`deemo_jax.deid.deidentify_video` (face blur + McAdams voice +
  audit) into ``deid/``, and the raw file is deleted (``keep_raw=False``);
- :mod:`.corpus`: :func:`make_demo_corpus` runs the interviews (resumable), then writes ``manifest.jsonl``
  (splits by interview), builds the shards with the real builder, trains a SentencePiece tokenizer on all
  text, and writes ``README.md`` and a ``DONE`` marker;
- :mod:`.cli`: the command (``scripts/make_demo_data.py``, ``python -m deemo_jax.data.demo``).
"""

from .corpus import (
    DONE_FILE,
    PLAN_FILE,
    DemoDataError,
    DemoReport,
    NoDemoClipError,
    make_demo_corpus,
    tokenizer_texts,
)
from .interview import InterviewResult, deid_settings, deidentify, generate_interview, render_interview
from .plan import (
    CORPUS_VERSION,
    LABELS,
    ClipPlan,
    DemoConfig,
    GesturePlan,
    InterviewPlan,
    Prosody,
    Speaker,
    plan_corpus,
)
from .render import REST_POSE, pose_at, render_frame
from .speech import SpeechError, require_espeak, synthesize_speech
from .vocabulary import GESTURE_MEANING, GESTURE_POLARITY, SPORTS  # the rest of the word bank: demo.vocabulary

__all__ = [
    "CORPUS_VERSION",
    "ClipPlan",
    "DONE_FILE",
    "DemoConfig",
    "DemoDataError",
    "DemoReport",
    "GESTURE_MEANING",
    "GESTURE_POLARITY",
    "GesturePlan",
    "InterviewPlan",
    "InterviewResult",
    "LABELS",
    "NoDemoClipError",
    "PLAN_FILE",
    "Prosody",
    "REST_POSE",
    "SPORTS",
    "Speaker",
    "SpeechError",
    "deid_settings",
    "deidentify",
    "generate_interview",
    "make_demo_corpus",
    "plan_corpus",
    "pose_at",
    "render_frame",
    "render_interview",
    "require_espeak",
    "synthesize_speech",
    "tokenizer_texts",
]
