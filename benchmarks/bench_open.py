"""Stores of many videos, old layout (schema 1: a folder per video) vs the packed layout, side by
side in one run: files on disk, files opened and seconds to open + list the store + read one
video; then the read rate of a view from segments vs a numpy memmap of the same bytes.

    .venv/bin/python benchmarks/bench_open.py [--videos 1000,10000,100000] [--old-max 10000]
                                              [--read-videos 200] [--rounds 3]

Both layouts are written by their real writers with tiny arrays (8 frames x 5 tokens x 4
channels, float16): ``CacheWriter`` for the packed layout (fsyncs off for the set-up only) and
``loose.write_loose``, round 2's writer, for the old one (skipped above ``--old-max`` videos: it
writes ~4 files per video). Opens are counted with Python's audit events (every ``open`` under
the store), in a pass apart from the timed ones. Timings are warm (page cache), rounds alternate
between the layouts and the median is reported. The read rate uses ViT-S/14-sized tokens (8
frames x 257 tokens x 384 channels) of ``--read-videos`` videos: ``materialise`` of the
``uniform:8`` view (what every training run does) against copying the same bytes out of one
numpy memmap into an array of the same shape.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from featcache.cache import loose
from featcache.cache.dataset import materialise
from featcache.cache.store import Cache, CacheWriter
from featcache.spec.view import View

ATTRS = {"featcache_version": "bench", "model": {"name": "none"}, "preprocess": {}, "compute": {},
         "storage": {"dtype": "float16"}, "layers": [-1], "frames": {"policies": ["uniform:8"]}}
_OPENED: list[str] | None = None


def _hook(event, args):
    if _OPENED is not None and event == "open":
        _OPENED.append(str(args[0]))


def record(i: int) -> dict:
    return {"video_id": f"v{i:07d}", "path": f"videos/v{i:07d}.mp4", "split": "train", "labels": [f"c{i % 10}"],
            "source": {"num_frames": 8}, "frame_indices": list(range(8)), "timestamps": [t / 25 for t in range(8)],
            "policies": {"uniform:8": list(range(8))}, "status": "done", "has_luv_scores": False}


def write_packed(path: str, videos: int, tokens: tuple[int, int]) -> None:
    attrs = dict(ATTRS, tokens={"num_tokens": tokens[0], "dim": tokens[1], "num_prefix_tokens": 1,
                                "grid": [1, tokens[0] - 1]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, *tokens)).astype(np.float16)
    with CacheWriter.open(path, attrs, durable=False) as writer:
        for i in range(videos):
            writer.write_video(record(i), x, None)


def write_old(path: str, videos: int) -> None:
    attrs = dict(ATTRS, tokens={"num_tokens": 5, "dim": 4, "num_prefix_tokens": 1, "grid": [1, 4]},
                 fingerprint="bench")
    x = np.random.default_rng(0).normal(size=(8, 1, 5, 4)).astype(np.float16)  # zarr skips all-zero chunks
    loose.write_loose(path, attrs, [(record(i), {"tokens": x}) for i in range(videos)])


def open_list_read(path: str) -> int:
    cache = Cache(path)
    ids = cache.video_ids()
    cache.video(ids[len(ids) // 2]).tokens  # noqa: B018
    return len(ids)


def measure_open(path: str, rounds: int) -> dict:
    global _OPENED
    _OPENED = []
    n = open_list_read(path)
    opened = sum(p.startswith(path) for p in _OPENED)
    _OPENED = None
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        open_list_read(path)
        times.append(time.perf_counter() - t)
    files = sum(len(d) + len(f) for _, d, f in os.walk(path))
    return {"videos": n, "files": files, "opened": opened, "open_list_read_s": statistics.median(times)}


def read_rate(root: str, videos: int, rounds: int) -> dict:
    """A view read from segments vs the same bytes out of one numpy memmap, alternating, warm."""
    path = os.path.join(root, "read.zarr")
    write_packed(path, videos, (257, 384))
    cache = Cache(path)
    view = View(frames="uniform:8")
    ref = np.lib.format.open_memmap(os.path.join(root, "ref.npy"), mode="w+", dtype=np.float16,
                                    shape=(videos, 8, 257, 384))
    for i, vid in enumerate(sorted(cache.video_ids())):
        ref[i] = cache.video(vid).tokens[:, 0]
    ref.flush()
    del ref
    ours, theirs = [], []
    for r in range(rounds + 1):  # round 0 warms the page cache for both
        t = time.perf_counter()
        data = materialise(Cache(path), view, "train")
        a = time.perf_counter() - t
        t = time.perf_counter()
        mm = np.load(os.path.join(root, "ref.npy"), mmap_mode="r")
        out = np.empty(mm.shape, mm.dtype)
        out[...] = mm
        b = time.perf_counter() - t
        if r:
            ours.append(a)
            theirs.append(b)
        assert np.array_equal(data.x.numpy(), out)
    gb = videos * 8 * 257 * 384 * 2 / 1e9
    return {"videos": videos, "gb": round(gb, 3), "featcache_gb_s": round(gb / statistics.median(ours), 2),
            "memmap_gb_s": round(gb / statistics.median(theirs), 2),
            "ratio_vs_memmap": round(statistics.median(theirs) / statistics.median(ours), 3),
            "ratios": [round(b / a, 3) for a, b in zip(ours, theirs)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", default="1000,10000,100000", help="Store sizes, comma-separated.")
    ap.add_argument("--old-max", type=int, default=10000, help="Write the old layout only up to this many videos.")
    ap.add_argument("--read-videos", type=int, default=200, help="Videos of ViT-S/14 tokens for the read rate.")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.addaudithook(_hook)
    root = tempfile.mkdtemp(prefix="featcache-bench-open-")
    try:
        for n in (int(v) for v in args.videos.split(",")):
            row = {"videos": n}
            t = time.perf_counter()
            write_packed(os.path.join(root, f"new{n}.zarr"), n, (5, 4))
            row["new_write_s"] = round(time.perf_counter() - t, 2)
            if n <= args.old_max:
                t = time.perf_counter()
                write_old(os.path.join(root, f"old{n}.zarr"), n)
                row["old_write_s"] = round(time.perf_counter() - t, 2)
            for _ in range(args.rounds):  # alternate the layouts round by round
                for layout in ("old", "new"):
                    path = os.path.join(root, f"{layout}{n}.zarr")
                    if os.path.exists(path):
                        m = measure_open(path, 1)
                        row.setdefault(layout, []).append(m)
            for layout in ("old", "new"):
                if layout in row:
                    ms = row[layout]
                    row[layout] = {"files": ms[0]["files"], "opened": ms[0]["opened"],
                                   "open_list_read_s": round(statistics.median(m["open_list_read_s"] for m in ms), 4)}
            if "old" in row:
                row["open_speedup"] = round(row["old"]["open_list_read_s"] / row["new"]["open_list_read_s"], 1)
            print(json.dumps(row), flush=True)
            for layout in ("old", "new"):
                shutil.rmtree(os.path.join(root, f"{layout}{n}.zarr"), ignore_errors=True)
        if args.read_videos:
            print(json.dumps({"read": read_rate(root, args.read_videos, args.rounds)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
