"""Extraction throughput next to the bare model's forward throughput, side by side in one run.

    .venv/bin/python benchmarks/bench_extract.py [--videos 24] [--frames uniform:16] [--rounds 2]

The bare forward runs the same encoder (same weights, precision, batch size) over the same
decoded, cropped frames already in memory; the pipeline does everything (decode, select, LUV
scoring, crop, forward, write). Rounds alternate bare/pipeline so machine noise hits both alike.
Prints one JSON line per round and a summary with the median ratio pipeline / bare.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from featcache.encoder import EncoderConfig, FrozenEncoder
from featcache.extract import ExtractConfig, _Pipeline, ExtractSummary, run_extract
from featcache.manifest import read_manifest
from featcache.synthetic import make_dataset


def bare_forward(encoder: FrozenEncoder, frames: np.ndarray, batch_size: int) -> float:
    """frames/s of encoder(batch) alone over ``frames`` (N, S, S, 3) uint8."""
    batches = [torch.from_numpy(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        encoder(batch)
    return len(frames) / (time.perf_counter() - start)


def decoded_frames(cfg: ExtractConfig, encoder: FrozenEncoder) -> np.ndarray:
    """The exact frames the pipeline feeds the model, decoded once, untimed."""
    pipe = _Pipeline(cfg, encoder, writer=None, summary=ExtractSummary())
    return np.concatenate([pipe._decode(item).frames for item in read_manifest(cfg.manifest)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="videos in the generated dataset")
    ap.add_argument("--frames", default="uniform:16")
    ap.add_argument("--size", default="320x240", help="source video size WxH")
    ap.add_argument("--num-frames", type=int, default=96, help="frames per source video")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    w, h = (int(v) for v in args.size.split("x"))
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=args.num_frames, size=(w, h))
    enc_cfg = EncoderConfig(weights="random", precision=args.precision)
    encoder = FrozenEncoder(enc_cfg)
    base = ExtractConfig(manifest=manifest, out="", encoder=enc_cfg, frames=args.frames, batch_size=args.batch_size)
    frames = decoded_frames(base, encoder)
    bare_forward(encoder, frames[: args.batch_size], args.batch_size)  # warm-up

    ratios = []
    for r in range(args.rounds):
        bare = bare_forward(encoder, frames, args.batch_size)
        out = os.path.join(work, f"round{r}.zarr")
        cfg = ExtractConfig(**{**base.__dict__, "out": out})
        s = run_extract(cfg, show_progress=False)
        assert s.frames == len(frames) and not s.failed
        ratios.append(s.frames_per_s / bare)
        print(json.dumps({"round": r, "bare_fps": round(bare, 2), "pipeline_fps": round(s.frames_per_s, 2),
                          "ratio": round(ratios[-1], 3), "frames": s.frames}), flush=True)
    print(json.dumps({"summary": "pipeline/bare", "median_ratio": round(statistics.median(ratios), 3),
                      "model": enc_cfg.model, "precision": encoder.precision, "frames": args.frames,
                      "videos": args.videos, "source_size": args.size, "batch_size": args.batch_size,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
