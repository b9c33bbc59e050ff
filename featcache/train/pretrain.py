"""Self-supervised pre-training from a dense frame pool: AdViSe's playback-rate perception (PRP).

A clip of 8 frames is sampled from a video at one of the rates {1, 2, 4, 8}; the head learns to
tell the rate. Frame tokens do not depend on the rate, so a ``stride:1`` pool cached once serves
every rate, start and jitter. Conventions of the released code (JingwWu/advise-video-ssl):

- rates {1, 2, 4, 8}, 8 frames per clip, base stride 2, jitter +-20 %, 4 clips per video per
  epoch (``configs/pretrain/AdViSe.yaml`` L11-20, L55-57);
- frame indices ``floor(linspace(s, s + 16 r j, 8, endpoint=False)) mod L`` with the start
  ``s`` in ``[0, L - 16]`` (``datasets/sampling.py`` L83-87, L116-136): gaps of 1.6-19.2 source
  frames, wrapping past the end;
- cross-entropy with label smoothing 0.05 (``tools/train.py`` L98); video labels are unused.

A source frame the pool does not hold (a ``stride:S`` pool with S > 1) is rounded to the nearest
cached frame; how many clips needed rounding is recorded in ``metrics.json``. Per-clip colour
jitter and random-resized crops cannot be replayed from tokens (see docs/training.md).

Training runs on the loop of ``featcache train`` (:mod:`featcache.train.loop`) with
:class:`ClipBatches` as its batches source: what differs is only which clips an epoch holds, the
fixed val clips and the rate classes; resume, tracking, early stop and fused groups are the loop's.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from featcache.cache.dataset import fill_view
from featcache.cache.store import Cache, open_cache
from featcache.data.annotations import annotate
from featcache.device import resolve_device
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.config import BatchConfig, HeadConfig, TrainConfig, parse_log
from featcache.spec.view import View
from featcache.train import checkpoint, metrics, tracking
from featcache.train.evaluate import predict
from featcache.train.fit import build_head, head_args
from featcache.train.loop import Member, run_group
from featcache.train.meta import EpochRecord, Pretext, run_meta
from featcache.train.rundir import checkpoint_path, previous_run, write_config

TASKS = ("prp",)


@dataclass(frozen=True)
class PRP:
    """The pretext task's sampling, as AdViSe configures it."""

    rates: tuple[int, ...] = (1, 2, 4, 8)
    frames: int = 8
    base_stride: float = 2.0
    jitter: float = 0.2
    clips_per_video: int = 4
    label_smoothing: float = 0.05

    @property
    def classes(self) -> list[str]:
        return [f"rate{r}" for r in self.rates]


def prp_indices(num_frames: int, start: int, rate: int, jitter: float, task: PRP = PRP()) -> np.ndarray:
    """Source frame indices of one clip (``datasets/sampling.py``): 8 frames over
    ``frames * base_stride * rate * jitter`` source frames from ``start``, wrapping at the end."""
    span = task.frames * task.base_stride * rate * jitter
    return np.floor(np.linspace(start, start + span, task.frames, endpoint=False)).astype(np.int64) % num_frames


def sample_clip(rng: np.random.Generator, num_frames: int, task: PRP = PRP()) -> tuple[np.ndarray, int]:
    """(source indices, rate class) of a random clip."""
    label = int(rng.integers(len(task.rates)))
    jitter = rng.uniform(1 - task.jitter, 1 + task.jitter)
    start = int(rng.integers(0, max(1, num_frames - int(task.frames * task.base_stride) + 1)))
    return prp_indices(num_frames, start, task.rates[label], jitter, task), label


@dataclass
class DensePool:
    """One video's dense pool, the view applied: tokens (T_pool, N, C) float16."""

    tokens: np.ndarray
    frame_indices: np.ndarray  # source frame of each pool position
    num_frames: int


def read_pools(cache: Cache, view: View, split: str) -> list[DensePool]:
    shape = cache.facts.shape
    layout = view.layout(shape)
    pools = []
    for entry in cache.done_entries(split):
        positions = list(entry.policies[str(view.frames)])
        out = np.empty((len(positions), layout.num_tokens, layout.dim), dtype=np.float16)
        fill_view(out, entry, positions, view, shape)
        pools.append(DensePool(out, entry.frame_indices[positions], entry.facts.num_frames))
    return pools


def make_clips(pools: list[DensePool], rng: np.random.Generator, task: PRP) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Clips (M, frames, N, C), rate labels (M,), and how many clips had a frame rounded to the
    nearest cached one."""
    xs, ys, rounded = [], [], 0
    for pool in pools:
        for _ in range(task.clips_per_video):
            wanted, label = sample_clip(rng, pool.num_frames, task)
            pos = np.clip(np.searchsorted(pool.frame_indices, wanted), 1, len(pool.frame_indices) - 1)
            left, right = pool.frame_indices[pos - 1], pool.frame_indices[pos]
            pos = np.where(np.abs(wanted - left) <= np.abs(right - wanted), pos - 1, pos)
            if len(pool.frame_indices) == 1:
                pos = np.zeros_like(pos)
            rounded += int(np.any(pool.frame_indices[pos] != wanted))
            xs.append(pool.tokens[pos])
            ys.append(label)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long), rounded


class ClipBatches:
    """The pretext task as a batches source of the training loop
    (:class:`featcache.train.loop.Batches`): every epoch fresh clips of the train pools
    (``clips_per_video`` each, from ``seed * 100003 + epoch``), shuffled by a generator of the same
    seed; val a fixed set of clips (from ``seed + 1``); the rate classes as targets."""

    multi = False

    def __init__(self, batch: BatchConfig, train: list[DensePool], val: list[DensePool], layout, task: PRP, name: str):
        self.cfg, self.pools, self.task = batch, train, task
        self.classes, self.title = task.classes, f": {name} pre-training"
        self.num_prefix_tokens, self.grid = layout.num_prefix_tokens, layout.grid
        self.val_x, self.val_y, self.val_rounded = make_clips(val, np.random.default_rng(batch.seed + 1), task) \
            if val else (None, None, 0)
        self.rounded = 0  # train clips so far with a frame rounded to the nearest cached one

    def __len__(self) -> int:
        return len(self.pools) * self.task.clips_per_video

    def epoch(self, epoch: int):
        seed = self.cfg.seed * 100_003 + epoch
        x, y, rounded = make_clips(self.pools, np.random.default_rng(seed), self.task)
        self.rounded += rounded
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        for i in range(0, len(order), self.cfg.batch_size):
            idx = order[i:i + self.cfg.batch_size]
            yield x[idx], y[idx]

    def val(self, batch_size: int):
        if self.val_x is None:
            return None
        return (self.val_x[i:i + batch_size] for i in range(0, len(self.val_x), batch_size)), self.val_y

    def loss(self, head: HeadConfig) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.task.label_smoothing)  # the released recipe's, not the head's

    def state_dict(self) -> dict:
        return {"rounded": self.rounded}

    def load_state_dict(self, state: dict) -> None:
        self.rounded = int(state.get("rounded", 0))


def run_pretrain(cache_path: str, cfg: TrainConfig, out_dir: str, task_name: str = "prp", overwrite: bool = False,
                 show_progress: bool = True, task: PRP = PRP(), echo=None, resume: bool = False) -> dict:
    """Pre-train ``cfg.head`` on the pretext task over the train split's dense pools; select on
    the val split's rate accuracy (fixed clips); write a run directory like ``train``'s."""
    return pretrain_group(cache_path, cfg.batch, [cfg.head_config], [out_dir], task_name, overwrite=overwrite,
                          show_progress=show_progress, task=task, echo=echo, resume=resume)[0]


def pretrain_group(cache_path: str, batch: BatchConfig, heads: list[HeadConfig], out_dirs: list[str],
                   task_name: str = "prp", overwrite: bool = False, show_progress: bool = True, task: PRP = PRP(),
                   echo=None, resume: bool = False) -> list[dict]:
    """Pre-train several heads on the same clips of ``batch`` in one pass (the training loop's
    fused group: each equals its run alone)."""
    if task_name not in TASKS:
        raise OptionError("task", f"unknown {task_name!r}; expected one of {', '.join(TASKS)}")
    cfgs = [TrainConfig.of(batch, h) for h in heads]  # each run's whole config (its config.yaml)
    for h in heads:  # a missing logger package stops the run before anything is written
        tracking.require(parse_log(h.log))
    cache = annotate(open_cache(cache_path), batch.manifest, batch.val_fraction)  # labels and splits: the manifest's, or the store's
    for line in cache.annotations.summary() if echo else ():
        echo(line)
    view = batch.view
    facts = cache.facts
    view.check(facts.shape, dense=True)
    if view.frames.fixed:
        raise FeatcacheError(f"view {view.frames}: PRP samples clips at several rates from a dense pool; "
                             "give --view stride:1 (extract with --frames stride:1)")
    stale = [path for out_dir in out_dirs for path in previous_run(out_dir, resume, overwrite)]
    train, val = read_pools(cache, view, "train"), read_pools(cache, view, "val")
    if not train:
        raise FeatcacheError(f"{cache_path}: no videos in the train split")
    layout = view.layout(facts.shape)
    device = resolve_device(batch.device)
    sample = torch.zeros(2, task.frames, layout.num_tokens, layout.dim)  # a user's head is tried on clips of this shape
    built = [build_head(c, head_args(c, layout.dim, len(task.rates), task.frames, layout.grid, layout.num_prefix_tokens,
                                     facts), sample, device) for c in cfgs]
    for path in stale:
        os.remove(path)
    source = ClipBatches(batch, train, val, layout, task, task_name)
    members = []
    for c, out_dir, b in zip(cfgs, out_dirs, built):
        os.makedirs(out_dir, exist_ok=True)
        meta = run_meta(cache, task.classes, False, c, pretext=Pretext(name=task_name, extra=asdict(task)))
        write_config(out_dir, meta)
        members.append(Member(c, b, source, device, out_dir, meta))

    def evaluate(m: Member) -> dict:
        results = {"prp/train_clips": len(source) * batch.epochs, "prp/train_clips_rounded": source.rounded,
                   "prp/val_clips": 0 if source.val_x is None else len(source.val_x),
                   "prp/val_clips_rounded": source.val_rounded}
        if source.val_x is not None:  # the rate accuracy of the selected epoch
            checkpoint.load_trainable(m.head, checkpoint.read(checkpoint_path(m.out_dir, "best")).state_dict)
            scores = predict(m.head, source.val_x, batch.batch_size, device)
            results.update({f"val/{k}": v for k, v in metrics.selection(scores, source.val_y.numpy(), multi=False).items()})
        return results

    label = ",".join(sorted({h.head for h in heads}))

    def progress(record: dict) -> None:  # one line per epoch (the group's first head)
        epoch = EpochRecord.from_json(record)
        values, accuracy = epoch.values, epoch.values.get("val/top1")
        print(f"pretrain {label} epoch {epoch.epoch + 1}/{batch.epochs}: loss {values.get('train/loss'):.3f}"
              + (f", val rate accuracy {accuracy:.3f}" if accuracy is not None else ""), flush=True)

    return run_group(batch, members, source, device, evaluate, resume=resume, show_progress=False,
                     on_epoch=progress if show_progress else None)
