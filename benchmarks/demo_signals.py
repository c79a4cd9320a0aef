"""Is the label of the demo corpus learnable from each signal alone? Linear probes on simple features.

    python benchmarks/demo_signals.py --corpus demo_data

Reads the corpus's shards (what training sees: de-identified frames and fbank) and fits, per signal, an
L2-regularised logistic regression in numpy on the train split (the strength picked on val), then prints test
accuracy against the majority-class rate:

- text: bag of words of the transcription (all clips, and the sentiment-neutral ones alone);
- audio: per-mel-bin mean and standard deviation over time of the ImageBind-normalised fbank;
- video: 24x18 grey thumbnails of the 8 frames, mean and standard deviation over time;
- NFBL: bag of the clip's NFBL cue labels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

try:
    import deemo_jax  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deemo_jax.data import schema  # noqa: E402


def load_records(shards: Path) -> dict[str, list[dict]]:
    from array_record.python.array_record_module import ArrayRecordReader

    by_split: dict[str, list[dict]] = {}
    for path in sorted(shards.glob("*.array_record")):
        reader = ArrayRecordReader(str(path))
        for i in range(reader.num_records()):
            record = schema.decode(reader.read([i])[0])
            by_split.setdefault(record["split"], []).append(record)
        reader.close()
    return by_split


def _fit(x: np.ndarray, y: np.ndarray, lam: float, steps: int = 800, lr: float = 0.5) -> np.ndarray:
    """Logistic regression by full-batch gradient descent; returns weights with the bias last."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) / len(y) + lam * np.concatenate([w[:-1], [0.0]])
        w -= lr * grad
    return w


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.concatenate([x, np.ones((len(x), 1))], axis=1) @ w) > 0


def probe(train: np.ndarray, ytr: np.ndarray, val: np.ndarray, yva: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Standardise on train, pick the L2 strength on val; returns (weights, mean/std, lambda)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    norm = (mean, std)
    best = None
    for lam in (1e-3, 1e-2, 1e-1, 1.0):
        w = _fit((train - mean) / std, ytr, lam)
        acc = float(np.mean(_predict(w, (val - mean) / std) == yva)) if len(val) else 0.0
        if best is None or acc > best[0]:
            best = (acc, w, lam)
    return best[1], norm, best[2]


def text_features(records: list[dict], vocab: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(records), len(vocab)))
    for i, r in enumerate(records):
        for word in re.findall(r"[a-z']+", r["transcription"].lower()):
            if word in vocab:
                x[i, vocab[word]] = 1.0
    return x


def audio_features(records: list[dict]) -> np.ndarray:
    feats = []
    for r in records:
        fb = np.asarray(r["fbank"], np.float32)  # [S, 128, 204]
        feats.append(np.concatenate([fb.mean(axis=(0, 2)), fb.std(axis=2).mean(0)]))
    return np.stack(feats)


def video_features(records: list[dict]) -> np.ndarray:
    import cv2

    feats = []
    for r in records:
        grey = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (24, 18), interpolation=cv2.INTER_AREA)
                         for f in r["frames"]]).astype(np.float32) / 255.0
        feats.append(np.concatenate([grey.mean(0).ravel(), grey.std(0).ravel()]))
    return np.stack(feats)


def nfbl_features(records: list[dict], cues: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(records), len(cues)))
    for i, r in enumerate(records):
        for c in r["nfbl"]:
            if c["label"] in cues:
                x[i, cues[c["label"]]] = 1.0
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("demo_data"))
    args = parser.parse_args(argv)
    shards = args.corpus / "shards"
    if not (shards / "metadata.json").is_file():
        print(f"demo_signals: no shards in {shards}; run scripts/make_demo_data.py --output {args.corpus}",
              file=sys.stderr)
        return 2
    labels = json.loads((shards / "metadata.json").read_text())["labels"]
    data = load_records(shards)
    train, val, test = data.get("train", []), data.get("val", []), data.get("test", [])
    if not train or not test:
        print("demo_signals: the corpus needs train and test clips", file=sys.stderr)
        return 2
    positive = labels.index("positive")
    y = {name: np.array([r["label_index"] == positive for r in split], float)
         for name, split in (("train", train), ("val", val), ("test", test))}
    neutral_ids = _neutral_clip_ids(args.corpus)
    words = sorted({w for r in train for w in re.findall(r"[a-z']+", r["transcription"].lower())})
    vocab = {w: i for i, w in enumerate(words)}
    cue_names = sorted({c["label"] for r in train for c in r["nfbl"]})
    cues = {c: i for i, c in enumerate(cue_names)}
    signals = {
        "text (bag of words)": lambda rs: text_features(rs, vocab),
        "audio (fbank mean/std)": audio_features,
        "video (grey thumbnails)": video_features,
        "NFBL cue labels": lambda rs: nfbl_features(rs, cues),
    }
    majority = max(y["test"].mean(), 1 - y["test"].mean())
    print(f"corpus {args.corpus}: train {len(train)}, val {len(val)}, test {len(test)} clips; "
          f"majority-class test accuracy {majority:.3f}")
    test_neutral = np.array([r["id"] in neutral_ids for r in test])
    for name, featurize in signals.items():
        xtr, xva, xte = featurize(train), featurize(val), featurize(test)
        w, (mean, std), lam = probe(xtr, y["train"], xva, y["val"])
        pred = _predict(w, (xte - mean) / std)
        acc = float(np.mean(pred == y["test"]))
        line = f"  {name:26s} test accuracy {acc:.3f} (L2 {lam:g})"
        if test_neutral.any():
            acc_neutral = float(np.mean(pred[test_neutral] == y["test"][test_neutral]))
            line += f"; on the {int(test_neutral.sum())} neutral-text test clips {acc_neutral:.3f}"
        print(line)
    return 0


def _neutral_clip_ids(corpus: Path) -> set[str]:
    """Ids of the clips whose transcription was generated sentiment-neutral (from the corpus plan)."""
    from deemo_jax.data.demo import DemoConfig, plan_corpus

    plan_file = corpus / "plan.json"
    if not plan_file.is_file():
        return set()
    settings = json.loads(plan_file.read_text())
    settings.pop("corpus_version", None)
    settings["split_fractions"] = tuple(settings["split_fractions"])
    return {c.clip_id for p in plan_corpus(DemoConfig(**settings)) for c in p.clips if c.neutral_text}


if __name__ == "__main__":
    sys.exit(main())
