"""Sliding-window evaluation as a protocol (:class:`Windows`): every window of the head's length
over a dense pool, scored, then max or mean per video; the last window aligned to the end of the
pool so every frame is scored (train/clips.py ``window_starts``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from featcache.cache.dataset import ViewData, fill_view, frame_positions
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.view import parse_policy
from featcache.train.clips import coverage, window_starts
from featcache.train.protocols import Protocol, Run, Scored, cached_pool, predict, probabilities
from featcache.video.select import uniform_indices


@dataclasses.dataclass(frozen=True)
class Windows(Protocol):
    """Sliding windows (the Charades video-transformer study's protocol): windows of the head's own
    length W over a dense pool (``fps:F``, ``stride:S`` or a clip cache's clips; the cache's first
    by default), starting every ``stride`` pool frames (default W: no overlap), plus one aligned to
    the end when the stride leaves a tail (train/clips.py ``window_starts``; per video in
    ``windows_<split>@...csv``, the mean coverage as ``window_coverage``); each window scored
    (softmax/sigmoid), then the video's score is their ``max`` or ``mean``. A video shorter than W
    is one window of repeated frames (uniform:W of its pool). Named ``wWsS<aggregate>``."""
    width: int = 0
    stride: int = 0
    aggregate: str = "max"
    pool: str | None = None
    pool_key: str = ""

    def __post_init__(self):
        if self.aggregate not in ("max", "mean"):
            raise OptionError("aggregate", f"expected max or mean, got {self.aggregate!r}")
        if self.stride < 0:
            raise OptionError("stride", f"must be at least 1, got {self.stride}")

    @property
    def name(self) -> str:
        return f"w{self.width}s{self.stride}{self.aggregate}{self.pool_key}"

    def resolve(self, run: Run) -> Windows:
        width = run.cfg.view.frames.fixed_length
        if self.width and self.width != width:
            raise FeatcacheError(f"--window {self.width}: the head was trained on {width}-frame clips "
                                 f"({run.cfg.view.frames}); windows must have its length (--window {width})")
        # a clip cache's clips (clips:N, windows:W/S@fps:F) are windows too: one clip per window step
        pool, key = cached_pool(run, self.pool, lambda p, text: not p.fixed or p.unit == "clip",
                                "--pool {pool}", "sliding windows run over a dense pool of the cache",
                                "extract with --frames fps:F or stride:S")
        return dataclasses.replace(self, width=width, stride=self.stride or width, pool=pool, pool_key=key)

    def score(self, run: Run, split: str, data: ViewData | None = None) -> Scored | None:
        videos = run.cache.done_videos(split)
        if not videos:
            return None
        shape = run.cache.facts.shape
        policy, width, layout = parse_policy(self.pool), self.width, run.cfg.view.layout(shape)
        video_scores, placed = [], []
        for entry, record in videos:
            positions = np.asarray(frame_positions(entry, policy))
            if len(positions) < width:
                windows, starts, tail = [positions[uniform_indices(len(positions), width)]], [0], None
            else:  # every stride, and one more aligned to the end when the stride leaves a tail
                starts, tail = window_starts(len(positions), width, self.stride)
                windows = [positions[s:s + width] for s in starts]
            placed.append((record.video_id, len(positions), starts, tail,
                           coverage(len(positions), width, starts) if len(positions) >= width else 1.0))
            x = np.empty((len(windows), *layout.shape), dtype=np.float16)  # (windows, T, N', C')
            for i, window in enumerate(windows):
                fill_view(x[i], entry, window.tolist(), run.cfg.view, shape)
            probs = probabilities(predict(run.head, torch.from_numpy(x), run.cfg.batch_size, run.device), run.task.multi)
            video_scores.append(probs.max(axis=0) if self.aggregate == "max" else probs.mean(axis=0))
        extras = {"pool": self.pool, "window_coverage": float(np.mean([p[4] for p in placed]))}
        return Scored([r.video_id for _, r in videos], [list(r.labels) for _, r in videos], np.stack(video_scores),
                      extras=extras, files={"windows": lambda path: write_windows(path, self.pool, width, placed)})


def write_windows(path: str, pool: str, width: int, placed: list) -> None:
    """Per video: the pool, its length in frames, the window starts (pool positions), the start of
    the window added at the end (empty when the stride leaves no tail) and the coverage."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "pool", "pool_frames", "window", "starts", "tail_start", "coverage"])
        for video_id, length, starts, tail, cov in placed:
            w.writerow([video_id, pool, length, width, " ".join(map(str, starts)), "" if tail is None else tail,
                        f"{cov:.6f}"])
