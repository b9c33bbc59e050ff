"""Splits larger than memory: read batches of videos straight from their chunk files.

``StreamedTokens`` stands where a materialised ``(V, T, N, C)`` float16 tensor would: ``len``,
``shape`` and indexing by a slice or an index tensor give the same values the in-memory array
holds (each video is read whole, with the same ``fill_view``), so the training loop, evaluation
and probes work unchanged. ``batches`` reads the next batches ahead on a few threads (file reads
and numpy copies release the GIL) while the model trains on the current one; at most
``depth`` batches are in memory besides the one in use.

``epoch_order`` is the one sampler of both paths: a permutation of the split that is the same for
the same seed and epoch whether the split is in memory or streamed. ``window`` > 0 shuffles
blocks of that many consecutive videos and the videos within each block (shard shuffling: reads
stay within a window of neighbouring files); 0 is a full shuffle.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int, window: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same seed -> same order
    if window <= 0 or window >= n:
        return torch.randperm(n, generator=g)
    starts = torch.arange(0, n, window)
    parts = [s + torch.randperm(min(window, n - int(s)), generator=g) for s in starts[torch.randperm(len(starts), generator=g)]]
    return torch.cat(parts)


class StreamedTokens:
    """A split of a view read from the store on demand (see module docstring)."""

    def __init__(self, cache, view, entries: list, positions: list[list[int]], shape: tuple[int, ...], fill):
        # fill(dest, entry, positions, view, shape): cache.dataset.fill_view, the in-memory path's own reader
        self.cache, self.view, self.entries, self.positions, self.fill = cache, view, entries, positions, fill
        self.shape = torch.Size(shape)
        self.dtype = torch.float16

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def video_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * 2

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            rows = range(*index.indices(len(self)))
        else:
            rows = torch.as_tensor(index).reshape(-1).tolist()
        out = np.empty((len(rows), *self.shape[1:]), np.float16)
        for i, row in enumerate(rows):
            self.fill(out[i], self.entries[row], self.positions[row], self.view, self.cache.facts.shape)
        return torch.from_numpy(out)


def batches(x, order: torch.Tensor, batch_size: int, budget_bytes: int = 0, threads: int = 2):
    """Yield ``(index, x[index])`` for consecutive batches of ``order``; a streamed ``x`` is read
    ahead on ``threads`` threads, at most as many batches as fit ``budget_bytes`` (>= 1); an int8
    ``x`` (QuantTokens) yields its batches still quantised (QuantBatch: ``.to(device).float()``)."""
    from featcache.cache.quant import QuantTokens

    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if isinstance(x, QuantTokens):  # int8 + scales: the loop's .to(device).float() dequantises on the device
        for idx in chunks:
            yield idx, x.take(idx)
        return
    if not isinstance(x, StreamedTokens):
        for idx in chunks:
            yield idx, x[idx]
        return
    depth = max(1, min(2 * threads, budget_bytes // max(1, x.video_bytes * batch_size) - 1))
    with ThreadPoolExecutor(threads, thread_name_prefix="featcache-read") as pool:
        pending = [pool.submit(x.__getitem__, idx) for idx in chunks[:depth]]
        for k, idx in enumerate(chunks):
            batch = pending.pop(0).result()
            if k + depth < len(chunks):
                pending.append(pool.submit(x.__getitem__, chunks[k + depth]))
            yield idx, batch
