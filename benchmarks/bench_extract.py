"""Extraction throughput next to the best bare forward of the same model, side by side in one run.

    .venv/bin/python benchmarks/bench_extract.py [--videos 24] [--frames uniform:16] [--rounds 2]

The yardstick is the fastest honest alternative: timm's ``forward_features`` of the same model
(same weights) on already-normalised tensors in memory, at the best of several batch sizes and of
the precisions this device supports (fp32, bf16 autocast where native), found by a sweep in this
run. The pipeline does everything (decode, select, LUV scoring, crop, normalise, forward, write)
at featcache's own settings (batch 32, precision auto) and, for comparison, at the sweep's best
batch size. Rounds alternate yardstick and pipeline so machine noise hits both alike. Prints one
JSON line per sweep point and per round, and a summary with the median ratio pipeline / best bare.
"""
from __future__ import annotations

import argparse
import dataclasses
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


def bare_forward(model, pixels: torch.Tensor, batch_size: int, bf16: bool) -> float:
    """frames/s of timm ``forward_features`` alone over ``pixels`` (N, 3, S, S) float32."""
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(pixels), batch_size):
            model.forward_features(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def decoded_frames(cfg: ExtractConfig, encoder: FrozenEncoder) -> np.ndarray:
    """The exact frames the pipeline feeds the model, decoded once, untimed."""
    pipe = _Pipeline(cfg, encoder, writer=None, summary=ExtractSummary())
    return np.concatenate([p.frames for p in pipe._prepared(read_manifest(cfg.manifest))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=24, help="videos in the generated dataset")
    ap.add_argument("--frames", default="uniform:16")
    ap.add_argument("--size", default="320x240", help="source video size WxH")
    ap.add_argument("--num-frames", type=int, default=96, help="frames per source video")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sweep-batch-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[8, 16, 32, 64])
    ap.add_argument("--sweep-frames", type=int, default=128, help="frames per sweep point")
    args = ap.parse_args()

    w, h = (int(v) for v in args.size.split("x"))
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=args.num_frames, size=(w, h))
    enc_cfg = EncoderConfig(weights="random", precision=args.precision)
    encoder = FrozenEncoder(enc_cfg)
    base = ExtractConfig(manifest=manifest, out="", encoder=enc_cfg, frames=args.frames, batch_size=args.batch_size)
    frames = decoded_frames(base, encoder)
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() - encoder._mean) / encoder._std
    model = encoder.model
    precisions = [False] + ([True] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
    sweep = {}
    for bf16 in precisions:
        for bs in args.sweep_batch_sizes:
            bare_forward(model, pixels[:bs], bs, bf16)  # warm-up
            sweep[(bs, bf16)] = bare_forward(model, pixels[:args.sweep_frames], bs, bf16)
            print(json.dumps({"sweep": {"batch_size": bs, "precision": "bf16" if bf16 else "fp32",
                                        "bare_fps": round(sweep[(bs, bf16)], 2)}}), flush=True)
    best_bs, best_bf16 = max(sweep, key=sweep.get)

    ratios, at_best = [], []
    for r in range(args.rounds):
        bare = bare_forward(model, pixels, best_bs, best_bf16)
        row = {"round": r, "best_bare_fps": round(bare, 2)}
        for name, bs in (("pipeline", args.batch_size), ("pipeline_best_batch", best_bs)):
            cfg = dataclasses.replace(base, out=os.path.join(work, f"round{r}_{name}.zarr"), batch_size=bs)
            s = run_extract(cfg, show_progress=False)
            assert s.frames == len(frames) and not s.failed
            row[f"{name}_fps"] = round(s.frames_per_s, 2)
        ratios.append(row["pipeline_fps"] / bare)
        at_best.append(row["pipeline_best_batch_fps"] / bare)
        print(json.dumps({**row, "ratio": round(ratios[-1], 3), "ratio_best_batch": round(at_best[-1], 3)}), flush=True)
    print(json.dumps({"summary": "pipeline / best bare forward", "median_ratio": round(statistics.median(ratios), 3),
                      "median_ratio_at_best_batch": round(statistics.median(at_best), 3),
                      "best_bare": {"batch_size": best_bs, "precision": "bf16" if best_bf16 else "fp32"},
                      "pipeline": {"batch_size": args.batch_size, "precision": encoder.precision},
                      "model": enc_cfg.model, "frames": args.frames, "videos": args.videos,
                      "source_size": args.size, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
