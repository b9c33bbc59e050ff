"""Two concurrent shard workers vs one worker on the same manifest, side by side in one run.

    .venv/bin/python benchmarks/bench_shards.py [--videos 48] [--rounds 2]

Real processes (`featcache extract`), DINOv2 ViT-S/14 (random weights, bf16), uniform:8. One
worker uses torch's default threads; the two workers (--shard 0/2, 1/2, started together into the
same store) use 1 thread each, so both set-ups use the 2 cores. Correctness: every video exactly
once in the store, `cache verify` clean.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from featcache import open_cache
from featcache.data.synthetic import make_dataset

FEATCACHE = os.path.join(os.path.dirname(sys.executable), "featcache")


def run(manifest: str, out: str, workers: int) -> float:
    base = [FEATCACHE, "extract", manifest, "--out", out, "--weights", "random", "--frames", "uniform:8", "-q"]
    start = time.perf_counter()
    if workers == 1:
        subprocess.run(base, check=True, stdout=subprocess.DEVNULL)
    else:
        procs = [subprocess.Popen([*base, "--shard", f"{i}/{workers}", "--threads", "1"], stdout=subprocess.DEVNULL)
                 for i in range(workers)]
        assert all(p.wait() == 0 for p in procs)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    manifest = make_dataset(work, "motion", per_class=args.videos // 4, num_frames=48, size=(320, 240))
    for r in range(args.rounds):
        row = {"round": r}
        for workers in (1, 2):
            out = os.path.join(work, f"c{workers}.zarr")
            shutil.rmtree(out, ignore_errors=True)
            seconds = run(manifest, out, workers)
            cache = open_cache(out)
            ids = cache.video_ids()
            row[f"{workers}_worker_videos_per_s"] = round(len(ids) / seconds, 3)
            row[f"{workers}_worker_exactly_once"] = len(ids) == len(set(ids)) == args.videos and cache.verify() == []
        row["ratio_2_over_1"] = round(row["2_worker_videos_per_s"] / row["1_worker_videos_per_s"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
