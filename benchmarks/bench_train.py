"""Stage 2 speed, side by side in one run.

    .venv/bin/python benchmarks/bench_train.py epoch [--videos 48] [--head r3d]
    .venv/bin/python benchmarks/bench_train.py read  [--videos 200]

``epoch``: one training epoch of a head from the cache vs the same epoch computed from the raw
videos (decode + frame selection + frozen DINOv2 ViT-S/14 forward every step, then the same head
step), same videos, same batches.

``read``: reading a view of the cache for an epoch (``materialise``: every video's token chunk,
frame selection, one contiguous array) vs a plain numpy memmap read of the same bytes from one
flat file. Warm page cache for both; rounds alternate.
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

from featcache import open_cache
from featcache.cache.dataset import Task, materialise
from featcache.data.manifest import read_manifest
from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig, FrozenEncoder
from featcache.extract.pipeline import ExtractConfig, decode_spec, run_extract
from featcache.spec.config import build_config
from featcache.spec.view import View
from featcache.train.fit import ViewBatches, head_args, new_head
from featcache.train.optim import optimizer
from featcache.video.prepare import prepare


def _dataset(videos: int, encoder: EncoderConfig, frames: str) -> tuple[str, str]:
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=videos // 4, num_frames=48, size=(320, 240))
    out = os.path.join(work, "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=out, encoder=encoder, frames=frames), show_progress=False)
    return manifest, out


def bench_epoch(args) -> None:
    enc_cfg = EncoderConfig(weights="random")
    manifest, out = _dataset(args.videos, enc_cfg, "uniform:8")
    cache = open_cache(out)
    cfg = build_config({"head": args.head, "view": "uniform:8", "batch_size": 8})
    data = materialise(cache, View("uniform:8"), "train")
    task = Task(sorted({ls[0] for ls in data.labels}), multi=False)
    y = task.targets(data.labels)
    v, frames, tokens, dim = data.x.shape
    head = new_head(cfg, head_args(cfg, dim, len(task.classes), frames, data.grid, data.num_prefix_tokens, cache.attrs))
    opt, loss_fn = optimizer(cfg, head), ViewBatches(cfg.batch, {"train": data}, task).loss(cfg.head_config)
    items = {it.video_id: it for it in read_manifest(manifest)}
    encoder = FrozenEncoder(enc_cfg)
    spec = decode_spec(ExtractConfig(manifest=manifest, out=out, encoder=enc_cfg, frames="uniform:8"), encoder)

    def step(x, target):
        loss = loss_fn(head(x.float()), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def cached_epoch():
        for i in range(0, len(y), cfg.batch_size):
            step(data.x[i:i + cfg.batch_size], y[i:i + cfg.batch_size])

    def raw_epoch():
        for i in range(0, len(y), cfg.batch_size):
            clips = []
            for vid in data.video_ids[i:i + cfg.batch_size]:
                decoded = prepare(items[vid], spec)
                clips.append(encoder(torch.from_numpy(decoded.frames))[:, 0])  # (T, N, C)
            step(torch.stack(clips), y[i:i + cfg.batch_size])

    cached_epoch()  # warm-up
    rows = []
    for r in range(args.rounds):
        t = time.perf_counter()
        raw_epoch()
        raw = time.perf_counter() - t
        t = time.perf_counter()
        cached_epoch()
        cached = time.perf_counter() - t
        rows.append(raw / cached)
        print(json.dumps({"round": r, "raw_epoch_s": round(raw, 3), "cached_epoch_s": round(cached, 4),
                          "speedup": round(raw / cached, 1)}), flush=True)
    print(json.dumps({"summary": "raw/cached epoch time", "median_speedup": round(statistics.median(rows), 1),
                      "head": args.head, "train_videos": len(y), "frames_per_clip": 8,
                      "model": enc_cfg.model, "precision": encoder.precision}))


def bench_read(args) -> None:
    # a 1-block ViT-S/14 at 224: real token shapes (257 x 384) without the 12-block extraction cost
    enc_cfg = EncoderConfig(weights="random", model_args={"depth": 1})
    _, out = _dataset(args.videos, enc_cfg, "uniform:16")
    cache = open_cache(out)
    view = View("uniform:16")
    ref = materialise(cache, view, "train").x.numpy()
    flat = os.path.join(os.path.dirname(out), "flat.npy")
    np.save(flat, ref)
    nbytes = ref.nbytes
    def cache_read() -> float:
        t = time.perf_counter()
        x = materialise(open_cache(out), view, "train").x
        elapsed = time.perf_counter() - t
        assert torch.equal(x, torch.from_numpy(ref))
        return elapsed

    def memmap_read() -> float:
        t = time.perf_counter()
        mm = np.array(np.load(flat, mmap_mode="r"))  # copy out of the page cache, as materialise does
        elapsed = time.perf_counter() - t
        assert mm.shape == ref.shape
        return elapsed

    cache_read(), memmap_read()  # warm-up: both files in the page cache
    rows = []
    for r in range(args.rounds):  # each result is freed before the next read: same memory conditions
        zarr_s, mm_s = cache_read(), memmap_read()
        rows.append(mm_s / zarr_s)
        print(json.dumps({"round": r, "cache_GBps": round(nbytes / zarr_s / 1e9, 2),
                          "memmap_GBps": round(nbytes / mm_s / 1e9, 2), "ratio": round(mm_s / zarr_s, 3)}),
              flush=True)
    print(json.dumps({"summary": "cache read / memmap read throughput", "median_ratio": round(statistics.median(rows), 3),
                      "videos": len(ref), "bytes": nbytes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["epoch", "read"])
    ap.add_argument("--videos", type=int, default=None)
    ap.add_argument("--head", default="r3d")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.what == "epoch":
        args.videos = args.videos or 48
        bench_epoch(args)
    else:
        args.videos = args.videos or 200
        bench_read(args)


if __name__ == "__main__":
    main()
