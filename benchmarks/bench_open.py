"""Opening a store with thousands of videos: featcache's listing (each video's zarr.json read
directly) vs zarr's own group listing, side by side in one run.

    .venv/bin/python benchmarks/bench_open.py [--videos 2000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from featcache.cache.store import Cache, CacheWriter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import zarr

    path = os.path.join(tempfile.mkdtemp(prefix="featcache-bench-"), "c.zarr")
    writer = CacheWriter.open(path, {"storage": {"dtype": "float16"}, "layers": [-1], "tokens": {"num_tokens": 5, "dim": 4}})
    tokens = np.zeros((8, 1, 5, 4), np.float16)
    for i in range(args.videos):
        writer.write_video({"video_id": f"v{i:05d}", "frame_indices": list(range(8))}, tokens, None)
    ratios = []
    for r in range(args.rounds):
        t = time.perf_counter()
        ours = Cache(path).records()
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        theirs = {name: dict(g.attrs) for name, g in zarr.open_group(os.path.join(path, "videos"), mode="r").groups()}
        zarr_s = time.perf_counter() - t
        assert ours == theirs
        ratios.append(zarr_s / ours_s)
        print(json.dumps({"round": r, "featcache_s": round(ours_s, 4), "zarr_groups_s": round(zarr_s, 4),
                          "speedup": round(zarr_s / ours_s, 1)}), flush=True)
    print(json.dumps({"summary": "zarr listing / featcache listing", "videos": args.videos,
                      "median_speedup": round(statistics.median(ratios), 1)}))


if __name__ == "__main__":
    main()
