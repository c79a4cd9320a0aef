"""Input pipeline throughput: shard read, read + decode, and the full Grain pipeline (samples/s).

Writes synthetic DEEMO-MER records once (random de-identified-shaped media: 8 frames 224x224x3 uint8, 8 fbank
clips 128x204 float32, ~60-word transcription, ~100-word reasoning) and a small trained tokenizer into
``--work-dir``, then times:

1. shard read: ``ArrayRecordDataSource`` random access, bytes only;
2. read + ``schema.decode``;
3. prompt + tokenise + labels of decoded records (no I/O);
4. the train pipeline (read + decode + prompt + tokenise + labels + batch) with each ``--workers`` count.

``--writer-options`` are the ArrayRecord writer options of the synthetic shards (``group_size:1`` keeps the
default compression; ``group_size:1,snappy`` or ``group_size:1,uncompressed`` read faster).

Usage: ``python benchmarks/data_pipeline.py [--num-records 256] [--batch-size 8] [--workers 0,2]``
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("we played well today but the result was hard to accept and I am proud of the team although the "
         "referee made some calls that changed the match she looks down while speaking slowly with a low voice "
         "he folds his arms and scratches the nose before answering the question about the final set").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def write_shards(work_dir: Path, num_records: int, writer_options: str, num_shards: int = 4) -> Path:
    from array_record.python.array_record_module import ArrayRecordWriter

    from deemo_jax.data import schema

    shard_dir = work_dir / ("shards_" + re.sub(r"[^a-z0-9]+", "_", writer_options))
    if shard_dir.is_dir() and sum(1 for _ in shard_dir.glob("train-*.array_record")) == num_shards:
        return shard_dir
    shard_dir.mkdir(parents=True, exist_ok=True)
    rng, np_rng = random.Random(0), np.random.default_rng(0)
    per_shard = -(-num_records // num_shards)
    for s in range(num_shards):
        path = shard_dir / f"train-{s:05d}-of-{num_shards:05d}.array_record"
        writer = ArrayRecordWriter(str(path), writer_options)
        for i in range(s * per_shard, min(num_records, (s + 1) * per_shard)):
            record = {
                "schema_version": schema.SCHEMA_VERSION, "kind": "mer", "id": f"bench-{i:05d}", "split": "train",
                "start": 0.0, "end": 16.0, "transcription": _text(rng, 60), "label": ("positive", "negative")[i % 2],
                "label_index": i % 2, "reasoning": _text(rng, 100),
                "nfbl": [{"label": "folding arms", "start": 1.0, "end": 2.5}],
                "frames": np_rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8),
                "frame_times": np.linspace(0, 16, 8, dtype=np.float32),
                "fbank": np_rng.standard_normal((8, 128, 204), dtype=np.float32),
                "audio_clip_times": np.zeros((8, 2), np.float32),
            }
            writer.write(schema.encode(record))
        writer.close()
    return shard_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-records", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--epochs", type=float, default=2.0, help="records timed per setting, in epochs")
    parser.add_argument("--work-dir", default=None, help="reused between runs (default: a fresh temp dir)")
    parser.add_argument("--writer-options", default="group_size:1", help="ArrayRecordWriter options")
    args = parser.parse_args()
    if args.num_records < args.batch_size:
        parser.error("--num-records must be at least --batch-size")

    import grain

    from deemo_jax.data import schema
    from deemo_jax.data.pipeline import DataConfig, make_iterator, tokenize_example
    from deemo_jax.data.prompts import build_prompt
    from deemo_jax.data.shards import find_shards
    from deemo_jax.data.tokenizer import load_tokenizer, train_sentencepiece_tokenizer

    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="deemo_data_bench_"))
    t0 = time.perf_counter()
    shard_dir = write_shards(work_dir, args.num_records, args.writer_options)
    tok_dir = work_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        rng = random.Random(1)
        train_sentencepiece_tokenizer([_text(rng, 30) for _ in range(2000)], tok_dir, vocab_size=600)
    print(f"setup (shards + tokenizer) in {work_dir}: {time.perf_counter() - t0:.1f} s")

    source = grain.sources.ArrayRecordDataSource([str(p) for p in find_shards(shard_dir, "train")])
    order = np.random.default_rng(0).permutation(len(source))
    t0 = time.perf_counter()
    nbytes = sum(len(source[int(i)]) for i in order)
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = []  # text fields only: holding all media would take ~2 MiB per record
    for i in order:
        record = schema.decode(source[int(i)])
        records.append({k: record[k] for k in ("kind", "id", "transcription", "label", "reasoning", "nfbl")})
    decode_s = time.perf_counter() - t0
    n = len(source)
    print(f"shard read:    {n / read_s:8.1f} samples/s ({nbytes / read_s / 2**20:.0f} MiB/s, "
          f"{nbytes / n / 2**20:.2f} MiB/record)")
    print(f"read + decode: {n / decode_s:8.1f} samples/s")

    tokenizer = load_tokenizer(tok_dir)
    prompt_config = DataConfig().prompt_config()
    t0 = time.perf_counter()
    for record in records:
        prompt, target = build_prompt(record, prompt_config)
        tokenize_example(prompt, target, tokenizer, max_length=args.max_length, num_video_tokens=32,
                         num_audio_tokens=8, example_id=record["id"])
    print(f"prompt + tokenize: {n / (time.perf_counter() - t0):8.1f} samples/s")
    num_batches = max(1, int(args.epochs * n / args.batch_size))
    for workers in (int(w) for w in args.workers.split(",")):
        config = DataConfig(shard_dir=str(shard_dir), split="train", tokenizer_path=str(tok_dir),
                            batch_size=args.batch_size, max_length=args.max_length, worker_count=workers)
        t0 = time.perf_counter()
        it = make_iterator(config, mode="train", tokenizer=tokenizer, shard_index=0, shard_count=1)
        next(it)
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        elapsed = time.perf_counter() - t0
        it.close()
        print(f"pipeline, {workers} workers: {num_batches * args.batch_size / elapsed:8.1f} samples/s "
              f"(batch {args.batch_size}, max_length {args.max_length}, {num_batches} batches; "
              f"first batch after {start_s:.1f} s)")


if __name__ == "__main__":
    main()
