"""``--batch-size auto``: the fastest batch size of the real model on this device, probed once.

A few sizes are timed on the real encoder (uniform random frames, after a warm-up), growing while
the throughput grows; the fastest wins. The choice is cached per model, create args, input size,
device type, precision and torch thread count in the user cache dir
(``$XDG_CACHE_HOME/featcache/batch_size.json``, default ``~/.cache``), so later runs pay nothing.
On the 2-core CPU here the best bare forward of DINOv2 ViT-S/14 bf16 was at batch 8 (benchmarks/
RESULTS.md), not featcache's earlier fixed 32.
"""
from __future__ import annotations

import json
import os
import time

import torch

CANDIDATES = (8, 16, 32, 64)


def cache_file() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "featcache", "batch_size.json")


def probe_key(encoder) -> str:
    cfg = encoder.cfg
    return json.dumps([cfg.model, cfg.model_args, cfg.img_size, encoder.device.type, encoder.precision,
                       torch.get_num_threads()], sort_keys=True)


def choose_batch_size(encoder, candidates=CANDIDATES) -> tuple[int, str]:
    """(batch size, how it was chosen): from the cache file, or probed now and cached."""
    entry, how = probe(encoder, candidates)
    return int(entry["batch_size"]), how


def probe(encoder, candidates=CANDIDATES) -> tuple[dict, str]:
    """``{"batch_size": best, "frames_per_s": {size: rate}}`` for this model/device/precision,
    from the cache file or measured now (and cached), and how it was obtained."""
    path, key = cache_file(), probe_key(encoder)
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key], f"auto: cached probe ({path})"
    size = encoder.cfg.img_size
    rates, start = {}, time.perf_counter()
    for b in candidates:
        frames = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8)
        encoder(frames)  # warm-up (allocations, autotuning)
        t = time.perf_counter()
        encoder(frames)
        rates[b] = b / (time.perf_counter() - t)
        if len(rates) > 1 and rates[b] < max(rates.values()) * 0.9:
            break  # throughput fell: larger batches will not help
    best = max(rates, key=rates.get)
    known[key] = {"batch_size": best, "frames_per_s": {str(k): round(v, 2) for k, v in rates.items()}}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: probe again next time
    tried = ", ".join(f"{k}: {v:.1f}" for k, v in rates.items())
    return known[key], f"auto: probed in {time.perf_counter() - start:.1f} s (frames/s {tried})"
