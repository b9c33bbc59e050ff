"""Training on a view several times larger than its memory budget, side by side with the in-memory path.

    .venv/bin/python benchmarks/bench_stream.py [--videos 240] [--budget-gb 0.1] [--epochs 2]

A store of DINOv2-shaped tokens (257 x 384 per frame, fp16; a random 1-block ViT at 224 so that
extraction is quick) holds a ``uniform:16`` view of ~``videos`` x 3.2 MB. Each path runs in its own
process (so peak RSS is its own): ``memory`` materialises every split (the default budget), ``stream``
sets ``max_view_memory_gb`` to ``--budget-gb`` and reads batches from the chunk files; ``baseline``
only imports, opens the cache and builds the head (what every run costs before data). Reported:
wall time of training, peak RSS (ru_maxrss), and whether the metrics are identical.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(mode: str, cache: str, out: str, budget: float, epochs: int) -> None:
    from featcache.spec.config import build_config
    from featcache.train.fit import run_training

    cfg = build_config({"head": "pool", "view": "uniform:16", "epochs": epochs, "batch_size": 32, "seed": 0,
                        "max_view_memory_gb": budget if mode == "stream" else 0.0})
    start = time.perf_counter()
    if mode == "baseline":
        from featcache import open_cache
        from featcache.heads.registry import create_head

        open_cache(cache).records()
        create_head("pool", in_dim=384, num_classes=4, num_frames=16, grid=(16, 16), num_prefix_tokens=1)
        metrics = {}
    else:
        metrics = run_training(cache, cfg, out, show_progress=False)
    print(json.dumps({"mode": mode, "wall_s": round(time.perf_counter() - start, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "metrics": metrics}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--budget-gb", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2], args.budget_gb, args.epochs)
        return
    from featcache import open_cache
    from featcache.data.synthetic import make_dataset
    from featcache.extract.encoder import EncoderConfig
    from featcache.extract.pipeline import ExtractConfig, run_extract

    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=24, size=(256, 224))
    cache = os.path.join(work, "c.zarr")
    enc = EncoderConfig(weights="random", img_size=224, precision="fp32", model_args={"depth": 1})
    run_extract(ExtractConfig(manifest=manifest, out=cache, encoder=enc, frames="uniform:16", batch_size=32),
                show_progress=False)
    train_gb = sum(r["split"] == "train" for r in open_cache(cache).records().values()) * 16 * 257 * 384 * 2 / 1e9
    print(json.dumps({"videos": args.videos, "train_view_gb": round(train_gb, 3), "budget_gb": args.budget_gb,
                      "ratio": round(train_gb / args.budget_gb, 1)}))
    rows = {}
    for i, mode in enumerate(("baseline", "memory", "stream", "memory", "stream")):
        p = subprocess.run([sys.executable, __file__, "--child", mode, cache, os.path.join(work, f"run_{i}_{mode}"),
                            "--budget-gb", str(args.budget_gb), "--epochs", str(args.epochs)],
                           capture_output=True, text=True, check=True)
        row = json.loads(p.stdout.strip().splitlines()[-1])
        rows.setdefault(mode, []).append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "metrics"}))
    same = rows["memory"][0]["metrics"] == rows["stream"][0]["metrics"]
    print(json.dumps({"summary": "stream vs memory", "same_metrics": same,
                      "wall_ratio_stream_over_memory": round(min(r["wall_s"] for r in rows["stream"])
                                                             / min(r["wall_s"] for r in rows["memory"]), 2),
                      "peak_rss_mb": {m: min(r["peak_rss_mb"] for r in rs) for m, rs in rows.items()}}))


if __name__ == "__main__":
    main()
