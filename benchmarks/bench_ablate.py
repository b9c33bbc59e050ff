"""An 8-cell sweep that shares one view vs 8 separate `featcache train` runs of the same cells.

    .venv/bin/python benchmarks/bench_ablate.py [--videos 200] [--epochs 10]

Everything runs as the user would run it (real subprocesses, process start-up included), one
after the other in this run. Reports the fused sweep's wall time over one single run (target:
at most 2x) and the 8 separate runs' total over the fused sweep.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig
from featcache.extract.pipeline import ExtractConfig, run_extract

CELLS = [{"head.temporal": t, "head.mlp_layers": m, "head.frame_feature": f}
         for t in ("avg", "concat") for m in (0, 1) for f in ("cls", "mean")]
FEATCACHE = os.path.join(os.path.dirname(sys.executable), "featcache")


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([FEATCACHE, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cells", type=int, default=len(CELLS), help="the first N cells of the grid (a tiny run)")
    args = ap.parse_args()
    cells = CELLS[:args.cells]
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=32, size=(160, 120))
    cache = os.path.join(work, "c.zarr")
    # a 1-block ViT-S/14 at 224: the real token shape (257 x 384) at a fraction of the extraction cost
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="uniform:8",
                              encoder=EncoderConfig(weights="random", model_args={"depth": 1})), show_progress=False)
    base = {"head": "pool", "view": "uniform:8", "epochs": args.epochs, "batch_size": 32}
    sweep = os.path.join(work, "sweep.yaml")
    with open(sweep, "w") as f:
        json.dump({"cache": cache, "base": base, "method": "list", "cells": cells}, f)  # JSON is YAML

    fused = timed(["ablate", sweep, "--out", os.path.join(work, "fused"), "-q"])
    single = []
    for i, cell in enumerate(cells):
        sets = [f"--set={k}={v}" for k, v in {**base, **cell}.items() if k != "head"]
        single.append(timed(["train", cache, "--head", "pool", *sets, "--out", os.path.join(work, f"run{i}"), "-q"]))
    median = statistics.median(single)
    print(json.dumps({"fused_sweep_s": round(fused, 2), "single_runs_s": [round(s, 2) for s in single],
                      "separate_total_s": round(sum(single), 2), "fused_over_single": round(fused / median, 2),
                      "separate_over_fused": round(sum(single) / fused, 2), "cells": len(cells),
                      "videos": args.videos, "epochs": args.epochs}))


if __name__ == "__main__":
    main()
