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
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from featcache.data.annotations import annotate
from featcache.cache.dataset import fill_view
from featcache.cache.store import Cache, open_cache
from featcache.spec.config import TrainConfig, to_dict
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.heads.registry import create_head
from featcache.train import checkpoint, metrics
from featcache.train.augment import augment_tokens
from featcache.train.evaluate import predict
from featcache.train.optim import lr_factor, optimizer
from featcache.train.rundir import previous_run, write_config
from featcache.spec.view import View

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
    layout = view.layout(cache.attrs)
    pools = []
    for record in cache.done_records(split):
        entry = cache.video(record["video_id"])
        positions = list(entry.policies[str(view.frames)])
        out = np.empty((len(positions), layout.num_tokens, layout.dim), dtype=np.float16)
        fill_view(out, entry, positions, view, cache.attrs)
        pools.append(DensePool(out, entry.frame_indices[positions], record["source"]["num_frames"]))
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


def run_pretrain(cache_path: str, cfg: TrainConfig, out_dir: str, task_name: str = "prp", overwrite: bool = False,
                 show_progress: bool = True, task: PRP = PRP(), echo=None) -> dict:
    """Pre-train ``cfg.head`` on the pretext task over the train split's dense pools; select on
    the val split's rate accuracy (fixed clips); write a run directory like ``train``'s."""
    if task_name not in TASKS:
        raise FeatcacheError(f"--task: unknown {task_name!r}; expected one of {', '.join(TASKS)}")
    cache = annotate(open_cache(cache_path), cfg.manifest, cfg.val_fraction)  # labels and splits: the manifest's, or the store's
    for line in cache.annotations.summary() if echo else ():
        echo(line)
    cfg.view.check(cache.attrs, dense=True)
    if cfg.view.frames.fixed:
        raise FeatcacheError(f"view {cfg.view.frames}: PRP samples clips at several rates from a dense pool; "
                             "give --view stride:1 (extract with --frames stride:1)")
    stale = previous_run(out_dir, resume=False, overwrite=overwrite)
    train, val = read_pools(cache, cfg.view, "train"), read_pools(cache, cfg.view, "val")
    if not train:
        raise FeatcacheError(f"{cache_path}: no videos in the train split")
    for path in stale:
        os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    layout = cfg.view.layout(cache.attrs)
    torch.manual_seed(cfg.seed)
    args = {"in_dim": layout.dim, "num_classes": len(task.rates), "num_frames": task.frames, "grid": layout.grid,
            "num_prefix_tokens": layout.num_prefix_tokens}
    try:
        head = create_head(cfg.head, **args, **cfg.head_options)
    except (ValueError, TypeError) as exc:
        raise FeatcacheError(f"head {cfg.head}: {exc}") from None
    meta = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": task.classes,
            "multi_label": False, "config": to_dict(cfg), "manifest": cache.annotations.meta(), "pretext": {"task": task_name, **asdict(task)}}
    write_config(out_dir, meta)
    device = resolve_device(cfg.device)
    head.to(device)
    val_x, val_y, val_rounded = make_clips(val, np.random.default_rng(cfg.seed + 1), task) if val else (None, None, 0)
    best, best_epoch, rounded = -math.inf, -1, 0
    steps = math.ceil(len(train) * task.clips_per_video / cfg.batch_size)
    opt = optimizer(cfg, head)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup_epochs * steps, cfg.epochs * steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=task.label_smoothing)
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        x, y, r = make_clips(train, np.random.default_rng(cfg.seed * 100_003 + epoch), task)
        rounded += r
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        head.train()
        total, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb, yb = x[idx].float(), y[idx].to(device)
            if cfg.augment != "none":
                g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 10_007 + i)
                xb = augment_tokens(xb, layout.num_prefix_tokens, layout.grid, cfg.augment, g)
            xb = xb.to(device)
            logits = head(xb)
            loss = loss_fn(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        record = {"epoch": epoch, "train/loss": total / len(x), "train/top1": correct / len(x),
                  "lr": sched.get_last_lr()[0]}
        if val_x is not None:
            record.update({f"val/{k}": v for k, v in _scores(head, val_x, val_y, cfg.batch_size, device).items()})
        value = record.get("val/top1", epoch)
        state = {"head": cfg.head, "head_args": {**args, **cfg.head_options}, "epoch": epoch,
                 "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, **meta}
        if value > best:
            best, best_epoch = value, epoch
            checkpoint.save(os.path.join(out_dir, "best.pt"), **state)
        record["seconds"] = time.perf_counter() - start
        with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if show_progress:
            print(f"pretrain {cfg.head} epoch {epoch + 1}/{cfg.epochs}: loss {record['train/loss']:.3f}"
                  + (f", val rate accuracy {record['val/top1']:.3f}" if "val/top1" in record else ""), flush=True)
    results = {"best_epoch": best_epoch, "params": sum(p.numel() for p in head.parameters()),
               "prp/train_clips": len(train) * task.clips_per_video * cfg.epochs,
               "prp/train_clips_rounded": rounded, "prp/val_clips": 0 if val_x is None else len(val_x),
               "prp/val_clips_rounded": val_rounded}
    if val_x is not None:
        head.load_state_dict(checkpoint.load(os.path.join(out_dir, "best.pt"))["state_dict"])
        results.update({f"val/{k}": v for k, v in _scores(head, val_x, val_y, cfg.batch_size, device).items()})
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    from featcache.train.figures import plot_curves

    with open(os.path.join(out_dir, "log.jsonl")) as f:  # curves.png: loss and rate accuracy per epoch
        plot_curves(os.path.join(out_dir, "curves.png"), [json.loads(line) for line in f], "top1", 1 / len(task.rates),
                    title=f"{os.path.basename(os.path.abspath(out_dir))}: {task_name} pre-training")
    return results


def _scores(head: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> dict:
    """Rate accuracy (top-1, top-5) of the head on fixed clips."""
    return metrics.selection(predict(head, x, batch_size, device), y.numpy(), multi=False)
