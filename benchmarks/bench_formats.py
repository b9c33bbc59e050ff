"""Compact token formats side by side in one run: bytes per frame, view read speed, accuracy.

    .venv/bin/python benchmarks/bench_formats.py [--videos 160] [--rounds 3] [--epochs 30] [--reads-only]

- bytes per frame of DINOv2 ViT-S/14 at 224 (257 tokens x 384, one layer) in each format, from
  the writer's own array plan (what `featcache estimate` counts);
- read speed: ``materialise`` of the train split's ``uniform:8`` view (what every training run
  does) from fp16, int8, ``--token-pool 2`` and ``--token-pool mean`` stores of the same videos,
  rounds alternating, warm page cache;
- accuracy: r3d on generated motion clips (classes differ only by motion) and pool (average of
  per-frame features) on generated appearance clips (classes differ by colour), each trained from
  the fp16 and the int8 store with the same seeds; mean test top-1 over the seeds.
- dequantisation alone: ``quant.dequantize`` of 64 ViT-S/14 frames (257 x 384) next to the
  three whole-array numpy steps it replaced and a plain copy of the same tokens in float16.
The stores come from a random-weight 4-block ViT (embed 192) at 112 so the run stays short.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from featcache import open_cache
from featcache.cache.dataset import materialise
from featcache.cache.store import frame_bytes
from featcache.spec.config import build_config
from featcache.extract.encoder import EncoderConfig
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.data.synthetic import make_dataset
from featcache.train.fit import run_training
from featcache.spec.view import View

FORMATS = {"float16": {}, "int8": {"dtype": "int8"}, "pool2": {"pool": 2}, "mean": {"pool": "mean"}}



def vit_s_bytes(dtype: str, pool) -> int:
    grid = 16 if pool in (None, 1) else 1 if pool == "mean" else 16 // pool
    return frame_bytes({"layers": [-1], "tokens": {"num_tokens": 1 + grid * grid, "dim": 384}, "storage": {"dtype": dtype}})


def dequantize_alone(rounds: int) -> None:
    import numpy as np

    from featcache.cache.quant import dequantize, quantize

    def before(q, s, ch):  # featcache's dequantisation before the fused pass
        out = q.astype(np.float32) * s.astype(np.float32)[..., None]
        out *= ch
        return out.astype(np.float16, copy=False)

    x = np.random.default_rng(0).normal(size=(64, 1, 257, 384)).astype(np.float32)
    q, s, ch = quantize(x)
    q, s, ch = q[:, 0], s[:, 0], ch[0]
    half, dest = before(q, s, ch), np.empty(q.shape, np.float16)
    steps = {"float16 copy": lambda: np.copyto(dest, half), "dequantize": lambda: dequantize(q, s, ch, out=dest),
             "dequantize (before)": lambda: before(q, s, ch)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds * 5):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(json.dumps({"summary": "dequantise 64 frames x 257 x 384 to float16 (million values/s; "
                      "median, min-max over rounds)",
                      **{k: {"mvalues_per_s": round(q.size / statistics.median(v) / 1e6),
                             "range": [round(q.size / max(v) / 1e6), round(q.size / min(v) / 1e6)]}
                         for k, v in times.items()}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reads-only", action="store_true", help="skip the accuracy runs")
    args = ap.parse_args()
    dequantize_alone(args.rounds)
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    stores = {}
    for kind in ("motion", "appearance"):
        manifest = make_dataset(os.path.join(work, kind), kind, per_class=args.videos // 4, num_frames=16)
        for name, opt in FORMATS.items():
            if kind == "appearance" and name not in ("float16", "int8"):
                continue
            enc = EncoderConfig(weights="random", img_size=112, precision="fp32", token_pool=opt.get("pool", 1),
                                model_args={"depth": 4, "embed_dim": 192, "num_heads": 3})
            stores[kind, name] = os.path.join(work, f"{kind}_{name}.zarr")
            run_extract(ExtractConfig(manifest=manifest, out=stores[kind, name], encoder=enc, frames="uniform:8",
                                      dtype=opt.get("dtype", "float16"), batch_size=32), show_progress=False)
    stores.update({name: stores["motion", name] for name in FORMATS})
    for name, opt in FORMATS.items():
        print(json.dumps({"format": name, "vit_s14_bytes_per_frame": vit_s_bytes(opt.get("dtype", "float16"),
                                                                                  opt.get("pool")),
                          "store_bytes": open_cache(stores[name]).size_on_disk()}))
    view = View("uniform:8")
    times: dict[str, list[float]] = {name: [] for name in FORMATS}
    for r in range(args.rounds):
        for name in FORMATS:
            cache = open_cache(stores[name])
            t = time.perf_counter()
            data = materialise(cache, view, "train")
            times[name].append(time.perf_counter() - t)
        print(json.dumps({"round": r, **{k: round(v[-1], 4) for k, v in times.items()}}))
    frames = data.x.shape[0] * data.x.shape[1]
    base = statistics.median(times["float16"])
    print(json.dumps({"summary": "materialise the train view (frames/s; ratio to float16)",
                      **{k: {"frames_per_s": round(frames / statistics.median(v)),
                             "ratio": round(base / statistics.median(v), 2)} for k, v in times.items()}}))
    if args.reads_only:
        return
    for head, kind, opts in (("r3d", "motion", {"head.hidden": 64, "head.out_dim": 64}), ("pool", "appearance", {"head.frame_feature": "mean"})):
        scores = {}
        for name in ("float16", "int8"):
            runs = []
            for seed in range(args.seeds):
                cfg = build_config({"head": head, "view": "uniform:8", "epochs": args.epochs, "batch_size": 16,
                                    "seed": seed, **opts})
                res = run_training(stores[kind, name], cfg, os.path.join(work, f"run_{head}_{name}_{seed}"),
                                   show_progress=False)
                runs.append(res["test/top1"])
            scores[name] = round(statistics.mean(runs), 4)
            scores[f"{name}_runs"] = runs
        print(json.dumps({"summary": f"{head} on {kind} clips: mean test top-1 over {args.seeds} seeds", **scores,
                          "points": round(100 * (scores["int8"] - scores["float16"]), 2)}))


if __name__ == "__main__":
    main()
