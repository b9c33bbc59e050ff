"""What the train split reads besides the view's own frames: the cached augmented training
views of ``extract --train-views K`` (``train_views=random|all``) and clips jittered in time from a
cached dense pool (``temporal_jitter=stride:S|fps:F``). Both stand where the train split's
``(V, T, N, C)`` tensor would (``ViewData.x``) and draw anew per epoch (``set_epoch``: the same
seed and epoch give the same draws); val and test keep the view as given.

Like dataset.py, it takes the store's ``Cache`` and ``VideoEntry`` as they come.
"""
from __future__ import annotations

import numpy as np
import torch

from featcache.cache.dataset import ViewData, fill_view, frame_positions, memory_budget
from featcache.cache.facts import store_attrs
from featcache.errors import FeatcacheError
from featcache.spec.view import View

TRAIN_VIEWS = ("none", "random", "all")  # train_views: the centre crop; one cached view per video per epoch; all


def view_choices(n: int, k: int, seed: int, epoch: int) -> torch.Tensor:
    """train_views=random: the cached view each of ``n`` videos shows in ``epoch`` (same seed and
    epoch: the same draws, in memory or not, alone or fused; a stream of its own, apart from
    ``stream.epoch_order``'s)."""
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) ^ 0x7A1E_5EED)
    return torch.randint(k, (n,), generator=g)


class ViewChoice:
    """The train split of ``train_views=random``: indexes as a (V, T, N, C) float16 tensor whose
    video ``i`` is its cached view ``choice[i]`` of this epoch (:meth:`set_epoch`)."""

    def __init__(self, views: torch.Tensor, seed: int = 0):
        self.views, self.seed = views, seed  # (V, K, T, N, C)
        self.shape = torch.Size((views.shape[0], *views.shape[2:]))
        self.dtype = views.dtype
        self.set_epoch(0)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.seed = self.seed if seed is None else seed
        self.epoch, self.choice = epoch, view_choices(len(self.views), self.views.shape[1], self.seed, epoch)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index) -> torch.Tensor:
        rows = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        return self.views[rows, self.choice[rows]]


def materialise_views(cache, view: View, split: str, mode: str, seed: int = 0, max_bytes: int | None = None) -> ViewData:
    """The split's cached training views (``extract --train-views K``) of ``view``, in memory:
    ``mode`` random (a :class:`ViewChoice`: one view per video, drawn per epoch) or all (the K views
    as K * V videos, video after video, labels repeated)."""
    attrs = cache.attrs
    if mode not in ("random", "all"):
        raise FeatcacheError(f"train_views={mode}: expected one of {', '.join(TRAIN_VIEWS)}")
    if not attrs.get("views"):
        raise FeatcacheError(f"train_views={mode}: {cache.path} holds no training views; extract with "
                             "--train-views K (e.g. 4), or use train_views=none")
    if view.source == "cut" or view.crop != 1:
        raise FeatcacheError(f"train_views={mode}: training views are of the final tokens' centre-crop layout "
                             "(not --cut-block or spatial crops)")
    view.check(attrs)
    layout = view.layout(attrs)
    entries = cache.done_entries(split)
    k = store_attrs(attrs).views.count
    shape = (len(entries), k, *layout.shape)
    budget = max_bytes if max_bytes else memory_budget()
    if int(np.prod(shape)) * 2 > budget:
        raise FeatcacheError(f"train_views={mode}: the {split} split's {k} views take {np.prod(shape) * 2 / 1e9:.1f} GB, "
                             f"more than the {budget / 1e9:.1f} GB memory budget (max_view_memory_gb); cached views "
                             "are read into memory (not streamed)")
    out = np.empty(shape, np.float16)
    for i, entry in enumerate(entries):
        pos = frame_positions(entry, view.frames)
        pos = pos[view.subset[0]::view.subset[1]] if view.subset else pos
        for j in range(k):
            fill_view(out[i, j], entry, pos, view, attrs, train_view=j)
    labels, ids = [e.labels for e in entries], [e.video_id for e in entries]
    if mode == "all":
        x = torch.from_numpy(out.reshape(len(entries) * k, *layout.shape))  # (V*K, T, N, C): video-major
        return ViewData(x, [ls for ls in labels for _ in range(k)], [v for v in ids for _ in range(k)],
                        layout.num_prefix_tokens, layout.grid)
    return ViewData(ViewChoice(torch.from_numpy(out), seed), labels, ids, layout.num_prefix_tokens, layout.grid)


def with_train_views(cache, view: View, data: dict[str, ViewData], mode: str, seed: int = 0,
                     max_bytes: int | None = None, jitter: str = "none") -> dict[str, ViewData]:
    """``data`` (split -> ViewData) with its train split replaced by the cached training views
    (``mode`` random or all) or by temporally jittered clips from a dense pool (``jitter``,
    :func:`materialise_jittered`); ``none``: ``data`` as it is. Val and test keep the view as given."""
    if jitter != "none" and mode != "none":
        raise FeatcacheError(f"temporal_jitter={jitter} with train_views={mode}: give one of them (the training "
                             "views are cached for the frames of the store's pool, not jittered)")
    if jitter != "none":
        return {**data, "train": materialise_jittered(cache, view, "train", jitter, seed, max_bytes)}
    if mode == "none":
        return data
    return {**data, "train": materialise_views(cache, view, "train", mode, seed, max_bytes)}


# ------------------------------------------------------------------ temporal jitter from a dense pool
def jitter_starts(pool_sizes: np.ndarray, frames: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per video of ``pool_sizes`` pool frames: (its clip's start, its step) for ``epoch``. The
    step spreads the view's ``frames`` over the pool (``max(1, P // frames)``, the spacing of
    ``uniform:frames``); the start is drawn uniformly from every start whose clip fits
    (``[0, P - (frames - 1) * step - 1]``; 0 for a pool shorter than the clip, whose last frame
    repeats): TSN's random offset shared by all segments, a clip start as V-JEPA's random clip
    sampling draws it. Same seed and epoch: the same starts."""
    sizes = np.asarray(pool_sizes, dtype=np.int64)
    step = np.maximum(1, sizes // frames)
    room = np.maximum(0, sizes - (frames - 1) * step - 1)  # the last start whose clip fits
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) ^ 0x0717_7E12)
    u = torch.rand(len(sizes), generator=g, dtype=torch.float64).numpy()
    return np.minimum((u * (room + 1)).astype(np.int64), room), step


class JitteredClips:
    """The train split of ``temporal_jitter``: each video's dense pool (its view of every pool
    frame) in memory; indexes as a (V, T, N, C) float16 tensor of this epoch's clips
    (:meth:`set_epoch`)."""

    def __init__(self, pools: list[torch.Tensor], frames: int, seed: int = 0):
        self.pools, self.frames, self.seed = pools, frames, seed  # each (P_i, N, C)
        self.sizes = np.array([len(p) for p in pools], np.int64)
        self.shape = torch.Size((len(pools), frames, *pools[0].shape[1:]))
        self.dtype = torch.float16
        self.set_epoch(0)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.seed = self.seed if seed is None else seed
        self.epoch = epoch
        self.starts, self.steps = jitter_starts(self.sizes, self.frames, self.seed, epoch)

    def positions(self, i: int) -> np.ndarray:
        """This epoch's pool positions of video ``i``'s clip (the last frame repeats past the pool)."""
        at = self.starts[i] + self.steps[i] * np.arange(self.frames)
        return np.minimum(at, self.sizes[i] - 1)

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, index) -> torch.Tensor:
        rows = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        if rows.ndim == 0:
            return self.pools[int(rows)][self.positions(int(rows))]
        return torch.stack([self.pools[i][self.positions(i)] for i in rows.tolist()])


def materialise_jittered(cache, view: View, split: str, pool: str, seed: int = 0,
                         max_bytes: int | None = None) -> ViewData:
    """The split's videos as jittered clips of ``view.frames.fixed_length`` frames from the cached dense
    pool ``pool`` (``stride:S`` or ``fps:F``), every pool frame of every video read once."""
    from featcache.spec.policy import UniformPolicy
    from featcache.spec.view import parse_policy

    try:
        policy = parse_policy(pool)
    except ValueError as exc:
        raise FeatcacheError(f"temporal_jitter={pool}: {exc}") from None
    if policy.fixed or str(policy) not in store_attrs(cache.attrs).policies:
        raise FeatcacheError(f"temporal_jitter={pool}: expected a dense pool the cache holds (stride:S or fps:F); "
                             f"it holds {', '.join(store_attrs(cache.attrs).policies)}")
    if not isinstance(view.frames, UniformPolicy) or view.subset or view.source == "cut":
        raise FeatcacheError(f"temporal_jitter={pool}: jitters a uniform:N view of the final tokens, not {view.frames}")
    view.check(cache.attrs)
    layout = view.layout(cache.attrs)
    entries = cache.done_entries(split)
    pools = []
    budget, used = (max_bytes if max_bytes else memory_budget()), 0
    for entry in entries:
        pos = list(entry.policies[str(policy)])
        out = np.empty((len(pos), *layout.shape[1:]), np.float16)
        fill_view(out, entry, pos, view, cache.attrs)
        used += out.nbytes
        if used > budget:
            raise FeatcacheError(f"temporal_jitter={pool}: the {split} split's pools exceed the "
                                 f"{budget / 1e9:.1f} GB memory budget (max_view_memory_gb); they are read into memory")
        pools.append(torch.from_numpy(out))
    return ViewData(JitteredClips(pools, view.frames.fixed_length, seed), [e.labels for e in entries],
                    [e.video_id for e in entries], layout.num_prefix_tokens, layout.grid)
