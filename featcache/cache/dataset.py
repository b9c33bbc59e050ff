"""Training views over a cache: which frames, layers and tokens a head sees.

A view is materialised once per run into one contiguous float16 array ``(V, T, N, C)`` per
split (in memory, or a memmap in a temporary folder when larger than ``max_memory_bytes``) and
reused every epoch, so an epoch costs a memory copy instead of V Zarr reads.

Frames come from the cached pool: a policy cached at extraction (``uniform:8``) is used as
recorded; another one (``uniform:4`` from a ``uniform:8,uniform:16`` pool, ``keyframes:4`` from
a ``keyframes:8`` pool and its stored LUV scores) is recomputed per video and served when all its
frames are in the pool, and refused otherwise with the video that lacks them.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from featcache.cache.store import Cache, VideoEntry
from featcache.errors import FeatcacheError
from featcache.video.select import keyframe_indices, parse_policies, uniform_indices

TOKEN_MODES = ("all", "cls", "patch")


@dataclass(frozen=True)
class View:
    """What a head sees of each video."""

    frames: str = "uniform:8"  # a frame policy served from the cached pool
    layers: tuple[int, ...] = (-1,)  # positions in the cached layers; several are concatenated on channels
    tokens: str = "all"  # all = prefix + patches, cls = prefix tokens only, patch = patches only
    spatial: int = 0  # average-pool the patch grid to spatial x spatial (0 = keep)


@dataclass
class ViewData:
    """One split of a view, materialised."""

    x: torch.Tensor  # (V, T, N, C) float16
    labels: list[list[str]]
    video_ids: list[str]
    num_prefix_tokens: int
    grid: tuple[int, int]


@dataclass
class Task:
    classes: list[str]
    multi: bool

    def targets(self, labels: list[list[str]]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.classes)}
        if self.multi:
            y = torch.zeros(len(labels), len(self.classes))
            for i, ls in enumerate(labels):
                y[i, [index[label] for label in ls]] = 1.0
            return y
        return torch.tensor([index[ls[0]] for ls in labels], dtype=torch.long)

    @property
    def metric(self) -> str:
        return "mAP" if self.multi else "top1"


class TokenDataset(torch.utils.data.Dataset):
    """A torch Dataset of one split of a view: ``(tokens (T, N, C) float16, target)`` pairs,
    materialised once. The training loop slices the same tensors in whole batches instead."""

    def __init__(self, cache: Cache, view: View, split: str, task: Task):
        self.data = materialise(cache, view, split)
        self.targets = task.targets(self.data.labels)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.x[i], self.targets[i]


def check_view(cache: Cache, view: View) -> None:
    """Raise FeatcacheError when the cache cannot serve ``view`` (before any data is read)."""
    try:
        (policy,) = parse_policies(view.frames)
    except ValueError as exc:
        raise FeatcacheError(str(exc).replace("--frames", "view")) from None
    cached = cache.attrs["frames"]["policies"]
    if policy.kind == "keyframes" and not any(p.startswith("keyframes") for p in cached):
        raise FeatcacheError(f"view {view.frames}: the cache has no key frames (it holds {', '.join(cached)}); "
                             f"re-extract with --frames {','.join(cached)},{view.frames}")
    if view.tokens not in TOKEN_MODES:
        raise FeatcacheError(f"tokens: unknown {view.tokens!r}; expected one of {', '.join(TOKEN_MODES)}")
    num_layers = len(cache.attrs["layers"])
    for layer in view.layers:
        if not -num_layers <= layer < num_layers:
            raise FeatcacheError(f"layers: {layer} is out of range; the cache holds {num_layers} layer(s) "
                                 f"(blocks {cache.attrs['layers']})")
    grid = cache.attrs["tokens"]["grid"]
    if view.spatial < 0 or view.spatial > min(grid):
        raise FeatcacheError(f"spatial: {view.spatial} must be between 0 and the cached grid {grid[0]}x{grid[1]}")
    if view.tokens == "cls" and not cache.attrs["tokens"]["num_prefix_tokens"]:
        raise FeatcacheError("tokens: cls asked for, but the cached model has no prefix (CLS) tokens")


def frame_positions(entry: VideoEntry, frames: str) -> list[int]:
    """Positions into the video's cached frames that the policy ``frames`` picks."""
    if frames in entry.policies:
        return list(entry.policies[frames])
    (policy,) = parse_policies(frames)
    n = entry.record["source"]["num_frames"]
    if policy.kind == "uniform":
        wanted = uniform_indices(n, policy.count)
    else:
        wanted = keyframe_indices(entry.luv_scores, policy.count)
    pool = entry.frame_indices
    pos = np.searchsorted(pool, wanted)
    if np.any(pos >= len(pool)) or np.any(pool[np.minimum(pos, len(pool) - 1)] != wanted):
        raise FeatcacheError(
            f"view {frames}: video {entry.video_id!r} lacks some of its frames in the cached pool "
            f"({', '.join(entry.policies)}); re-extract with --frames {','.join(entry.policies)},{frames}")
    return pos.tolist()


def _fill(dest: np.ndarray, entry: VideoEntry, positions: list[int], view: View, prefix: int,
          grid: tuple[int, int]) -> None:
    """Write the view of one cached video into ``dest`` (T, N', C')."""
    layers = list(view.layers)
    if len(layers) == 1 and view.tokens == "all" and not view.spatial:
        entry.read_frames_into(dest, positions, layers[0])  # the common case: straight from disk
        return
    x = entry.tokens[np.asarray(positions)]  # (T, L, N, C)
    x = np.concatenate([x[:, i] for i in layers], axis=-1)  # layers on channels: (T, N, C')
    cls, patches = x[:, :prefix], x[:, prefix:]
    if view.spatial and view.tokens != "cls":
        t, _, c = patches.shape
        p = torch.from_numpy(patches.astype(np.float32)).reshape(t, grid[0], grid[1], c).permute(0, 3, 1, 2)
        p = torch.nn.functional.adaptive_avg_pool2d(p, view.spatial)  # (T, C, s, s)
        patches = p.permute(0, 2, 3, 1).reshape(t, -1, c).numpy()
    parts = {"all": [cls, patches], "cls": [cls], "patch": [patches]}[view.tokens]
    dest[...] = np.concatenate(parts, axis=1)


def view_layout(cache: Cache, view: View) -> tuple[int, tuple[int, int]]:
    """(num_prefix_tokens, grid) of the view's tokens."""
    prefix = cache.attrs["tokens"]["num_prefix_tokens"]
    grid = tuple(cache.attrs["tokens"]["grid"])
    if view.spatial:
        grid = (view.spatial, view.spatial)
    if view.tokens == "cls":
        grid = (0, 0)
    if view.tokens == "patch":
        prefix = 0
    return prefix, grid


def materialise(cache: Cache, view: View, split: str, max_memory_bytes: int = 4 << 30) -> ViewData:
    """Read every done video of ``split`` once into one (V, T, N, C) float16 array."""
    check_view(cache, view)
    records = [r for r in cache.records().values() if r.get("status") == "done" and r["split"] == split]
    records.sort(key=lambda r: r["video_id"])
    prefix, grid = view_layout(cache, view)
    cached_prefix = cache.attrs["tokens"]["num_prefix_tokens"]
    cached_grid = tuple(cache.attrs["tokens"]["grid"])
    (policy,) = parse_policies(view.frames)
    n_tokens = prefix + grid[0] * grid[1]
    dim = cache.attrs["tokens"]["dim"] * len(view.layers)
    shape = (len(records), policy.count, n_tokens, dim)
    out = _allocate(shape, max_memory_bytes)
    for i, record in enumerate(records):
        entry = cache.video(record["video_id"])
        _fill(out[i], entry, frame_positions(entry, view.frames), view, cached_prefix, cached_grid)
    return ViewData(torch.from_numpy(out), [r["labels"] for r in records], [r["video_id"] for r in records],
                    prefix, grid)


def _allocate(shape: tuple[int, ...], max_memory_bytes: int) -> np.ndarray:
    nbytes = int(np.prod(shape)) * 2
    if nbytes <= max_memory_bytes:
        return np.empty(shape, dtype=np.float16)
    path = os.path.join(tempfile.mkdtemp(prefix="featcache-view-"), "view.f16")
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    os.unlink(path)  # the mapping stays valid; the file disappears with the process
    return arr
