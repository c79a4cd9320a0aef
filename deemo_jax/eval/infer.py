"""``scripts/infer.py``: one video in, the emotion and its reasoning out, through the training pipeline.

Steps: the model of a training run is loaded first (so a missing checkpoint fails before any slow work); a
video that the one de-identification rule accepts (``deemo_jax.deid.require_deidentified``: a sidecar matching
its bytes with a finished de-identification and a passed audit) is used as is; any other video is de-identified
(``deemo_jax.deid.deidentify_video``: face blur, McAdams voice, re-detection audit; fail-closed) into a
temporary directory, and the result must pass the same rule (a failed audit refuses the video, nothing of it
is used or kept); the
clip is read from the de-identified file exactly as the shard builder reads it (``media.read_clip``: frames
uniformly sampled and resized to 224x224, 16-kHz audio -> ``fbank.imagebind_audio_features``), with the
run's frame and audio-clip counts; the prompt is built by ``prompts.build_prompt`` with the run's prompt
settings; the answer is generated greedily (by default) and cut at the end symbol. The model never sees the
raw media, and nothing of the raw media is printed or kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deemo_jax import exit_codes, media
from deemo_jax.data import fbank as fb
from deemo_jax.data.pipeline import tokenize_example
from deemo_jax.data.prompts import build_prompt
from deemo_jax.data.shards import read_label_set
from deemo_jax.data.templates import NAMES
from deemo_jax.deid import (
    AuditFailedError,
    DeidSettings,
    DetectorUnavailableError,
    NotDeidentifiedError,
    deidentify_video,
    require_deidentified,
    sidecar_path,
)
from deemo_jax.eval.generate import GenerationConfig, decode_generated, end_symbol_token_sequences, generate
from deemo_jax.eval.labels import parse_label_with_rule
from deemo_jax.files import OutputDirError, ensure_writable_dir, write_atomic
from deemo_jax.media import MediaError
from deemo_jax.train.runs import DEFAULT_DEMO_WORKDIR, LoadedRun, load_run

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = exit_codes.OK, exit_codes.SOME_FAILED, exit_codes.USAGE
# A one-word --transcript ending like this is a file name, not words someone said.
TEXT_FILE_SUFFIXES = (".txt", ".text", ".md", ".json", ".jsonl", ".srt", ".vtt", ".csv", ".tsv", ".lab", ".trn")


def _looks_like_path(value: str) -> bool:
    word = value.strip()
    if not word or any(c.isspace() for c in word):
        return False
    return "/" in word or "\\" in word or word.lower().endswith(TEXT_FILE_SUFFIXES)


def read_transcript(text: str | None = None, file: str | Path | None = None) -> str:
    """The transcription: ``--transcript TEXT`` (the words themselves) or ``--transcript-file PATH`` (a UTF-8
    text file); neither -> empty. Raises ``ValueError`` (one line) for a file that cannot be read and for a
    ``TEXT`` that is a file path (existing or not): a mistyped path must never become the transcription."""
    if text is not None and file is not None:
        raise ValueError("give either --transcript TEXT or --transcript-file PATH, not both")
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise ValueError(f"--transcript-file {str(file)!r} does not exist; check the path, or pass the words "
                             "themselves with --transcript TEXT")
        try:
            return path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"--transcript-file {str(file)!r} is not UTF-8 text; save it as UTF-8") from None
    if text is None:
        return ""
    if Path(text).expanduser().is_file():
        raise ValueError(f"--transcript {text!r} is a file; to read it, pass --transcript-file {text}")
    if _looks_like_path(text):
        raise ValueError(
            f"--transcript {text!r} looks like a file path, but no such file exists; fix the path and pass it "
            "with --transcript-file PATH (--transcript takes the words themselves)"
        )
    return text.strip()


def split_answer(text: str, label: str | None, task: str) -> str:
    """The reasoning part of an answer: for ``"both"`` the text after a leading ``"{label}."``."""
    if task == "both" and label is not None:
        head, sep, rest = text.partition(".")
        if sep and head.strip().lower() == label.lower():
            return rest.strip()
    return "" if task == "recognition" else text


def clip_inputs(video: Path, start: float | None, end: float | None, num_frames: int, num_clips: int
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(frames [T, 224, 224, 3] uint8, fbank [S, 128, 204] float32, notes)`` of a de-identified video.

    A video without an audio track gets silent audio (a note says so), like a silent clip in the shards.
    """
    info = media.probe(video)
    start = 0.0 if start is None else start
    end = info.duration if end is None else end
    notes = []
    if info.audio_sample_rate is None:
        frames, _ = media.read_frames(video, start, end, num_frames=num_frames, info=info)
        notes.append("the video has no audio track: the audio branch gets silence")
        audio, rate = np.zeros(int(fb.SAMPLE_RATE * (end - start)), np.float32), fb.SAMPLE_RATE
    else:  # the shard builder's path (deemo_jax.data.builder.encode_clip)
        clip = media.read_clip(video, start, end, num_frames=num_frames)
        frames, audio, rate = clip.frames, clip.audio, clip.sample_rate
    if audio.size < fb.CLIP_DURATION * fb.SAMPLE_RATE:
        notes.append(f"the clip has {audio.size / fb.SAMPLE_RATE:.2f} s of audio, zero-padded to {fb.CLIP_DURATION} s")
    features, _ = fb.imagebind_audio_features(audio, rate, num_clips=num_clips, warn_short=False)
    return frames, features, notes


def prompt_ids(tokenizer: Any, prompt: str, *, max_length: int, num_video_tokens: int, num_audio_tokens: int,
               bos: bool = True) -> np.ndarray:
    """(BOS +) prompt ids (placeholders checked; an over-long transcription cut as in the pipeline)."""
    tokens = tokenize_example(
        prompt, "", tokenizer, max_length=max_length, overlong_policy="truncate_transcription",
        num_video_tokens=num_video_tokens, num_audio_tokens=num_audio_tokens, example_id="infer", bos=bos,
    )
    if tokens is None:
        raise ValueError(f"the prompt does not fit max_length {max_length} even without its transcription")
    if tokens.truncated_tokens:
        logger.warning("transcription cut by %d tokens to fit max_length %d", tokens.truncated_tokens, max_length)
    return tokens.input_ids[: tokens.num_tokens]


def infer(
    video: str | Path,
    *,
    workdir: str | Path,
    transcript: str = "",
    start: float | None = None,
    end: float | None = None,
    step: int | None = None,
    labels: Sequence[str] = (),
    max_new_tokens: int = 300,
    generation: dict[str, Any] | None = None,
    keep_deidentified: str | Path | None = None,
    run: LoadedRun | None = None,
    template: str | None = None,
) -> dict[str, Any]:
    """Run the whole path on one video; returns ``{"emotion", "reasoning", "answer", "parse_rule", ...}``.

    ``run`` (from :func:`deemo_jax.train.runs.load_run`) replaces ``workdir``/``step``/``template`` when given,
    so several videos can share one loaded model. ``template`` names the prompt template (None: the run's; another
    than the run was trained with raises ``TemplateMismatchError``). ``generation`` holds GenerationConfig fields.
    """
    video = Path(video).expanduser()
    if not video.is_file():
        raise FileNotFoundError(f"video {str(video)!r} does not exist; check the path")
    keep = None
    if keep_deidentified:  # checked before any slow work
        keep = ensure_writable_dir(Path(keep_deidentified).expanduser(), what="--keep-deidentified folder")
    run = run or load_run(workdir, step=step, compilation_cache=True, template=template)
    data = run.data_config(batch_size=1)
    label_set = tuple(labels) or tuple(run.config.data.labels) or read_label_set(data.shard_dir)
    prompt_config = data.prompt_config(label_set, run.tokenizer)
    end_symbol = prompt_config.template.end_symbol
    gen = GenerationConfig(**{**(generation or {}), "max_new_tokens": max_new_tokens})
    gen = dataclasses.replace(gen, eos_id=run.tokenizer.eos_token_id,
                              stop_sequences=end_symbol_token_sequences(run.tokenizer, end_symbol))
    notes = []
    if data.nfbl_as_text:
        notes.append("the model was trained with NFBL annotations as text; a raw video has none ('none' is given)")
    if data.use_transcription and not transcript:
        notes.append("no --transcript or --transcript-file given: the transcription is empty")

    kept = None
    with tempfile.TemporaryDirectory(prefix="deemo-infer-") as tmp:
        try:
            require_deidentified(video)
            deid, sidecar = video, None
            notes.append("the video carries a verified de-identification sidecar: used as is")
        except NotDeidentifiedError as e:
            notes.append(f"the video is not de-identified ({e.reason.replace('_', ' ')}): de-identified first")
            deid = Path(tmp) / (video.stem + ".deid.mp4")
            # A failed audit raises AuditFailedError here: the output stays in tmp and is deleted with it.
            deidentify_video(video, deid, DeidSettings())
            sidecar = require_deidentified(deid)  # the model only reads what the one rule accepts
            if keep is not None:
                kept = _keep(deid, keep)
        frames, features, clip_notes = clip_inputs(deid, start, end, data.num_frames, data.num_audio_clips)
    notes += clip_notes

    record = {"kind": "mer", "id": "infer", "transcription": transcript, "label": "", "reasoning": "", "nfbl": []}
    prompt, _ = build_prompt(record, prompt_config)
    ids = prompt_ids(
        run.tokenizer, prompt, max_length=data.max_length,
        num_video_tokens=prompt_config.num_video_query_tokens if data.use_video else 0,
        num_audio_tokens=prompt_config.num_audio_query_tokens if data.use_audio else 0,
        bos=prompt_config.template.bos,
    )
    output = generate(
        run.model, ids[None], np.ones((1, len(ids)), np.int32), gen,
        frames=frames[None] if data.use_video else None,
        fbank=features[None, :, None] if data.use_audio else None,
    )
    answer = decode_generated(run.tokenizer, output, end_symbol)[0]
    emotion, rule = parse_label_with_rule(answer, label_set) if label_set else (None, "no label set")
    return {
        "emotion": emotion,
        "reasoning": split_answer(answer, emotion, data.task),
        "answer": answer,
        "parse_rule": rule,
        "labels": list(label_set),
        "finish_reason": output.finish_reason(0),
        "checkpoint": {"workdir": str(run.workdir), "step": run.step},
        "template": prompt_config.template.name,
        "deidentification": None if sidecar is None else {"audit_passed": sidecar["audit"]["passed"],
                                                          "kept": None if kept is None else str(kept)},
        "notes": notes,
    }


def _keep(deid: Path, folder: Path) -> Path:
    """Copy a passed de-identified video and its sidecar into ``folder`` (the sidecar last: it vouches)."""
    target = folder / deid.name
    sidecar_path(target).unlink(missing_ok=True)  # never a stale sidecar next to new bytes
    write_atomic(target, deid.read_bytes())
    write_atomic(sidecar_path(target), sidecar_path(deid).read_bytes())
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py",
        description="De-identify a video, run a trained DEEMO-LLaMA on it, print the emotion and the reasoning.",
    )
    p.add_argument("video", help="the video file (any format ffmpeg reads)")
    words = p.add_mutually_exclusive_group()
    words.add_argument("--transcript", metavar="TEXT", help="what is said in the clip (the words themselves)")
    words.add_argument("--transcript-file", metavar="PATH", help="a UTF-8 text file holding what is said")
    p.add_argument("--workdir", default=DEFAULT_DEMO_WORKDIR,
                   help=f"training run directory (default {DEFAULT_DEMO_WORKDIR}, the `make demo` run)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--start", type=float, help="clip start in seconds (default 0)")
    p.add_argument("--end", type=float, help="clip end in seconds (default: the end of the video)")
    p.add_argument("--labels", help="comma-separated label set (default: the run's)")
    p.add_argument("--template", choices=NAMES,
                   help="prompt template (default: the run's own; another than it was trained with is an error)")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--sample", action="store_true", help="sample (top-p) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-deidentified", metavar="DIR", help="keep the de-identified video (and sidecar) here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.start is not None and args.end is not None and args.end <= args.start:
        print(f"infer.py: --end ({args.end}) must be after --start ({args.start})", file=sys.stderr)
        return EXIT_USAGE
    if args.max_new_tokens < 1:
        print("infer.py: --max-new-tokens must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    generation = {"do_sample": args.sample, "temperature": args.temperature, "seed": args.seed,
                  "top_p": args.top_p if args.sample else 1.0}
    labels = tuple(x.strip() for x in args.labels.split(",") if x.strip()) if args.labels else ()

    def error(message: str) -> None:
        print(f"infer.py: {' '.join(message.split())}", file=sys.stderr)

    try:
        transcript = read_transcript(args.transcript, args.transcript_file)
        result = infer(
            args.video, workdir=args.workdir, transcript=transcript, start=args.start,
            end=args.end, step=args.step, labels=labels, max_new_tokens=args.max_new_tokens, generation=generation,
            keep_deidentified=args.keep_deidentified, template=args.template,
        )
    except (FileNotFoundError, ValueError, OutputDirError) as e:
        error(str(e))
        return EXIT_USAGE
    except AuditFailedError as e:
        r = e.report
        error(f"{args.video}: de-identification failed its privacy audit (faces above {r.threshold} in frames "
              f"{r.frames_with_faces[:20]}, max score {r.max_score:.3f}); nothing of it was used or kept; "
              "de-identify it with scripts/deidentify.py using stronger settings (--mask-scale, --carry-frames or "
              "--mode solid) and pass its output")
        return EXIT_FAILED
    except DetectorUnavailableError as e:  # a missing tool: nothing was done
        error(str(e))
        return EXIT_USAGE
    except NotDeidentifiedError as e:
        error(f"the de-identified copy is refused, nothing of it was used: {e}")
        return EXIT_FAILED
    except MediaError as e:
        error(f"cannot read the video: {e}; check that the file is a complete video ffmpeg can read")
        return EXIT_FAILED
    except KeyboardInterrupt:
        error("interrupted; nothing was kept, run the command again")
        return exit_codes.INTERRUPTED
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        error(f"cannot read or write{where}: {e.strerror or e}; check the path, its permissions and free disk space")
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return EXIT_OK
    for note in result["notes"]:
        print(f"note: {note}")
    emotion = result["emotion"] or f"(unparseable over {result['labels']}; see the answer)"
    print(f"emotion: {emotion}")
    print(f"reasoning: {result['reasoning'] or '-'}")
    if result["reasoning"] != result["answer"]:
        print(f"answer: {result['answer']}")
    return EXIT_OK
