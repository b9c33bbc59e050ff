"""Extraction throughput next to the best bare forward of the same model, side by side in one run.

    .venv/bin/python benchmarks/bench_extract.py [--videos 24] [--frames uniform:16] [--rounds 2]
    .venv/bin/python benchmarks/bench_extract.py --profile-only [--frames uniform:8,keyframes:8]

The yardstick is the fastest honest alternative: timm's ``forward_features`` of the same model
(same weights) on already-normalised tensors in memory, at the best of several batch sizes and of
the precisions this device supports (fp32, bf16 autocast where native), found by a sweep in this
run. The pipeline does everything (decode, select, LUV scoring, crop, normalise, forward, write)
at featcache's own settings (batch 32, precision auto) and, for comparison, at the sweep's best
batch size. Rounds alternate yardstick and pipeline so machine noise hits both alike; each round's yardstick
is the faster of the sweep's best point and the pipeline's own precision at both batch sizes. Prints one
JSON line per sweep point and per round, and a summary with the median ratio pipeline / best bare.

``--profile`` (or ``--profile-only``) first extracts the dataset once under cProfile and prints the
per-frame budget (ms per frame through the model) of each step: decoding (all of it, and inside
it the LUV scoring and the scaling of kept frames), cropping, normalisation, the forward, writes.
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

from featcache.data.manifest import read_manifest
from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig, FrozenEncoder
from featcache.extract.pipeline import ExtractConfig, _Pipeline, decode_spec, run_extract
from featcache.video.prepare import prepare


def bare_forward(model, pixels: torch.Tensor, batch_size: int, bf16: bool) -> float:
    """frames/s of timm ``forward_features`` alone over ``pixels`` (N, 3, S, S) float32."""
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(pixels), batch_size):
            model.forward_features(pixels[i:i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def decoded_frames(cfg: ExtractConfig, encoder: FrozenEncoder) -> np.ndarray:
    """The exact frames the pipeline feeds the model, decoded once, untimed."""
    spec = decode_spec(cfg, encoder)
    return np.concatenate([prepare(item, spec).frames for item in read_manifest(cfg.manifest)])


BUDGET = (  # (label, file suffix, function): cumulative time of each
    ("decode (decode_video, all of it)", "video/decode.py", "decode_video"),
    ("  LUV scoring (LuvScorer)", "video/select.py", "__call__"),
    ("  scaling kept / small frames (swscale)", "video/decode.py", "_scaled"),
    ("crop (prepare.crop)", "featcache/video/prepare.py", "crop"),
    ("normalise + cast (encoder._run minus the forward)", "featcache/extract/encoder.py", "_run"),
    ("forward (encoder._tokens)", "featcache/extract/encoder.py", "_tokens"),
    ("write (CacheWriter.write_video)", "cache/store.py", "write_video"),
)


def profile(cfg: ExtractConfig) -> None:
    """One extraction under cProfile; the per-frame budget of each step."""
    import cProfile
    import pstats

    prof, real_run = cProfile.Profile(), _Pipeline.run

    def profiled_run(self, *a, **k):  # the pipeline only: not the model's construction
        prof.enable()
        try:
            return real_run(self, *a, **k)
        finally:
            prof.disable()

    _Pipeline.run = profiled_run
    try:
        s = run_extract(cfg, show_progress=False)
    finally:
        _Pipeline.run = real_run
    stats = pstats.Stats(prof).stats
    cum = {}
    for label, suffix, name in BUDGET:
        cum[label] = sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(suffix) and fn == name)
    cum["normalise + cast (encoder._run minus the forward)"] -= cum["forward (encoder._tokens)"]
    known = sum(v for k, v in cum.items() if not k.startswith("  "))
    rows = {k: round(1e3 * v / s.frames, 2) for k, v in cum.items()}
    rows["everything else (pipeline, batching, progress)"] = round(1e3 * (s.wall_s - known) / s.frames, 2)
    print(json.dumps({"profile_ms_per_frame": rows, "frames": s.frames, "wall_s": round(s.wall_s, 1),
                      "frames_per_s": round(s.frames_per_s, 2), "policies": cfg.frames,
                      "batch_size": cfg.batch_size, "note": "cProfile adds overhead to Python-heavy steps"}),
          flush=True)


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
    ap.add_argument("--profile", action="store_true", help="first the per-frame budget under cProfile")
    ap.add_argument("--profile-only", action="store_true")
    args = ap.parse_args()

    w, h = (int(v) for v in args.size.split("x"))
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=args.num_frames, size=(w, h))
    enc_cfg = EncoderConfig(weights="random", precision=args.precision)
    encoder = FrozenEncoder(enc_cfg)
    base = ExtractConfig(manifest=manifest, out="", encoder=enc_cfg, frames=args.frames, batch_size=args.batch_size)
    if args.profile or args.profile_only:
        profile(dataclasses.replace(base, out=os.path.join(work, "profile.zarr")))
        if args.profile_only:
            return
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
        # the yardstick of this round: the sweep's best point and the pipeline's own precision (a
        # short sweep on a loaded machine can crown the wrong one), the faster of the two
        pipe_bf16 = encoder.precision == "bf16"
        points = {(best_bs, best_bf16), (best_bs, pipe_bf16), (args.batch_size, pipe_bf16)}
        bare = max(bare_forward(model, pixels, bs, bf16) for bs, bf16 in sorted(points))
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
