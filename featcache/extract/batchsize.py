"""``--batch-size auto``: the fastest batch size of the real model on this device, probed once.

A few sizes are timed on the real encoder (uniform random frames), growing while the throughput
grows; the fastest wins. Each size gets a warm-up forward, then ``REPEATS`` timed ones, and counts
its best (a burst of load on a shared machine slows some repeats, rarely all). The choice is
cached per model, create args, input size, device type, precision and torch thread count in the
user cache dir (``$XDG_CACHE_HOME/featcache/batch_size.json``, default ``~/.cache``), so later runs
pay nothing. A cached probe can be wrong (taken while the machine was busy, or on other hardware
behind the same key): every extraction compares its own forward rate at the chosen size (full
batches only, once it has ``MIN_BATCHES`` of them and ``MIN_SECONDS`` of forward time) with the
probe's figure, and when they differ by more than ``STALE_FACTOR`` either way, the entry is
dropped so the next run probes again, and the summary says so. On the 2-core CPU here the best
bare forward of DINOv2 ViT-S/14 bf16 was at batch 8 (benchmarks/RESULTS.md), not featcache's
earlier fixed 32.
"""
from __future__ import annotations

import json
import os
import time

import torch

CANDIDATES = (8, 16, 32, 64)
REPEATS = 3  # timed forwards per size after the warm-up; the best counts
STALE_FACTOR = 2.0  # a run's own forward rate this far from the probe's (either way): re-probe next time
MIN_BATCHES, MIN_SECONDS = 5, 2.0  # what a run must have measured before it judges the probe


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


def _load(path: str) -> dict:
    """The cached probes (none when the file is missing or unreadable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def probe(encoder, candidates=CANDIDATES) -> tuple[dict, str]:
    """``{"batch_size": best, "frames_per_s": {size: rate}}`` for this model/device/precision,
    from the cache file or measured now (and cached), and how it was obtained."""
    path, key = cache_file(), probe_key(encoder)
    known = _load(path)
    if key in known:
        return known[key], f"auto: cached probe ({path})"
    size = encoder.cfg.img_size
    rates, start = {}, time.perf_counter()
    for b in candidates:
        frames = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8)
        encoder(frames)  # warm-up (allocations, autotuning)
        best_s = float("inf")
        for _ in range(REPEATS):
            t = time.perf_counter()
            encoder(frames)
            best_s = min(best_s, time.perf_counter() - t)
        rates[b] = b / best_s
        if len(rates) > 1 and rates[b] < max(rates.values()) * 0.9:
            break  # throughput fell: larger batches will not help
    best = max(rates, key=rates.get)
    known[key] = {"batch_size": best, "frames_per_s": {str(k): round(v, 2) for k, v in rates.items()},
                  "repeats": REPEATS, "probed_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    _save(path, known)
    tried = ", ".join(f"{k}: {v:.1f}" for k, v in rates.items())
    return known[key], f"auto: probed in {time.perf_counter() - start:.1f} s (frames/s {tried})"


def _save(path: str, known: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: probe again next time


def judge(encoder, entry: dict, cached: bool, batches: int, seconds: float, frames: int) -> str:
    """After a run: compare its own forward rate over full batches of ``entry["batch_size"]``
    with the probe's figure; drop a disagreeing entry from the cache (the next run re-probes) and
    say so. Empty when the run measured too little to judge or the figures agree."""
    size = int(entry["batch_size"])
    expected = float(entry["frames_per_s"][str(size)])
    if batches < MIN_BATCHES or seconds < MIN_SECONDS or not expected:
        return ""
    measured = frames / seconds
    # on CUDA the run times only its waits for the device (host work overlaps): an upper bound
    faster_ok = encoder.device.type == "cuda" and measured > expected
    if faster_ok or 1 / STALE_FACTOR <= measured / expected <= STALE_FACTOR:
        return f"this run's forward: {measured:.1f} frames/s at batch {size}, as probed"
    path, key = cache_file(), probe_key(encoder)
    known = _load(path)
    if known.pop(key, None) is not None:
        _save(path, known)
    which = "the cached probe is stale" if cached else "the machine's speed changed since the probe"
    return (f"{which}: this run's forward ran {measured:.1f} frames/s at batch {size}, the probe said "
            f"{expected:.1f}; dropped from {path}, the next run probes again")
