"""Training views over a cache: which frames, layers and tokens a head sees.

A view is materialised once per run into one contiguous float16 array ``(V, T, N, C)`` per
split and reused every epoch, so an epoch costs a memory copy instead of V reads. A split larger
than the memory budget (``max_bytes``) is streamed from the chunk files instead (cache/stream.py):
the same values, read batch by batch, with no copy on disk.

Frames come from the cached pool: a policy cached at extraction (``uniform:8``) is used as
recorded; another one (``uniform:4`` from a ``uniform:12`` pool: ``uniform:N`` from ``uniform:kN``
with k odd holds for every video length, the segment centres coinciding; ``keyframes:4`` from a
``keyframes:8`` pool and its stored LUV scores) is recomputed per video and served when all its
frames are in the pool, and refused otherwise with the video that lacks them.

The functions take the store's ``Cache`` and ``VideoEntry`` (featcache.cache.store) as they come:
the store calls back into this module (``Cache.dataset``), so it is not imported here, not even
for annotations, and the import graph stays free of circles.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featcache.cache import schema
from featcache.cache.quant import QuantTokens
from featcache.cache.stream import StreamedTokens
from featcache.errors import FeatcacheError
from featcache.spec.policy import FramePolicy
from featcache.spec.view import View
from featcache.video.select import policy_indices


@dataclass
class ViewData:
    """One split of a view, materialised."""

    x: torch.Tensor  # (V, T, N, C) float16, or a StreamedTokens / QuantTokens that index to the same values
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

    def __init__(self, cache, view: View, split: str, task: Task):
        self.data = materialise(cache, view, split)
        self.targets = task.targets(self.data.labels)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.x[i], self.targets[i]


def frame_positions(entry, policy: FramePolicy) -> list[int]:
    """Positions into the video's cached frames that ``policy`` picks."""
    if str(policy) in entry.policies:
        return list(entry.policies[str(policy)])
    if policy.served_from == "clips" and entry.facts.clips is not None:  # K of the cached clips, evenly (uniform:K over them)
        from featcache.video.clips import spread

        return spread(next(iter(entry.policies.values())), policy.fixed_length)
    n = entry.facts.num_frames
    wanted = policy_indices(policy, n, entry.luv_scores if policy.needs_scores else None)
    pool = entry.frame_indices
    pos = np.searchsorted(pool, wanted)
    if np.any(pos >= len(pool)) or np.any(pool[np.minimum(pos, len(pool) - 1)] != wanted):
        raise FeatcacheError(
            f"view {policy}: video {entry.video_id!r} lacks some of its frames in the cached pool "
            f"({', '.join(entry.policies)}); re-extract with --frames {','.join(entry.policies)},{policy}")
    return pos.tolist()


def fill_view(dest: np.ndarray, entry, positions: list[int], view: View, shape,
              train_view: int | None = None) -> None:
    """Write the view of the cached frames at ``positions`` of one video into ``dest`` (T, N', C');
    ``shape``: the cache's CacheShape (``cache.facts.shape``, or ``cache.attrs``, which answers it);
    ``train_view``: of that cached training view (extract --train-views) instead of the centre crop."""
    prefix, grid = shape.num_prefix_tokens, tuple(shape.grid)
    if view.source == "cut":
        dest[...] = entry.cut[np.asarray(positions)]  # (T, N, C): the residual stream entering the cut block
        return
    layers = list(view.layers)
    if view.reads_plain and train_view is not None:
        entry.read_view_into(dest, train_view, positions, layers[0])
        return
    if view.reads_plain:
        entry.read_frames_into(dest, positions, layers[0])  # the common case: straight from disk
        return
    if train_view is not None:
        stored = entry.views[train_view]  # (T_pool, L, N, C)
    else:
        stored = entry.tokens if view.crop == 1 else entry.side_crops[0 if view.crop == 0 else 1]  # (T_pool, L, N, C)
    x = stored[np.asarray(positions)]  # (T, L, N, C)
    x = np.concatenate([x[:, i] for i in layers], axis=-1)  # layers on channels: (T, N, C')
    if view.channels:  # average-pool the channel axis (AdaptiveAvgPool1d); commutes with the spatial pooling
        t, n, c = x.shape
        pooled = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(x.astype(np.float32)).reshape(t * n, 1, c),
                                                         view.channels)  # (T*N, 1, channels)
        x = pooled.reshape(t, n, view.channels).numpy()
    cls, patches = x[:, :prefix], x[:, prefix:]
    if view.spatial and view.tokens != "cls":
        t, _, c = patches.shape
        p = torch.from_numpy(patches.astype(np.float32)).reshape(t, grid[0], grid[1], c).permute(0, 3, 1, 2)
        p = torch.nn.functional.adaptive_avg_pool2d(p, view.spatial)  # (T, C, s, s)
        patches = p.permute(0, 2, 3, 1).reshape(t, -1, c).numpy()
    parts = {"all": [cls, patches], "cls": [cls], "patch": [patches]}[view.tokens]
    dest[...] = np.concatenate(parts, axis=1)


def materialise(cache, view: View, split: str, max_bytes: int | None = None) -> ViewData:
    """Every done video of ``split`` read once into one (V, T, N, C) float16 array (a plain view
    of an int8 store: a QuantTokens, int8 + scales as stored, that indexes as that array), or,
    when it would exceed ``max_bytes`` (default: half the available memory), a StreamedTokens."""
    view.check(cache.facts.shape)
    layout = view.layout(cache.facts.shape)
    budget = max_bytes if max_bytes else memory_budget()
    fast = columns(cache, view, split, budget)
    if fast is not None:
        return fast
    entries = cache.done_entries(split)  # briefs only: full records stay unread
    shape = (len(entries), *layout.shape)
    positions = []
    for entry in entries:
        pos = frame_positions(entry, view.frames)
        positions.append(pos[view.subset[0]::view.subset[1]] if view.subset else pos)  # interleaved views
    labels, ids = [e.labels for e in entries], [e.video_id for e in entries]
    int8 = cache.facts.dtype == "int8" and view.reads_plain
    size = int(np.prod(shape)) * 2 if not int8 else int(np.prod(shape)) + int(np.prod(shape[:-1])) * 2
    if size > budget:
        return ViewData(StreamedTokens(cache, view, entries, positions, shape, fill_view), labels, ids,
                        layout.num_prefix_tokens, layout.grid)
    if int8:  # kept as stored; dequantised batch by batch, on the head's device (quant.QuantTokens)
        return ViewData(read_quantized(entries, positions, view, shape), labels, ids,
                        layout.num_prefix_tokens, layout.grid)
    out = np.empty(shape, dtype=np.float16)
    plain = view.reads_plain and cache.facts.dtype == "float16"  # one gather, no cast
    if not (plain and cache.gather(schema.TOKENS, entries, positions, view.layers[0], out)):
        for i, entry in enumerate(entries):
            fill_view(out[i], entry, positions[i], view, cache.facts.shape)
    return ViewData(torch.from_numpy(out), labels, ids, layout.num_prefix_tokens, layout.grid)


def columns(cache, view: View, split: str, max_bytes: int) -> ViewData | None:
    """The common case without a Python object per video: a plain view of a cached policy,
    held in memory; its frames' positions, labels and tokens read from the index columns and the
    segments in a few numpy gathers. None where it does not apply (the per-video path serves)."""
    if not view.reads_plain or cache.facts.dtype != "float16" or \
            str(view.frames) not in cache.facts.policies:
        return None  # decided from the attributes, before any index file is read
    got = cache.split_columns(split)
    if got is None or not len(got[0]):
        return None
    rows, ids, labels = got
    pos = cache.policy_positions(rows, str(view.frames))
    if pos is None:
        return None
    if view.subset:  # interleaved views
        pos = pos[:, view.subset[0]::view.subset[1]]
    layout = view.layout(cache.facts.shape)
    shape = (len(rows), *layout.shape)
    if pos.shape[1] != shape[1] or int(np.prod(shape)) * 2 > max_bytes:
        return None
    out = np.empty(shape, dtype=np.float16)
    if not cache.gather_rows(schema.TOKENS, rows, pos, view.layers[0], out):
        return None
    cache.spot_check(rows)  # a few whole videos against their checksums: damage named before training
    return ViewData(torch.from_numpy(out), labels, ids, layout.num_prefix_tokens, layout.grid)


def read_quantized(entries: list, positions: list[list[int]], view: View, shape: tuple) -> QuantTokens:
    """The plain view of an int8 store as stored: int8 tokens and their scales, half the bytes."""
    q = np.empty(shape, np.int8)  # (V, T, N, C)
    token_scales = np.empty(shape[:-1], np.float16)  # (V, T, N)
    channel_scales = np.empty((shape[0], shape[-1]), np.float32)  # (V, C)
    cache, layer = entries[0].cache if entries else None, view.layers[0]
    pos = np.asarray(positions, dtype=np.int64).reshape(len(entries), shape[1])
    if cache is not None and cache.gather(schema.TOKENS, entries, pos, layer, q):
        cache.gather(schema.TOKEN_SCALES, entries, pos, layer, token_scales)
        cache.gather(schema.CHANNEL_SCALES, entries, np.zeros((len(entries), 1), np.int64), layer,
                     channel_scales[:, None])
        return QuantTokens(q, token_scales, channel_scales)
    for i, entry in enumerate(entries):
        channel_scales[i] = entry.read_quantized_into(q[i], token_scales[i], positions[i], view.layers[0])
    return QuantTokens(q, token_scales, channel_scales)


def memory_budget() -> int:
    """Half the memory available now (the default budget of a materialised view)."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):
        return 4 << 30
