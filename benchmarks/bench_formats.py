"""Compact token formats side by side in one run: bytes per frame, view read speed, accuracy.

    .venv/bin/python benchmarks/bench_formats.py [--videos 160] [--rounds 3] [--epochs 30] [--reads-only] [--compiled]
                                                 [--threads N]

- bytes per frame of DINOv2 ViT-S/14 at 224 (257 tokens x 384, one layer) in each format, from
  the writer's own array plan (what `featcache estimate` counts);
- read speed of the train split's ``uniform:8`` view from fp16, int8, ``--token-pool 2`` and
  ``--token-pool mean`` stores of the same videos, rounds alternating, warm page cache, two ways
  (then fp16 against int8 again on stores of DINOv2 ViT-S/14's real rows, ``--vit-s-videos``):
  ``read``: ``materialise`` alone (what a run holds in memory after reading: float16, or for
  int8 the int8 tokens + scales as stored); ``ready`` (the headline): ``materialise`` and then one
  epoch of batches as the head consumes them, float32 on the head's device (here the CPU), through
  the training loop's own ``stream.batches`` + ``quant.to_head`` (= its ``.to(device).float()``;
  the fp16 path's cast to float32 counts too; int8 batches are dequantised there). ``int8 eager``
  is the int8 store read the way it was before this round: dequantised to float16 per video on
  the way in (the streamed path);
- accuracy: r3d on generated motion clips (classes differ only by motion) and pool (average of
  per-frame features) on generated appearance clips (classes differ by colour), each trained from
  the fp16 and the int8 store with the same seeds; mean test top-1 over the seeds.
- dequantisation alone: 64 ViT-S/14 frames (257 x 384) to float16 (or float32) by each candidate
  kernel, next to a plain float16 copy and the float16 -> float32 cast of the same tokens; every
  candidate's bits are checked against the numpy three-step reference. ``--compiled`` adds a
  ``torch.compile`` fused kernel (compile time printed, not in the rates).
The stores come from a random-weight 4-block ViT (embed 192) at 112 so the run stays short.
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
from featcache.cache.dataset import materialise
from featcache.cache.quant import QuantBatch, dequantize, quantize, to_head
from featcache.cache.store import frame_bytes
from featcache.cache.stream import batches, epoch_order
from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.spec.view import View
from featcache.train.fit import run_training

FORMATS = {"float16": {}, "int8": {"dtype": "int8"}, "pool2": {"pool": 2}, "mean": {"pool": "mean"}}
READERS = {"float16": "float16", "int8": "int8", "int8 eager": "int8", "pool2": "pool2", "mean": "mean"}


def vit_s_bytes(dtype: str, pool) -> int:
    grid = 16 if pool in (None, 1) else 1 if pool == "mean" else 16 // pool
    return frame_bytes({"layers": [-1], "tokens": {"num_tokens": 1 + grid * grid, "dim": 384}, "storage": {"dtype": dtype}})


def before(q, s, ch):  # featcache's dequantisation before the fused pass (the reference)
    out = q.astype(np.float32) * s.astype(np.float32)[..., None]
    out *= ch
    return out.astype(np.float16, copy=False)


def previous_pass(q, s, ch, out, chunk=1 << 14):
    """The last round's pass, ported for (T, N, C) with (T, N) and (C,): a frame above 4 chunks
    goes one axis down; 4 torch ops per step of ``chunk`` values."""
    if q[0].size > 4 * chunk and q.ndim > 2:
        for i in range(len(q)):
            previous_pass(q[i], s[i], ch, out[i], chunk)
        return
    step = max(1, chunk // max(q[0].size, 1))
    with torch.inference_mode():
        for a in range(0, len(q), step):
            tmp = torch.from_numpy(q[a:a + step]).to(torch.float32)
            tmp.mul_(torch.from_numpy(np.ascontiguousarray(s[a:a + step, ..., None])).to(torch.float32))
            torch.from_numpy(out[a:a + step]).copy_(tmp.mul_(torch.from_numpy(ch)))


def candidates(q, s, ch, compiled: bool) -> dict:
    """name -> (fn, result getter, reference) of every dequantisation candidate."""
    ref = before(q, s, ch)
    dest, d32 = np.empty(q.shape, np.float16), torch.empty(q.shape)
    half = torch.from_numpy(ref.copy())
    qt, st, cht = torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(ch)
    batch = QuantBatch(qt[None], st[None], cht[None])  # one "video" of 64 frames
    held = [None]

    def whole_ops():  # two whole-array torch ops (above torch's grain: on its thread pool)
        with torch.inference_mode():
            torch.mul(torch.mul(qt, st.float()[..., None]), cht, out=torch.from_numpy(dest))

    qt2, st2 = quantize(ref.astype(np.float32)[:, None], "token")[:2]  # the same tokens, per-token scales only
    qt2, st2 = qt2[:, 0], st2[:, 0]
    levels = np.arange(-128, 128, dtype=np.float32)

    def table():  # `token` scheme only: a 256-entry float16 table per token, then a gather
        lut = (levels * st2.astype(np.float32)[..., None]).astype(np.float16)  # (T, N, 256)
        dest[...] = np.take_along_axis(lut, qt2.astype(np.intp) + 128, axis=-1)

    out = {"float16 copy": (lambda: np.copyto(dest, ref), lambda: dest, ref),
           "float16 -> float32 cast": (lambda: d32.copy_(half), lambda: d32.half().numpy(), ref),
           "dequantize -> float16 (this round)": (lambda: dequantize(q, s, ch, out=dest), lambda: dest, ref),
           "dequantize -> float32 via float16 (CPU head)": (
               lambda: dequantize(q, s, ch, np.float32, out=d32.numpy(), via=np.float16), lambda: d32.half().numpy(), ref),
           "QuantBatch.dequantize (alloc + the same)": (lambda: held.__setitem__(0, batch.dequantize()[0]),
                                                       lambda: held[0].half().numpy(), ref),
           "previous pass (4 ops / 16384 values, ported)": (lambda: previous_pass(q, s, ch, dest), lambda: dest, ref),
           "numpy, three whole-array steps": (lambda: np.copyto(dest, before(q, s, ch)), lambda: dest, ref),
           "torch, two whole-array ops": (whole_ops, lambda: dest, ref),
           "table per token (token scheme)": (table, lambda: dest, before(qt2, st2, np.ones_like(ch)))}
    if compiled:
        def fused(a, b, c):
            return (a.to(torch.float32) * b.to(torch.float32)[..., None] * c).to(torch.float16)
        kernel = torch.compile(fused, dynamic=True)
        t = time.perf_counter()
        with torch.inference_mode():
            kernel(qt, st, cht)
        print(json.dumps({"torch.compile first call (s)": round(time.perf_counter() - t, 1)}), flush=True)

        def run_fused():
            with torch.inference_mode():
                np.copyto(dest, kernel(qt, st, cht).numpy())
        out["torch.compile fused kernel (+ copy out)"] = (run_fused, lambda: dest, ref)
    return out


def dequantize_alone(rounds: int, compiled: bool = False) -> None:
    x = np.random.default_rng(0).normal(size=(64, 1, 257, 384)).astype(np.float32)
    x[..., [3, 200]] *= 50  # outlier channels, as ViTs have
    q, s, ch = quantize(x)
    q, s, ch = q[:, 0], s[:, 0], ch[0]
    steps = candidates(q, s, ch, compiled)
    for name, (fn, got, ref) in steps.items():
        fn()
        assert np.array_equal(np.asarray(got()).view(np.uint16), ref.view(np.uint16)), f"{name}: wrong bits"
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds * 5):
        for name, (fn, _, _) in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    print(json.dumps({"summary": "dequantise 64 frames x 257 x 384 (million values/s; median, min-max over "
                      "rounds; every candidate's bits checked)",
                      **{k: {"mvalues_per_s": round(q.size / statistics.median(v) / 1e6),
                             "range": [round(q.size / max(v) / 1e6), round(q.size / min(v) / 1e6)]}
                         for k, v in times.items()}}), flush=True)


def read_view(name: str, path: str, view: View):
    """The train view as a run holds it: ``int8 eager`` dequantises to float16 per video on the way in."""
    cache = open_cache(path)
    if name == "int8 eager":
        return materialise(cache, view, "train", max_bytes=1).x[:]  # StreamedTokens: fill_view per video
    return materialise(cache, view, "train").x


def ready(x, batch_size: int = 32) -> int:
    """One epoch of batches as the head consumes them (float32, on the CPU; batch 32, the training
    default); returns the frames."""
    device = torch.device("cpu")
    frames = 0
    for _, b in batches(x, epoch_order(len(x), 0, 0), batch_size):
        frames += to_head(b, device).shape[0] * x.shape[1]
    return frames


def read_speed(stores: dict, rounds: int, readers: dict = READERS, rows: str = "65 tokens x 192") -> None:
    view = View("uniform:8")
    times = {name: {"read": [], "ready": []} for name in readers}
    for r in range(rounds):
        for name, store in readers.items():
            t = time.perf_counter()
            x = read_view(name, stores[store], view)
            t1 = time.perf_counter()
            frames = ready(x)
            t2 = time.perf_counter()
            times[name]["read"].append(t1 - t)
            times[name]["ready"].append(t2 - t)
        print(json.dumps({"round": r, "rows": rows, **{k: {m: round(v[m][-1], 4) for m in v} for k, v in times.items()}}))
    for measure, words in (("read", "materialise the train view (what a run holds: float16, int8 + scales for int8)"),
                           ("ready", "materialise + one epoch of float32 batches on the CPU (headline)")):
        base = statistics.median(times["float16"][measure])
        print(json.dumps({"summary": f"{words}: frames/s (median, min-max over rounds; ratio of medians to float16)",
                          "rows": rows,
                          **{k: {"frames_per_s": round(frames / statistics.median(v[measure])),
                                 "range": [round(frames / max(v[measure])), round(frames / min(v[measure]))],
                                 "ratio": round(base / statistics.median(v[measure]), 2)}
                             for k, v in times.items()}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--reads-only", action="store_true", help="skip the accuracy runs")
    ap.add_argument("--vit-s-videos", type=int, default=80,
                    help="videos of a second pair of stores with DINOv2 ViT-S/14 rows (257 x 384, random weights); 0: skip")
    ap.add_argument("--compiled", action="store_true", help="add a torch.compile fused kernel to the candidates")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"load_average": os.getloadavg(), "torch_threads": torch.get_num_threads()}), flush=True)
    dequantize_alone(args.rounds, args.compiled)
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
    read_speed(stores, args.rounds)
    if args.vit_s_videos:  # the same read at the real row size: bytes, not per-video look-ups, dominate
        manifest = make_dataset(os.path.join(work, "vit_s"), "motion", per_class=args.vit_s_videos // 4, num_frames=16)
        enc = EncoderConfig(weights="random", precision="auto")  # DINOv2 ViT-S/14 at 224: 257 tokens x 384
        vit_s = {}
        for name in ("float16", "int8"):
            vit_s[name] = os.path.join(work, f"vit_s_{name}.zarr")
            run_extract(ExtractConfig(manifest=manifest, out=vit_s[name], encoder=enc, frames="uniform:8",
                                      dtype=name, batch_size=16), show_progress=False)
        read_speed(vit_s, args.rounds, {k: v for k, v in READERS.items() if v in vit_s}, "257 tokens x 384 (ViT-S/14)")
    print(json.dumps({"load_average": os.getloadavg()}), flush=True)
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
