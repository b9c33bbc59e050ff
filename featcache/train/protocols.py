"""Evaluation protocols as objects: which views of each video a saved head scores, and how their
scores combine into the video's score. One :func:`featcache.train.evaluate.evaluate` loop runs any
of them; each names itself (:attr:`Protocol.name`), and that name is the ``@...`` of the result keys
and output files (``test/top1@2x3``, ``predictions_test@slowfast10x3r8.csv``).

The kinds: :class:`SingleView` (the head's own view), :class:`MultiView` (interleaved temporal views
x spatial crops), :class:`DenseClips` (clips at a sampling rate from a ``stride:S`` pool) and its
released placements (``slowfast``, ``slowfast-pyav``, ``slowfast-whole``, ``stadapter``, ``vjepa``: :mod:`featcache.train.protocols_release`),
and ``Windows`` (sliding windows over a dense pool: :mod:`featcache.train.protocols_windows`). :func:`featcache.train.evaluate.parse_protocol` builds
one from the ``featcache eval`` options: the only place that dispatches on them.

Long module: the protocol base, the single and interleaved views, and the dense-clip kind every
release subclasses with the views file they all write; splitting them would split that base.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from featcache.cache.dataset import Task, ViewData, fill_view, frame_positions, materialise
from featcache.cache.facts import VideoRecord
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.policy import StridePolicy
from featcache.spec.view import View, parse_policy
from featcache.train.clips import ReleaseFails, dense_clip_indices, nearest_positions
from featcache.video.decode import resize_to_short_side
from featcache.video.prepare import crop_origin

COMBINE = ("mean", "sum", "max")


@dataclasses.dataclass
class Run:
    """A trained head ready to score: its config, the (annotated) cache it reads, the head on its
    device and the task (classes, multi-label)."""
    cfg: object
    cache: object
    head: nn.Module
    task: Task
    device: torch.device


@dataclasses.dataclass
class Scored:
    """One split under one protocol: the videos, their labels, the combined scores (probabilities,
    ``sum`` of ``views`` when combined by sum), extra results (``name -> value``, keyed by the loop
    as ``<split>/<name>@<protocol>``) and files (``prefix -> writer(path)``, written as
    ``<prefix>_<split>@<protocol>.csv``)."""
    video_ids: list[str]
    labels: list[list[str]]
    scores: np.ndarray
    combine: str = "mean"
    views: int = 1
    extras: dict = dataclasses.field(default_factory=dict)
    files: dict[str, Callable[[str], None]] = dataclasses.field(default_factory=dict)


@torch.inference_mode()
def predict(head: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    head.eval()
    outs = [head(x[i:i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def probabilities(logits: np.ndarray, multi: bool) -> np.ndarray:
    """Softmax per video (single-label) or sigmoid per class (multi-label): the scores that
    predictions files hold and views are combined in."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if multi else torch.softmax(t, dim=1)).numpy()


def combined(probs: list[np.ndarray], combine: str) -> np.ndarray:
    """The views' scores (each (videos, classes)) combined per video by ``mean``, ``sum`` or ``max``."""
    return {"mean": np.mean, "sum": np.sum, "max": np.max}[combine](np.stack(probs), axis=0)


def check_combine(combine: str) -> str:
    if combine not in COMBINE:
        raise OptionError("combine", f"unknown {combine!r}; expected one of {', '.join(COMBINE)}")
    return combine


def crops_of(spatial_views: int) -> tuple[int, ...]:
    """The cached crops a protocol scores: the centre only, or the first, centre and last."""
    if spatial_views not in (1, 3):
        raise OptionError("spatial_views", f"expected 1 or 3, got {spatial_views}")
    return (1,) if spatial_views == 1 else (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A test-time protocol. ``resolve(run)`` checks it against a run and fills in what depends on
    the run's cache (the default pool), ``name`` is its part of keys and files (empty for the
    head's own view), ``score(run, split)`` the split's combined scores under the resolved protocol (None when
    the split has no video)."""

    def resolve(self, run: Run) -> Protocol:
        return self

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def suffix(self) -> str:
        """``@name``, or nothing for the head's own view (keys stay ``test/top1``)."""
        return f"@{self.name}" if self.name else ""

    def score(self, run: Run, split: str, data: ViewData | None = None) -> Scored | None:
        raise NotImplementedError


def _score_views(run: Run, read: list[ViewData], combine: str) -> Scored | None:
    """Every view (one ViewData of the split each) through the head, softmax per view, combined."""
    if not read[0].video_ids:
        return None
    probs = [probabilities(predict(run.head, d.x, run.cfg.batch_size, run.device), run.task.multi) for d in read]
    return Scored(read[0].video_ids, read[0].labels, combined(probs, combine), combine, len(probs))


@dataclasses.dataclass(frozen=True)
class SingleView(Protocol):
    """The head's own view (featcache's default, every ``train`` / ``ablate`` cell); ``data``
    (the split of that view, already read by training) is scored without reading again."""

    @property
    def name(self) -> str:
        return ""

    def score(self, run: Run, split: str, data: ViewData | None = None) -> Scored | None:
        return _score_views(run, [data if data is not None else materialise(run.cache, run.cfg.view, split)], "mean")


@dataclasses.dataclass(frozen=True)
class MultiView(Protocol):
    """``temporal_views`` V interleaved ``uniform:N`` views of a ``uniform:N*V`` pool (view v =
    pool[v::V]) x ``spatial_views`` cached crops (1, or 3: ``extract --crops 3``), each scored,
    softmax (sigmoid) per view, then combined by ``combine`` (``mean``: VideoMAE, ST-Adapter;
    ``sum``: SlowFast; ``max``). Named ``VxS`` (``2x3``)."""
    temporal_views: int = 1
    spatial_views: int = 1
    combine: str = "mean"

    def __post_init__(self):
        check_combine(self.combine)
        crops_of(self.spatial_views)
        if self.temporal_views < 1:
            raise OptionError("temporal_views", f"must be at least 1, got {self.temporal_views}")

    @property
    def name(self) -> str:
        return f"{self.temporal_views}x{self.spatial_views}"

    def views(self, view: View) -> list[View]:
        """Every temporal view at every crop, crops innermost."""
        crops = crops_of(self.spatial_views)
        return [dataclasses.replace(v, crop=c) for v in temporal_views(view, self.temporal_views) for c in crops]

    def score(self, run: Run, split: str, data: ViewData | None = None) -> Scored | None:
        return _score_views(run, [materialise(run.cache, v, split) for v in self.views(run.cfg.view)], self.combine)


def box_text(x0: int, y0: int, size: int) -> str:
    """A square crop's box as the views file writes it: ``x0 y0 x1 y1``."""
    return f"{x0} {y0} {x0 + size} {y0 + size}"


def temporal_views(view: View, count: int) -> list[View]:
    """The V interleaved views of multi-view testing (see MultiView)."""
    if count == 1:
        return [view]
    pool = view.frames.multiview_pool(count)
    if pool is None:
        raise OptionError("temporal_views", f"the head was trained on {view.frames}; multi-view testing "
                          "serves V interleaved uniform:N views from a uniform:N*V pool, so it needs a uniform view")
    return [dataclasses.replace(view, frames=pool, subset=(v, count)) for v in range(count)]


def cached_pool(run: Run, pool: str | None, usable, option: str, what: str, hint: str) -> tuple[str, str]:
    """The cached pool ``pool`` (by default the cache's first one ``usable(policy, text)`` accepts)
    and its part of the protocol's name: empty for the default pool (earlier names stay), else ``-``
    and the pool's name without punctuation (``-stride2``, ``-fps4``), so two pools evaluated into
    one run never share a key or a file. Refused in one line naming the usable pools the cache
    holds; ``option`` may name ``{pool}``."""
    held = [p for p in run.cache.facts.policies if usable(parse_policy(p), p)]
    default = held[0] if held else ""
    pool = pool or default
    if not pool or pool not in held:
        raise FeatcacheError(f"{option.format(pool=pool or '(none)')}: {what} ({', '.join(held) or 'it holds none'}); {hint}")
    return pool, "" if pool == default else "-" + re.sub(r"[^A-Za-z0-9.]+", "", pool)


@dataclasses.dataclass(frozen=True)
class DenseClips(Protocol):
    """SlowFast-style multi-view testing: ``clips`` V clips of the head's N frames at ``rate`` R,
    placed by :meth:`clip_indices` (featcache's own: SlowFast's formula with the rate in the
    video's own frames, train/clips.py), cut from a ``stride:S`` pool (``pool``, default the
    cache's first; a source frame the pool lacks is served by the nearest cached one, their share
    reported as ``clip_frames_rounded``), every clip at every crop, softmax per view, combined.
    Named ``VxCrR`` (``10x3r2``), a release's placement prefixed by its name (``slowfast10x3r8``),
    the pool's name joined when it is not the default. Writes ``views_<split>@...csv``: the
    source frames and crop box of every view scored (``protocol`` featcache, or the release's name)."""
    clips: int = 1
    spatial_views: int = 1
    rate: int = 0
    combine: str = "mean"
    pool: str | None = None
    pool_key: str = ""  # filled by resolve(): the pool's part of the name
    release: ClassVar[str] = ""  # a released protocol's name: keys, files and the views file

    def __post_init__(self):
        check_combine(self.combine)
        crops_of(self.spatial_views)
        if self.rate < 1:
            raise OptionError("clip_rate", f"must be at least 1, got {self.rate} (dense clips need --clip-rate R)")
        if self.clips < 1:
            raise OptionError("temporal_views", f"must be at least 1, got {self.clips}")

    @property
    def name(self) -> str:
        return f"{self.release}{self.clips}x{self.spatial_views}r{self.rate}{self.pool_key}"

    def resolve(self, run: Run) -> DenseClips:
        pool, key = cached_pool(run, self.pool, lambda p, text: isinstance(p, StridePolicy),  # a stride:S pool
                                "--clip-rate", "dense clips are cut from a stride:S pool of the cache",
                                "extract with --frames stride:1,...")
        return dataclasses.replace(self, pool=pool, pool_key=key)

    def clip_indices(self, record: VideoRecord, frames: int) -> list[np.ndarray]:
        """The source frames (each ``frames`` long) of every view of one video."""
        n = record.num_frames
        return [dense_clip_indices(n, frames, self.rate, v, self.clips) for v in range(self.clips)]

    def placed_views(self, records: list[VideoRecord], frames: int) -> list[list[np.ndarray]]:
        """Every video's views (:meth:`clip_indices`); the videos the release's decoder fails
        refused together, in one line naming them and why (SlowFast fails a video it cannot decode)."""
        placed, failed = [], []
        for record in records:
            try:
                placed.append(self.clip_indices(record, frames))
            except ReleaseFails as exc:
                failed.append((record.video_id, str(exc)))
        if failed:
            ids = ", ".join(v for v, _ in failed[:3]) + (", ..." if len(failed) > 3 else "")
            raise FeatcacheError(f"--protocol {self.release}: the release's decoder fails {len(failed)} video(s) "
                                 f"({ids}): {failed[0][1]}")
        return placed

    def crop_box(self, width: int, height: int, size: int, crop: int, short: int) -> str:
        """The crop scored, ``x0 y0 x1 y1`` in the resized frame it is taken from: featcache's own
        cached crops (video/prepare.py ``crop``: the short side resized to ``short``, offsets 0,
        the centre rounded half to even, the margin); a release's in its own resized frame."""
        return box_text(*crop_origin(*resize_to_short_side(width, height, short), size, crop, 3), size)

    def score(self, run: Run, split: str, data: ViewData | None = None) -> Scored | None:
        videos = run.cache.done_videos(split)
        if not videos:
            return None
        policy, crops = parse_policy(self.pool), crops_of(self.spatial_views)
        views = [dataclasses.replace(run.cfg.view, crop=c) for c in crops]
        shape = run.cache.facts.shape
        for view in views:
            view.check(shape)
        layout = run.cfg.view.layout(shape)
        entries, records = [e for e, _ in videos], [r for _, r in videos]
        clips, rounded, wanted_total, placed = [], 0, 0, []
        for entry, record, views_of in zip(entries, records, self.placed_views(records, layout.frames)):
            pos = np.asarray(frame_positions(entry, policy))  # the pool's positions among the cached frames
            source = entry.frame_indices[pos]
            per_video = []
            for v, wanted in enumerate(views_of):
                near, missed = nearest_positions(source, wanted)
                per_video.append(pos[near].tolist())
                rounded, wanted_total = rounded + missed, wanted_total + len(wanted)
                placed += [(record, v, c, wanted, source[near]) for c in crops]
            clips.append(per_video)
        probs = []
        for v in range(len(clips[0])):
            for view in views:
                x = np.empty((len(entries), *layout.shape), dtype=np.float16)  # (videos, T, N', C')
                for i, entry in enumerate(entries):
                    fill_view(x[i], entry, clips[i][v], view, shape)
                probs.append(probabilities(predict(run.head, torch.from_numpy(x), run.cfg.batch_size, run.device),
                                           run.task.multi))
        pre = run.cache.facts.preprocess
        files = {"views": lambda path: self.write_views(path, placed, pre.input_size[-1], pre.resize_short_side)}
        return Scored([r.video_id for r in records], [list(r.labels) for r in records], combined(probs, self.combine),
                      self.combine, len(probs), {"clip_frames_rounded": rounded / wanted_total, "pool": self.pool},
                      files)

    def view_rows(self, placed: list) -> list:
        """The views file's rows: (record, view, crop, source frames asked for, served)."""
        return placed

    def write_views(self, path: str, placed: list, size: int, short: int) -> None:
        """Per scored view: the source frames the protocol asks for, those the cache served, and the
        crop box taken in the resized frame (x0 y0 x1 y1; crop ``size``, the cache's short side ``short``)."""
        import csv

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_id", "protocol", "view", "crop", "source_frames", "served_frames", "crop_box"])
            for record, v, c, wanted, served in self.view_rows(placed):
                width, height = record.displayed_size
                box = self.crop_box(width, height, size, c, short) if width and height else ""
                w.writerow([record.video_id, self.release or "featcache", v, c, " ".join(map(str, wanted)),
                            " ".join(map(str, served)), box])
