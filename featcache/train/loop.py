"""The training loop of every trained head: ``featcache train``, each fused group of an ``ablate``
sweep, and ``featcache pretrain``.

A group of heads shares every batch (DINOv2-linear-eval style): each head has its own optimiser,
schedule, RNG stream, selection and checkpoints, and the summed loss is back-propagated once. What
the heads learn from comes from a *batches source* (:class:`Batches`): the labelled videos of a
cached view (``featcache.train.fit.ViewBatches``) or a pretext task's clips
(``featcache.train.pretrain.ClipBatches``). The loop owns the rest, the same for all: warm-up and
cosine schedule, gradient clipping, AMP on CUDA, token augmentation, selection on val, early stop,
best.pt and last.pt, ``--resume``, log.jsonl, tracking (``--set log=...``), metrics.json and
curves.png (written through :mod:`featcache.train.rundir`).

Long module: the member (one head's optimiser, checkpoints, selection) and the group loop that
drives members over shared batches change together.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import nn

from featcache.errors import FeatcacheError
from featcache.spec.config import BatchConfig, HeadConfig, TrainConfig, parse_log
from featcache.train import checkpoint, metrics, rundir
from featcache.train.augment import augment_tokens
from featcache.train.meta import Checkpoint, ResumeState, RunMeta
from featcache.train.optim import lr_factor, optimizer
from featcache.train.tracking import Tracker


class Batches(Protocol):
    """What a group of heads trains on. Batches are ``(x, y)``: tokens ``(B, T, N, C)`` on the
    CPU (any dtype; the loop moves them) and targets (class indices, or multi-hot rows)."""

    classes: list[str]
    multi: bool  # multi-label: sigmoid scores, mAP selects; else softmax, top-1 selects
    num_prefix_tokens: int  # the token layout, for augmentation
    grid: tuple[int, int]
    title: str  # after the run's name in curves.png

    def __len__(self) -> int: ...  # training samples per epoch
    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...  # its batches, in order
    def val(self, batch_size: int) -> tuple[Iterator[torch.Tensor], torch.Tensor] | None: ...  # val (x batches, y)
    def loss(self, head: HeadConfig) -> nn.Module: ...  # the loss one head trains on
    def state_dict(self) -> dict: ...  # saved in last.pt, restored on --resume
    def load_state_dict(self, state: dict) -> None: ...


def selection_metric(source: Batches) -> str:
    return "mAP" if source.multi else "top1"


@dataclass
class Built:
    """A head just built, with the RNG streams as they stood right after its initialisation (its
    dropout draws continue from them, so fused and alone give the same results)."""

    head: nn.Module
    rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None

    @classmethod
    def now(cls, head: nn.Module, device: torch.device | None = None) -> "Built":
        cuda = device is not None and device.type == "cuda"
        return cls(head, torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)


def trainable(head: nn.Module) -> dict:
    """The head's state without frozen parts (``frozen_prefixes``: rebuilt, never saved)."""
    frozen = getattr(head, "frozen_prefixes", ())
    return {k: v.detach().cpu() for k, v in head.state_dict().items() if not k.startswith(frozen)}


class Member:
    """One head of a group with everything that is its own; ``cfg`` is its run's whole config
    (its :class:`HeadConfig` on the group's :class:`BatchConfig`)."""

    def __init__(self, cfg: TrainConfig, built: Built, source: Batches, device: torch.device, out_dir: str,
                 meta: RunMeta):
        self.cfg, self.head, self.out_dir, self.meta = cfg, built.head.to(device), out_dir, meta
        cuda_rng = built.cuda_rng
        if device.type == "cuda" and cuda_rng is None:
            cuda_rng = torch.cuda.get_rng_state(device)
        # the RNG streams this head's dropout draws from: continue from its own initialisation
        self.rng, self.cuda_rng = built.rng, cuda_rng
        steps = math.ceil(len(source) / cfg.batch_size)
        total, warm = cfg.epochs * steps, cfg.warmup_epochs * steps
        self.opt = optimizer(cfg, self.head)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, warm, total))
        self.loss_fn = source.loss(cfg.head_config).to(device)
        self.amp = device.type == "cuda" and cfg.amp
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler(enabled=self.amp and self.amp_dtype == torch.float16)
        self.best, self.best_epoch, self.stale, self.active = (-math.inf, -math.inf), -1, 0, True
        self.diverged = ""  # why this head stopped: its training loss became NaN or infinite
        self.tracker = None  # set by run_group once the first epoch is known

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

    def state(self, epoch: int) -> Checkpoint:
        return Checkpoint(self.cfg.head, self.head.featcache_args, trainable(self.head), epoch, self.meta)

    def save(self, epoch: int, improved: bool, source_state: dict) -> None:
        state = self.state(epoch)
        if improved:
            checkpoint.save(rundir.checkpoint_path(self.out_dir, "best"), **state.to_json())
        resume = ResumeState(self.opt.state_dict(), self.sched.state_dict(), self.best, self.best_epoch, self.stale,
                             self.rng, self.cuda_rng, self.active, source_state)
        checkpoint.save(rundir.checkpoint_path(self.out_dir, "last"), **state.to_json(), **resume.to_json())

    def restore(self) -> tuple[int, dict]:
        """Load last.pt; returns the next epoch (0 when there is nothing to resume) and the
        batches source's state saved with it."""
        path = rundir.checkpoint_path(self.out_dir, "last")
        if not os.path.exists(path):
            return 0, {}
        ckpt = checkpoint.read(path)
        saved, meta = ckpt.meta, self.meta
        if saved.config != meta.config or saved.fingerprint != meta.fingerprint:
            raise FeatcacheError(f"--resume: {path} was made with another config or cache; use a new --out")
        if saved.head_source is not None and saved.head_source != meta.head_source:
            raise FeatcacheError(f"--resume: the head's code changed since {path} was saved "
                                 f"({meta.source().where or None}); restore it or use a new --out")
        if saved.manifest_sha256 != meta.manifest_sha256:
            raise FeatcacheError(f"--resume: {path} was trained with other labels and splits (another --manifest, "
                                 "or the manifest changed); use a new --out")
        resume = ckpt.resume_state
        if resume is None:
            raise FeatcacheError(f"--resume: {path} holds no resume state; use a new --out")
        checkpoint.load_trainable(self.head, ckpt.state_dict)
        self.opt.load_state_dict(resume.optimizer)
        self.sched.load_state_dict(resume.scheduler)
        self.best, self.best_epoch, self.stale = resume.best, resume.best_epoch, resume.stale
        if not isinstance(self.best, (tuple, list)):  # a last.pt saved before ties were broken on val loss
            self.best = (self.best, -math.inf)
        self.best = tuple(self.best)
        self.rng, self.active = resume.rng, resume.active
        if self.cuda_rng is not None and resume.cuda_rng is not None:  # resumed on a GPU again
            self.cuda_rng = resume.cuda_rng
        return ckpt.epoch + 1, resume.batches or {}


def run_group(batch: BatchConfig, members: list[Member], source: Batches, device: torch.device,
              evaluate: Callable[[Member], dict], resume: bool = False, show_progress: bool = True,
              on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train the group on the batches of ``batch`` (continuing from last.pt with ``resume``), then
    per head: ``evaluate(m)`` (its best.pt) plus ``best_epoch`` and ``params`` into metrics.json,
    last.pt dropped unless ``keep_last``, curves.png. ``on_epoch`` gets each finished epoch's record
    of the first head."""
    trainer = GroupTrainer(batch, members, source, device)
    if resume:
        trainer.restore()
    try:
        for m in members:
            m.tracker = Tracker(parse_log(m.cfg.log), m.out_dir, m.meta.config, trainer.start_epoch)
        trainer.fit(show_progress, on_epoch)
        results = []
        for m in members:
            if m.diverged:
                continue
            r = evaluate(m)
            r.update(best_epoch=m.best_epoch, params=sum(p.numel() for p in m.head.parameters() if p.requires_grad))
            rundir.write_metrics(m.out_dir, r)
            if not m.cfg.keep_last:  # finished: the resumable state is not needed (a sweep cell's would stay)
                rundir.remove_last(m.out_dir)
            plot_run_curves(m.out_dir, source)
            m.tracker.finish(r)
            results.append(r)
    finally:
        for m in members:
            if m.tracker is not None:
                m.tracker.close()
    diverged = [m for m in members if m.diverged]
    if diverged:  # after the others were evaluated: their results are written
        raise FeatcacheError("; ".join(f"{m.out_dir}: {m.diverged}" for m in diverged))
    return results


def plot_run_curves(out_dir: str, source: Batches) -> None:
    """RUN_DIR/curves.png from RUN_DIR/log.jsonl (all epochs, resumed ones included)."""
    from featcache.train.figures import plot_curves

    chance = None if source.multi else 1 / len(source.classes)
    plot_curves(rundir.curves_path(out_dir), rundir.read_log(out_dir), selection_metric(source), chance,
                title=os.path.basename(os.path.abspath(out_dir)) + source.title)


class GroupTrainer:
    def __init__(self, batch: BatchConfig, members: list[Member], source: Batches, device: torch.device):
        if any(m.cfg.batch != batch for m in members):  # a caller's bug: the group's heads must share its batches
            raise ValueError("every member of a group must train on the group's BatchConfig")
        self.members, self.source, self.device = members, source, device
        self.batch = batch  # the settings of the shared pass
        self.metric = selection_metric(source)
        self.start_epoch = 0

    def restore(self) -> None:
        restored = [m.restore() for m in self.members]
        starts = {epoch for epoch, _ in restored}
        if len(starts) > 1:
            raise FeatcacheError("--resume: the runs of this group stopped at different epochs; start them anew")
        self.start_epoch = starts.pop()
        if self.start_epoch:
            self.source.load_state_dict(restored[0][1])

    def fit(self, show_progress: bool, on_epoch: Callable[[dict], None] | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from featcache.progress import progress

        heads = ",".join(sorted({m.cfg.head for m in self.members}))
        label = heads if len(self.members) == 1 else f"{len(self.members)} heads ({heads})"
        columns = (TextColumn(f"train {label}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        # where stdout is no terminal (a Slurm log, CI, a pipe): one plain line per epoch, never a bar cut at 80 columns
        with progress(f"train {label}", "epochs", columns, disable=not show_progress, every_s=0) as bar:
            job = bar.add_task("train", total=self.batch.epochs, completed=self.start_epoch, status="")
            for epoch in range(self.start_epoch, self.batch.epochs):
                if not any(m.active for m in self.members):
                    break
                records = self._epoch(epoch)
                first = records[0]
                if on_epoch is not None:
                    on_epoch(first)
                bar.update(job, advance=1, status=" ".join(
                    f"{k} {v:.3f}" for k, v in first.items() if k in ("train/loss", f"val/{self.metric}")))

    def _epoch(self, epoch: int) -> list[dict]:
        active = [m for m in self.members if m.active]
        stats = {id(m): [0.0, 0, time.perf_counter()] for m in active}  # loss sum, correct, start
        for m in active:
            m.head.train()
        for step, (x, y) in enumerate(self.source.epoch(epoch)):
            i = step * self.batch.batch_size
            x = x.to(self.device, non_blocking=True).float()
            if self.batch.augment != "none":  # one draw per batch, shared by every head of the group
                g = torch.Generator().manual_seed(self.batch.seed * 100_003 + epoch * 10_007 + i)
                x = augment_tokens(x.cpu(), self.source.num_prefix_tokens, self.source.grid,
                                   self.batch.augment, g).to(self.device)
            y = y.to(self.device, non_blocking=True)
            for m in active:
                m.opt.zero_grad(set_to_none=True)
            total = 0.0
            for m in active:
                loss, logits = m.forward(x, y)
                total = total + m.scaler.scale(loss)
                stats[id(m)][0] += float(loss.detach()) * len(y)
                if not self.source.multi:
                    stats[id(m)][1] += int((logits.argmax(1) == y).sum())
            total.backward()  # one backward: the heads share no parameters
            for m in active:
                m.step()
        val = self._validate(active)
        return [self._finish_epoch(m, epoch, *stats[id(m)], val[id(m)]) for m in active]

    def _validate(self, active: list[Member]) -> dict[int, dict]:
        """Selection metrics of every active head on val; each val batch is moved once for all."""
        val = self.source.val(self.batch.batch_size)
        if val is None:
            return {id(m): {} for m in active}
        val_batches, y = val
        logits = {id(m): [] for m in active}
        for m in active:
            m.head.eval()
        with torch.inference_mode():
            for x in val_batches:
                x = x.to(self.device, non_blocking=True).float()
                for m in active:
                    logits[id(m)].append(m.head(x).float().cpu())
        out = {}
        for m in active:  # the selection metrics and the loss the head is trained on (train vs val curves)
            scores = torch.cat(logits[id(m)])
            selection = metrics.selection(scores.numpy(), y.numpy(), self.source.multi)
            out[id(m)] = {f"val/{k}": v for k, v in selection.items() if not isinstance(v, list)}
            out[id(m)]["val/loss"] = float(m.loss_fn(scores.to(self.device), y.to(self.device)))
        return out

    def _finish_epoch(self, m: Member, epoch: int, loss_sum: float, correct: int, start: float, val: dict) -> dict:
        n = len(self.source)
        loss, lr = loss_sum / n, m.sched.get_last_lr()[0]
        record = {"epoch": epoch, "train/loss": loss, "lr": lr}
        if not math.isfinite(loss):  # nothing it learns from here on means anything
            m.diverged = (f"train/loss became {loss} at epoch {epoch} (lr {lr:.3g}); "
                          "lower the learning rate (--set lr=...), or check the cache (featcache cache verify)")
            m.active = False
        if not self.source.multi:
            record["train/top1"] = correct / n
        record.update(val)
        value = _selection_key(record, epoch, m.cfg.select, self.metric)
        improved = value > m.best
        if improved:
            m.best, m.best_epoch, m.stale = value, epoch, 0
        else:
            m.stale += 1
        if m.cfg.early_stop and m.stale >= m.cfg.early_stop:
            m.active = False
        record["seconds"] = time.perf_counter() - start  # in a group: the shared pass's wall time
        m.save(epoch, improved, self.source.state_dict())
        rundir.append_log(m.out_dir, record)
        if m.tracker is not None:
            m.tracker.epoch(record)
        return record


def _selection_key(record: dict, epoch: int, select: str, metric: str) -> tuple[float, float]:
    """What ``select`` maximises: the val metric, ties broken on the lower val loss (epochs 7-9
    tying on val top-1 with a lower loss than epoch 2 beat it); the epoch itself for ``last``
    or without a val split."""
    if select == "last" or f"val/{metric}" not in record:
        return float(epoch), 0.0
    return float(record[f"val/{metric}"]), -float(record.get("val/loss", math.inf))
