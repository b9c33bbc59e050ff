"""The cache from Python, for your own training loop: ``open_cache(path).dataset(...)``.

    import featcache, torch
    train = featcache.open_cache("c.zarr").dataset(view="uniform:8", split="train")
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True, num_workers=2)
    for tokens, target in loader:   # tokens (B, T, N, C) float32, target (B,) class indices
        ...

A :class:`CacheDataset` is one split of one view, read exactly as ``featcache train`` reads it
(the same :func:`featcache.cache.dataset.materialise`: the frames, layers, tokens and poolings of
a :class:`featcache.spec.view.View`, served from the cached frame pool): in memory as one float16 array
when it fits ``max_bytes`` (default: half the available memory), else streamed from the chunk
files video by video (``featcache.cache.stream.StreamedTokens``). Either way it works with a
plain ``DataLoader``, worker processes included.

Items are ``(tokens, target)``: tokens ``(T, N, C)`` (frames, prefix + patch tokens, channels;
the first ``num_prefix_tokens`` tokens of each frame are CLS/register tokens, then
``grid[0] * grid[1]`` patches in row-major order, the head convention of :mod:`featcache.heads`),
and the target as ``featcache train`` builds it: a class index (single-label) or a multi-hot
float vector over ``classes`` (multi-label: a video with several labels, or ``multi_label=True``).

A store extracted with ``--train-views K`` serves its cached augmented views with
``train_views="random"`` (one per video, drawn per ``set_epoch(epoch)`` from ``seed``: the draws
of ``featcache train --set train_views=random``) or ``"all"`` (the K views as K x the videos).

An int8 store with ``quantized=True`` hands its tokens over as stored, half the bytes through the
DataLoader: items are ``({"q": (T, N, C) int8, "token_scales": (T, N) float16, "channel_scales":
(C,) float32}, target)``, and the batch becomes float32 on the training device in one step::

    from featcache.cache.quant import to_head
    for tokens, target in loader:
        x = to_head(tokens, "cuda")   # (B, T, N, C) float32: the values of the float16 view
"""
from __future__ import annotations

import torch

from featcache.cache.dataset import Task, materialise
from featcache.cache.quant import QuantTokens
from featcache.cache.train_views import materialise_views
from featcache.errors import FeatcacheError
from featcache.spec.view import View

SPLITS = ("train", "val", "test")


def annotated(cache, manifest: str | None = None):
    """The cache whose ``done_records(split)`` the dataset reads: its labels and splits, either
    the store's own (``manifest=None``) or those of a training manifest. The one place the
    dataset takes its records from."""
    if manifest is None:
        return cache
    from featcache.data.annotations import annotate

    return annotate(cache, manifest)


def _view(view, layers, tokens, spatial, channels) -> View:
    if isinstance(view, View):
        return view
    try:
        return View(view, layers, tokens, spatial, channels)
    except ValueError as exc:
        raise FeatcacheError(f"dataset: {exc}") from None


class CacheDataset(torch.utils.data.Dataset):
    """One split of one view of a cache as ``(tokens (T, N, C), target)`` pairs (see the module
    docstring). Attributes: ``classes`` (over train, val and test, as ``featcache train`` numbers
    them), ``video_ids`` and ``labels`` (item order: sorted by video id), ``view``, ``layout``
    (frames, num_tokens, dim, num_prefix_tokens, grid), ``multi_label``, ``streamed``."""

    def __init__(self, cache, view: str | View | None = None, split: str = "train", manifest: str | None = None, *,
                 frames: str | None = None, layers=(-1,), tokens: str = "all", spatial: int = 0, channels: int = 0,
                 classes: list[str] | None = None, multi_label: bool | None = None,
                 max_bytes: int | None = None, stream: bool | None = None, dtype: torch.dtype = torch.float32,
                 quantized: bool = False, transform=None, target_transform=None, train_views: str = "none",
                 seed: int = 0):
        if split not in SPLITS:
            raise FeatcacheError(f"dataset: unknown split {split!r}; expected train, val or test")
        if view is not None and frames is not None:
            raise FeatcacheError("dataset: give the frames once: view= (a View or its frames) or frames=")
        source = annotated(cache, manifest)
        view = view if view is not None else frames if frames is not None else "uniform:8"
        self.view, self.split, self.dtype = _view(view, layers, tokens, spatial, channels), split, dtype
        self.transform, self.target_transform = transform, target_transform  # torchvision's convention
        self.view.check(source.facts.shape)
        self.layout = self.view.layout(source.facts.shape)
        budget = 1 if stream else (1 << 62) if stream is False else max_bytes
        if train_views == "none":
            self.data = materialise(source, self.view, split, max_bytes=budget)
        else:  # the cached training views: random (one per video, drawn per set_epoch) or all (K x the videos)
            self.data = materialise_views(source, self.view, split, train_views, seed, None if stream is False else max_bytes)
        self.train_views = train_views
        self.quantized = quantized
        if quantized and not isinstance(self.data.x, QuantTokens):
            raise FeatcacheError("dataset: quantized=True needs an int8 store (--dtype int8), a view of one layer "
                                 "with all tokens and no pooling, held in memory (not streamed)")
        everyone = source.done_labels(SPLITS)
        self.classes = list(classes) if classes is not None else sorted({c for ls in everyone for c in ls})
        unknown = sorted({c for ls in self.data.labels for c in ls} - set(self.classes)) if classes is not None else []
        if unknown:
            raise FeatcacheError(f"dataset: split {split} has labels {unknown} that are not in classes")
        self.multi_label = any(len(ls) > 1 for ls in everyone) if multi_label is None else multi_label
        if not self.multi_label and any(len(ls) != 1 for ls in self.data.labels):
            raise FeatcacheError(f"dataset: some videos of {split} have no label or several; "
                                 "give multi_label=True for multi-hot targets")
        self.targets = Task(self.classes, self.multi_label).targets(self.data.labels)

    @property
    def video_ids(self) -> list[str]:
        return self.data.video_ids

    @property
    def labels(self) -> list[list[str]]:
        return self.data.labels

    @property
    def num_prefix_tokens(self) -> int:
        return self.layout.num_prefix_tokens

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.layout.grid)

    @property
    def streamed(self) -> bool:
        """True when items are read from the chunk files on demand instead of from memory."""
        from featcache.cache.stream import StreamedTokens

        return isinstance(self.data.x, StreamedTokens)

    def head_args(self) -> dict:
        """The common constructor arguments of a head for this view: ``create_head(name, **ds.head_args())``."""
        return {"in_dim": self.layout.dim, "num_classes": len(self.classes), "num_frames": self.layout.frames,
                "grid": self.grid, "num_prefix_tokens": self.num_prefix_tokens}

    def __len__(self) -> int:
        return len(self.targets)

    def set_epoch(self, epoch: int) -> None:
        """train_views=random: draw each video's cached view for ``epoch`` (``featcache train``'s
        draws for the same seed and epoch); call it before each epoch, as with DistributedSampler.
        A no-op otherwise. In DataLoader workers (a copy per worker) call it on a sampler-side
        epoch, or use num_workers=0 or persistent_workers=False so each epoch copies the draw."""
        if hasattr(self.data.x, "set_epoch"):
            self.data.x.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} videos")
        target = self.targets[i] if self.target_transform is None else self.target_transform(self.targets[i])
        if self.quantized:  # as stored: quant.to_head dequantises the collated batch
            x = self.data.x
            return {"q": torch.from_numpy(x.q[i]), "token_scales": torch.from_numpy(x.token_scales[i]),
                    "channel_scales": torch.from_numpy(x.channel_scales[i])}, target
        x = self.data.x[i] if not self.streamed else self.data.x[[i % len(self)]][0]  # (T, N, C)
        x = x.to(self.dtype)
        return (x if self.transform is None else self.transform(x)), target

    def __repr__(self) -> str:
        lay = self.layout
        return (f"CacheDataset({self.split}, {self.view}: {len(self)} videos x (T={lay.frames}, N={lay.num_tokens}, "
                f"C={lay.dim}), {len(self.classes)} classes{', streamed' if self.streamed else ''})")


def cache_dataset(cache, view: str | View | None = None, split: str = "train", manifest: str | None = None,
                  **kw) -> CacheDataset:
    """``Cache.dataset``: see :class:`CacheDataset`."""
    return CacheDataset(cache, view, split, manifest, **kw)
