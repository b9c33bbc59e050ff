"""Opening a store of many videos: the columnar index (table, ids, briefs) against the JSON-lines
index of the same store contents, side by side in one run; then the read rate of a view from
segments vs a numpy memmap of the same bytes.

    .venv/bin/python benchmarks/bench_open.py [--videos 10000,100000,650000] [--read-videos 200]
                                              [--rounds 3] [--json]

Each store is written by the real writer (``CacheWriter``, fsyncs off for the set-up only) with
tiny arrays (8 frames x 5 tokens x 4 channels, float16) and real records (~0.6 KB of JSON each).
Its JSON-index twin is the same store with the table, ids and brief files removed, so featcache
reads it as a store written before the columns existed (every JSON line parsed at open). Each
measurement runs in a fresh process (``peak_rss_mb``: the peak of what open + ``video_ids()``
allocate, Python objects and numpy arrays, traced by ``tracemalloc`` in a pass apart from the
timed one; ``rss_growth_mb``: the process's resident size after the timed listing, less before):

- ``open_list_s`` / ``open_list_cpu_s``: ``open_cache(p)`` + ``video_ids()``, wall and CPU;
- ``dataset_cpu_s``: ``cache.dataset("uniform:8", "train")`` after that (the split's briefs,
  entries and one gather of the tokens);
- ``read_one_s``: ``open_cache(p).video(id).tokens`` in a fresh process state (index included);
- ``floor_read_s``: one ``read()`` of the index bytes the open needs (the physical floor).

Timings are warm (page cache); rounds alternate between the two indexes and medians are reported.
The read rate uses ViT-S/14-sized tokens (8 frames x 257 tokens x 384 channels) of
``--read-videos`` videos: ``materialise`` of the ``uniform:8`` view (what every training run does)
against copying the same bytes out of one numpy memmap into an array of the same shape.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from featcache.cache.dataset import materialise
from featcache.cache.store import Cache
from featcache.cache.writer import CacheWriter
from featcache.spec.view import View

ATTRS = {"featcache_version": "bench", "model": {"name": "none"}, "preprocess": {}, "compute": {},
         "storage": {"dtype": "float16"}, "layers": [-1], "frames": {"policies": ["uniform:8"]}}
def record(i: int) -> dict:
    """A record as `featcache extract` writes it for a 10 s Kinetics clip at 30 fps, uniform:8."""
    frames = [int(round((k + 0.5) * 300 / 8)) for k in range(8)]
    return {"video_id": f"v{i:07d}", "path": f"/datasets/kinetics700/train/class_{i % 700:03d}/v{i:07d}_000010_000020.mp4",
            "split": "train", "labels": [f"class_{i % 700:03d}"], "extra": {},
            "source": {"num_frames": 300, "fps": 29.97002997002997, "width": 340, "height": 256, "decoder": "pyav",
                       "decoder_note": "", "expected_frames": 300, "truncated": False, "decoder_messages": 0,
                       "decoder_log": []},
            "frame_indices": frames, "timestamps": [float(np.float32(f / 29.97002997002997)) for f in frames],
            "policies": {"uniform:8": list(range(8))}, "num_cached_frames": 8, "short": False, "status": "done",
            "has_luv_scores": False}


def write_packed(path: str, videos: int, tokens: tuple[int, int]) -> None:
    attrs = dict(ATTRS, tokens={"num_tokens": tokens[0], "dim": tokens[1], "num_prefix_tokens": 1,
                                "grid": [1, tokens[0] - 1]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 1, *tokens)).astype(np.float16)
    with CacheWriter.open(path, attrs, durable=False) as writer:
        for i in range(videos):
            writer.write_video(record(i), x, None)


def json_twin(path: str, twin: str) -> None:
    """A copy of the store without its columns: read as a JSON-indexed (pre-column) store."""
    shutil.copytree(path, twin)
    for seg in os.scandir(os.path.join(twin, "segments")):
        if seg.is_dir():
            for which in ("table", "ids", "brief"):
                shutil.rmtree(os.path.join(seg.path, which), ignore_errors=True)


_CHILD = """
import json, os, sys, time
import numpy as np
from featcache.cache.store import open_cache
import featcache.cache.dataset, featcache.cache.torch_dataset  # noqa: F401 -- imports before the baseline
path, what = sys.argv[1], sys.argv[2]
page = os.sysconf("SC_PAGE_SIZE")
base = int(open("/proc/self/statm").read().split()[1]) * page / 2**20  # resident now, after the imports
out = {}
if what == "open":
    w, c = time.perf_counter(), time.process_time()
    cache = open_cache(path)
    ids = cache.video_ids()
    out["open_list_s"], out["open_list_cpu_s"] = time.perf_counter() - w, time.process_time() - c
    out["rss_growth_mb"] = int(open("/proc/self/statm").read().split()[1]) * page / 2**20 - base  # held after listing
    c = time.process_time()
    ds = cache.dataset("uniform:8", "train")
    out["dataset_cpu_s"] = time.process_time() - c
    out["videos"] = len(ids)
    assert len(ds) == len(ids)
    del cache, ids, ds
    import tracemalloc  # apart from the timed pass: it slows allocations
    tracemalloc.start()
    again = open_cache(path)
    again.video_ids()
    out["peak_rss_mb"] = tracemalloc.get_traced_memory()[1] / 2**20  # the open's peak allocation (Python and numpy)
    tracemalloc.stop()
else:  # one video, from a fresh process
    w = time.perf_counter()
    open_cache(path).video(sys.argv[3]).tokens
    out["read_one_s"] = time.perf_counter() - w
print(json.dumps(out))
"""


def floor(path: str, which: str) -> dict:
    """One read() of the index bytes an open needs (every segment's ``which``/0): the physical floor."""
    folder = os.path.join(path, "segments")
    files = [os.path.join(folder, s, which, "0") for s in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, s))]
    t, n = time.perf_counter(), 0
    for f in files:
        with open(f, "rb") as fh:
            n += len(fh.read())
    return {"floor_read_s": time.perf_counter() - t, "index_bytes": n}


def child(path: str, what: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, path, what, *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout)


def compare(root: str, n: int, rounds: int) -> dict:
    """Open, list, dataset and read-one of one store, columns vs JSON lines, alternating."""
    new, old = os.path.join(root, f"new{n}.zarr"), os.path.join(root, f"json{n}.zarr")
    t = time.perf_counter()
    write_packed(new, n, (5, 4))
    write_s = time.perf_counter() - t
    json_twin(new, old)
    one = record(n // 2)["video_id"]
    runs: dict[str, list[dict]] = {"json": [], "columns": []}
    for _ in range(rounds):
        for name, path, files in (("json", old, "index"), ("columns", new, "table")):
            m = child(path, "open")
            m.update(child(path, "one", one))
            m.update(floor(path, files))
            if name == "columns":
                m["index_bytes_ids"] = floor(path, "ids")["index_bytes"]
            runs[name].append(m)
    row = {"videos": n, "write_s": round(write_s, 2)}
    for name, ms in runs.items():
        row[name] = {k: round(statistics.median(m[k] for m in ms), 4) for k in ms[0]}
    row["open_list_cpu_speedup"] = round(row["json"]["open_list_cpu_s"] / row["columns"]["open_list_cpu_s"], 1)
    row["dataset_cpu_speedup"] = round(row["json"]["dataset_cpu_s"] / row["columns"]["dataset_cpu_s"], 1)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return row


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
    os.sync()  # the store's and the reference's dirty pages written back before any timing
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
    ap.add_argument("--videos", default="10000,100000", help="Store sizes, comma-separated.")
    ap.add_argument("--read-videos", type=int, default=200, help="Videos of ViT-S/14 tokens for the read rate (0: skip).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="Print only the JSON objects (one per store size).")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="featcache-bench-open-")
    try:
        for n in (int(v) for v in args.videos.split(",")):
            row = compare(root, n, args.rounds)
            print(json.dumps(row), flush=True)
            if not args.json:
                for name in ("json", "columns"):
                    m = row[name]
                    print(f"# {n} videos, {name:7s}: index {m['index_bytes'] / 1e6:.1f} MB, open+list "
                          f"{m['open_list_cpu_s']:.3f} s CPU, peak RSS +{m['peak_rss_mb']:.0f} MB, dataset "
                          f"{m['dataset_cpu_s']:.3f} s CPU, read one {m['read_one_s']:.3f} s, floor "
                          f"{m['floor_read_s']:.4f} s", file=sys.stderr)
        if args.read_videos:
            print(json.dumps({"read": read_rate(root, args.read_videos, args.rounds)}), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
