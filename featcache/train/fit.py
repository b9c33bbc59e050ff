"""Training from a cache: one head, or a fused group of heads sharing every batch. Evaluation
and the files it writes live in :mod:`featcache.train.evaluate`. Never imports decord or PyAV.

Run directory (RUN_DIR):
    config.yaml        resolved config + cache path/fingerprint + classes + task
    log.jsonl          one line per epoch of this run: train/loss, train/top1, val/loss, val/..., lr, seconds
    curves.png         loss and the selection metric per epoch, train vs val (with matplotlib)
    events.out.tfevents.*, wandb/   with --set log=tensorboard / log=wandb (featcache.train.tracking)
    best.pt, last.pt   checkpoints (best on the val metric; last for --resume, removed once the run
                       has finished unless keep_last: true)
    metrics.json       final flat metrics: val/..., test/..., best_epoch
    confusion_<split>.csv, per_class_<split>.csv   (+ confusion_<split>.png with matplotlib)

A new run never mixes with an old one: without ``resume`` a folder that already holds a run is
refused unless ``overwrite`` is given, and then the old run's files are removed first.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import time
from typing import Callable

import torch
from torch import nn

from featcache.annotations import annotate, check_selection
from featcache.cache.dataset import Task, ViewData, memory_budget
from featcache.cache.stream import StreamedTokens, batches, epoch_order
from featcache.cache.store import open_cache
from featcache.config import FUSION_KEYS, TrainConfig, parse_log, to_dict
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.registry import create_head, head_source
from featcache.train import checkpoint, metrics, tracking
from featcache.train.augment import augment_tokens
from featcache.train.evaluate import evaluate_checkpoint, flat, read_splits
from featcache.train.tracking import TB_FILES, Tracker

# what a run writes; a new run into a folder removes these first
RUN_FILES = ("log.jsonl", "best.pt", "last.pt", "metrics.json", "config.yaml", "confusion_*.csv", "confusion_*.png",
             "per_class_*.csv", "predictions_*.csv", "eval_*.json", "curves.png", TB_FILES, "wandb_id")


def run_training(cache_path: str, cfg: TrainConfig, out_dir: str, resume: bool = False, overwrite: bool = False,
                 show_progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
                 echo: Callable[[str], None] | None = None) -> dict:
    """Train ``cfg.head`` on the cache's train split, select on val, report on test. ``echo``
    gets the lines saying where labels and splits come from and which videos are left out."""
    return train_group(cache_path, [cfg], [out_dir], resume=resume, overwrite=overwrite,
                       show_progress=show_progress, on_epoch=on_epoch, echo=echo)[0]


def previous_run(out_dir: str, resume: bool, overwrite: bool) -> list[str]:
    """The files of a run already in ``out_dir`` that a new run must remove first. Refuses a
    folder that holds a run unless ``resume`` (keep it: nothing to remove) or ``overwrite``,
    so a log never mixes two runs. Writes nothing."""
    old = [name for pattern in RUN_FILES for name in glob.glob(os.path.join(out_dir, pattern))]
    if resume or not old:
        return []
    if not overwrite:
        state = "a finished run" if os.path.exists(os.path.join(out_dir, "metrics.json")) else "an unfinished run"
        raise FeatcacheError(f"--out {out_dir}: holds {state}; use another --out, --resume to continue it, "
                             "or --overwrite to replace it")
    return old


def train_group(cache_path: str, cfgs: list[TrainConfig], out_dirs: list[str], resume: bool = False,
                overwrite: bool = False, show_progress: bool = True, data: dict | None = None,
                on_epoch: Callable[[dict], None] | None = None, echo: Callable[[str], None] | None = None) -> list[dict]:
    """Train several heads in one pass over the data (DINOv2-linear-eval style): every head sees
    the same batches, has its own optimiser, schedule, RNG stream and checkpoints, and the summed
    loss is back-propagated once. Each head's results equal training it alone with the same seed.
    ``data`` (split -> ViewData of the view, already read) avoids reading again; ``on_epoch``
    is called with each finished epoch's log record (of the first head)."""
    if len({c.fusion_key for c in cfgs}) != 1:
        raise ValueError(f"cells of one group must agree on {', '.join(FUSION_KEYS)}")
    for cfg in cfgs:  # a missing logger package stops the run before anything is written
        tracking.require(parse_log(cfg.log))
    # labels and splits: the manifest's, or the store's; val carved from train when asked
    cache = annotate(open_cache(cache_path), cfgs[0].manifest, cfgs[0].val_fraction)
    for line in cache.annotations.summary() if echo else ():
        echo(line)
    view = cfgs[0].view
    view.check(cache.attrs)
    stale = [path for out_dir in out_dirs for path in previous_run(out_dir, resume, overwrite)]
    if not cache.done_records("train"):  # before anything is read
        where = f"--manifest {cfgs[0].manifest}" if cfgs[0].manifest else "the store's annotations"
        raise FeatcacheError(f"{cache_path}: no videos in the train split ({where}); check the manifest's split "
                             "column, or give a training manifest with --manifest M.csv (video_id,label,split)")
    for cfg in cfgs:
        check_selection(cache.annotations, cfg.select)
    data = data or read_splits(cache, view, max_bytes=cfgs[0].view_budget)
    task = _task(cfgs[0], data)
    device = resolve_device(cfgs[0].device)
    heads = []
    for cfg in cfgs:  # each head's RNG stream continues from its own initialisation (see _Member)
        head = _build(cfg, data["train"], task, cache.attrs)
        heads.append((head, torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None))
    for path in stale:  # only now that the data, the task and every head are known to be good
        os.remove(path)
    members = []
    for cfg, out_dir, (head, rng, cuda_rng) in zip(cfgs, out_dirs, heads):
        os.makedirs(out_dir, exist_ok=True)
        meta = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": task.classes,
                "multi_label": task.multi, "config": to_dict(cfg), "head_source": head_source(cfg.head),
                "manifest": cache.annotations.meta(),
                "streamed": [s for s, d in data.items() if isinstance(d.x, StreamedTokens)]}
        _write_config(out_dir, meta)
        members.append(_Member(cfg, head, task, data, device, out_dir, meta, rng, cuda_rng))
    trainer = _GroupTrainer(members, data, task, device)
    if resume:
        trainer.restore()
    try:
        for m in members:
            m.tracker = Tracker(parse_log(m.cfg.log), m.out_dir, m.meta["config"], trainer.start_epoch)
        trainer.fit(show_progress, on_epoch)
        results = []
        for m in members:
            r = evaluate_checkpoint(os.path.join(m.out_dir, "best.pt"), cache, splits=("val", "test"),
                                    out_dir=m.out_dir, data=data)
            r.update(best_epoch=m.best_epoch, params=sum(p.numel() for p in m.head.parameters() if p.requires_grad))
            with open(os.path.join(m.out_dir, "metrics.json"), "w") as f:
                json.dump(r, f, indent=2, sort_keys=True)
            if not m.cfg.keep_last:  # finished: the resumable state is not needed (a sweep cell's would stay)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(m.out_dir, "last.pt"))
            plot_run_curves(m.out_dir, task)
            m.tracker.finish(r)
            results.append(r)
    finally:
        for m in members:
            if m.tracker is not None:
                m.tracker.close()
    return results


def plot_run_curves(out_dir: str, task: Task) -> None:
    """RUN_DIR/curves.png from RUN_DIR/log.jsonl (all epochs, resumed ones included)."""
    from featcache.figures import plot_curves

    with open(os.path.join(out_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f if line.strip()]
    chance = None if task.multi else 1 / len(task.classes)
    plot_curves(os.path.join(out_dir, "curves.png"), log, task.metric, chance, title=os.path.basename(os.path.abspath(out_dir)))


def _task(cfg: TrainConfig, data: dict[str, ViewData]) -> Task:
    labels = [ls for d in data.values() for ls in d.labels]
    classes = sorted({c for ls in labels for c in ls})
    multi = cfg.task == "multi" or (cfg.task == "auto" and any(len(ls) > 1 for ls in labels))
    if not multi and any(not ls for ls in labels):  # multi-label: no label = every class negative
        raise FeatcacheError("some videos have no label; single-label training needs one for every video")
    if not multi and any(len(ls) > 1 for ls in labels):
        raise FeatcacheError("task=single, but some videos have several labels; use task=multi")
    if len(classes) < 2:
        raise FeatcacheError(f"only one class ({classes[0]!r}) in the cache; a classifier needs at least two")
    return Task(classes, multi)


def _build(cfg: TrainConfig, train: ViewData, task: Task, attrs: dict | None = None) -> nn.Module:
    torch.manual_seed(cfg.seed)
    args = {"in_dim": train.x.shape[-1], "num_classes": len(task.classes), "num_frames": train.x.shape[1],
            "grid": tuple(train.grid), "num_prefix_tokens": train.num_prefix_tokens}
    args.update(backbone_args(cfg.head, attrs))
    user = False
    try:
        user = head_source(cfg.head)["kind"] != "builtin"
        head = create_head(cfg.head, **args, **cfg.head_options)
    except Exception as exc:  # a user's constructor may raise anything: one line naming the head
        if not (user or isinstance(exc, (ValueError, TypeError))):
            raise
        what = f"{type(exc).__name__}: {exc}" if user and not isinstance(exc, ValueError) else str(exc)
        message = what if what.startswith("head ") else f"head {cfg.head}: {what}"
        raise FeatcacheError(message) from None
    if user:  # the built-in heads are tested to keep the interface
        check_head_output(cfg.head, head, train.x[:2], len(task.classes))
    if cfg.init:
        checkpoint.init_from(head, cfg.head, cfg.view.as_dict(), cfg.init)
    head.featcache_args = {**args, **cfg.head_options}
    return head


def check_head_output(name: str, head: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """A user's head must map ``(B, T, N, C)`` tokens to ``(B, num_classes)`` logits: tried on
    two videos of the view before training (eval mode, RNG untouched), one line if not."""
    x = x.float()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        was = head.training
        head.eval()
        try:
            out = head(x)
        except Exception as exc:
            raise FeatcacheError(f"head {name}: forward failed on a {tuple(x.shape)} (B, T, N, C) batch of the view: "
                                 f"{type(exc).__name__}: {exc}"[:400]) from None
        finally:
            head.train(was)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (len(x), num_classes):
        raise FeatcacheError(f"head {name}: forward must return (B, num_classes) = {(len(x), num_classes)} logits "
                             f"for a {tuple(x.shape)} (B, T, N, C) batch; it returned {shape}")


def backbone_args(head: str, attrs: dict | None) -> dict:
    """``{"backbone": spec}`` for heads that run frozen blocks of the cached model (rebuilt from
    the cache's provenance), else nothing."""
    from featcache.registry import head_options

    if "backbone" not in head_options(head) or attrs is None:
        return {}
    from featcache.backbone import backbone_spec

    return {"backbone": backbone_spec(attrs)}


def trainable(head: nn.Module) -> dict:
    """The head's state without frozen parts (``frozen_prefixes``: rebuilt, never saved)."""
    frozen = getattr(head, "frozen_prefixes", ())
    return {k: v.detach().cpu() for k, v in head.state_dict().items() if not k.startswith(frozen)}


def _write_config(out_dir: str, meta: dict) -> None:
    import yaml

    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)


class _Member:
    """One head of a group with everything that is its own."""

    def __init__(self, cfg, head, task, data, device, out_dir, meta, rng, cuda_rng):
        self.cfg, self.head, self.out_dir, self.meta = cfg, head.to(device), out_dir, meta
        # the RNG streams this head's dropout draws from: continue from its own initialisation
        self.rng, self.cuda_rng = rng, cuda_rng
        steps = math.ceil(len(data["train"].x) / cfg.batch_size)
        total, warm = cfg.epochs * steps, cfg.warmup_epochs * steps
        self.opt = _optimizer(cfg, head)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, warm, total))
        self.loss_fn = _loss(cfg, task, task.targets(data["train"].labels)).to(device)
        self.amp = device.type == "cuda" and cfg.amp
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler(enabled=self.amp and self.amp_dtype == torch.float16)
        self.best, self.best_epoch, self.stale, self.active = -math.inf, -1, 0, True
        self.tracker = None  # set by train_group once the first epoch is known

    def forward(self, x, y):
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, x.device)
        with torch.autocast(x.device.type, dtype=self.amp_dtype, enabled=self.amp):
            logits = self.head(x)
            loss = self.loss_fn(logits.float(), y)
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state(x.device)
        return loss, logits.detach()

    def step(self) -> None:
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.head.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()

    def state(self, epoch: int) -> dict:
        return {"head": self.cfg.head, "head_args": self.head.featcache_args,
                "state_dict": trainable(self.head), "epoch": epoch, **self.meta}

    def save(self, epoch: int, improved: bool) -> None:
        state = self.state(epoch)
        if improved:
            checkpoint.save(os.path.join(self.out_dir, "best.pt"), **state)
        checkpoint.save(os.path.join(self.out_dir, "last.pt"), **state, optimizer=self.opt.state_dict(),
                        scheduler=self.sched.state_dict(), best=self.best, best_epoch=self.best_epoch,
                        stale=self.stale, rng=self.rng, cuda_rng=self.cuda_rng, active=self.active)

    def restore(self) -> int:
        """Load last.pt; returns the next epoch (0 when there is nothing to resume)."""
        path = os.path.join(self.out_dir, "last.pt")
        if not os.path.exists(path):
            return 0
        ckpt = checkpoint.load(path)
        if ckpt["config"] != self.meta["config"] or ckpt["cache"]["fingerprint"] != self.meta["cache"]["fingerprint"]:
            raise FeatcacheError(f"--resume: {path} was made with another config or cache; use a new --out")
        if ckpt.get("head_source", self.meta["head_source"]) != self.meta["head_source"]:
            raise FeatcacheError(f"--resume: the head's code changed since {path} was saved "
                                 f"({self.meta['head_source'].get('path', self.meta['head_source'].get('module'))}); "
                                 "restore it or use a new --out")
        if (ckpt.get("manifest") or {}).get("sha256") != self.meta["manifest"]["sha256"]:
            raise FeatcacheError(f"--resume: {path} was trained with other labels and splits (another --manifest, "
                                 "or the manifest changed); use a new --out")
        checkpoint.load_trainable(self.head, ckpt["state_dict"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.best, self.best_epoch, self.stale = ckpt["best"], ckpt["best_epoch"], ckpt["stale"]
        self.rng, self.active = ckpt["rng"], ckpt["active"]
        if self.cuda_rng is not None and ckpt.get("cuda_rng") is not None:  # resumed on a GPU again
            self.cuda_rng = ckpt["cuda_rng"]
        return ckpt["epoch"] + 1


class _GroupTrainer:
    def __init__(self, members: list[_Member], data: dict, task: Task, device: torch.device):
        self.members, self.data, self.task, self.device = members, data, task, device
        self.cfg = members[0].cfg  # the fused settings are equal across members
        self.x, self.y = data["train"].x, task.targets(data["train"].labels)
        self.start_epoch = 0

    def restore(self) -> None:
        starts = {m.restore() for m in self.members}
        if len(starts) > 1:
            raise FeatcacheError("--resume: the runs of this group stopped at different epochs; start them anew")
        self.start_epoch = starts.pop()

    def fit(self, show_progress: bool, on_epoch: Callable[[dict], None] | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        heads = ",".join(sorted({m.cfg.head for m in self.members}))
        label = heads if len(self.members) == 1 else f"{len(self.members)} heads ({heads})"
        columns = (TextColumn(f"train {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, disable=not show_progress) as bar:
            job = bar.add_task("train", total=self.cfg.epochs, completed=self.start_epoch, status="")
            for epoch in range(self.start_epoch, self.cfg.epochs):
                if not any(m.active for m in self.members):
                    break
                records = self._epoch(epoch)
                first = records[0]
                if on_epoch is not None:
                    on_epoch(first)
                bar.update(job, advance=1, status=" ".join(
                    f"{k} {v:.3f}" for k, v in first.items() if k in ("train/loss", f"val/{self.task.metric}")))

    def _epoch(self, epoch: int) -> list[dict]:
        order = epoch_order(len(self.x), self.cfg.seed, epoch, self.cfg.shuffle_window)  # in memory or streamed
        active = [m for m in self.members if m.active]
        stats = {id(m): [0.0, 0, time.perf_counter()] for m in active}  # loss sum, correct, start
        for m in active:
            m.head.train()
        budget = self.cfg.view_budget or memory_budget()
        for step, (idx, x) in enumerate(batches(self.x, order, self.cfg.batch_size, budget)):
            i = step * self.cfg.batch_size
            x = x.to(self.device, non_blocking=True).float()
            if self.cfg.augment != "none":  # one draw per batch, shared by every head of the group
                g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch * 10_007 + i)
                x = augment_tokens(x.cpu(), self.data["train"].num_prefix_tokens, self.data["train"].grid,
                                   self.cfg.augment, g).to(self.device)
            y = self.y[idx].to(self.device, non_blocking=True)
            for m in active:
                m.opt.zero_grad(set_to_none=True)
            total = 0.0
            for m in active:
                loss, logits = m.forward(x, y)
                total = total + m.scaler.scale(loss)
                stats[id(m)][0] += float(loss.detach()) * len(idx)
                if not self.task.multi:
                    stats[id(m)][1] += int((logits.argmax(1) == y).sum())
            total.backward()  # one backward: the heads share no parameters
            for m in active:
                m.step()
        val = self._validate(active)
        return [self._finish_epoch(m, epoch, *stats[id(m)], val[id(m)]) for m in active]

    def _validate(self, active: list[_Member]) -> dict[int, dict]:
        """Selection metrics of every active head on val; each val batch is moved once for all."""
        val = self.data["val"]
        if not len(val.video_ids):
            return {id(m): {} for m in active}
        logits = {id(m): [] for m in active}
        for m in active:
            m.head.eval()
        with torch.inference_mode():
            for i in range(0, len(val.x), self.cfg.batch_size):
                x = val.x[i:i + self.cfg.batch_size].to(self.device, non_blocking=True).float()
                for m in active:
                    logits[id(m)].append(m.head(x).float().cpu())
        y = self.task.targets(val.labels)
        out = {}
        for m in active:  # the selection metrics and the loss the head is trained on (train vs val curves)
            scores = torch.cat(logits[id(m)])
            out[id(m)] = flat(metrics.selection(scores.numpy(), y.numpy(), self.task.multi), "val")
            out[id(m)]["val/loss"] = float(m.loss_fn(scores.to(self.device), y.to(self.device)))
        return out

    def _finish_epoch(self, m: _Member, epoch: int, loss_sum: float, correct: int, start: float, val: dict) -> dict:
        record = {"epoch": epoch, "train/loss": loss_sum / len(self.x), "lr": m.sched.get_last_lr()[0]}
        if not self.task.multi:
            record["train/top1"] = correct / len(self.x)
        record.update(val)
        value = epoch if m.cfg.select == "last" else record.get(f"val/{self.task.metric}", epoch)
        improved = value > m.best
        if improved:
            m.best, m.best_epoch, m.stale = value, epoch, 0
        else:
            m.stale += 1
        if m.cfg.early_stop and m.stale >= m.cfg.early_stop:
            m.active = False
        record["seconds"] = time.perf_counter() - start  # in a group: the shared pass's wall time
        m.save(epoch, improved)
        with open(os.path.join(m.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if m.tracker is not None:
            m.tracker.epoch(record)
        return record


def _optimizer(cfg: TrainConfig, head: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in head.parameters() if p.requires_grad]  # frozen parts never enter the optimiser
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # biases, norms, tokens
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _lr_factor(step: int, warmup: float, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1.0, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loss(cfg: TrainConfig, task: Task, y: torch.Tensor) -> nn.Module:
    if not task.multi:
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    pos_weight = None
    if cfg.pos_weight == "auto":
        pos = y.sum(0)
        pos_weight = (len(y) - pos) / pos.clamp(min=1)
    elif cfg.pos_weight is not None:
        pos_weight = torch.full((len(task.classes),), float(cfg.pos_weight))
    return nn.BCEWithLogitsLoss(pos_weight=pos_weight)


