"""Training heads from a cache: one head, or a fused group of heads sharing every batch, on the
labelled videos of a view (:class:`ViewBatches`, the batches source of the training loop in
:mod:`featcache.train.loop`). Evaluation and the files it writes live in
:mod:`featcache.train.evaluate`. Never imports decord or PyAV.

The run directory it writes is described in :mod:`featcache.train.rundir`.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from featcache.cache.dataset import Task, ViewData, memory_budget
from featcache.cache.facts import StoreAttrs
from featcache.cache.store import open_cache
from featcache.cache.stream import StreamedTokens, batches, epoch_order
from featcache.cache.train_views import with_train_views
from featcache.data.annotations import annotate, check_selection
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.heads.registry import create_head
from featcache.spec.config import BatchConfig, HeadConfig, TrainConfig, parse_log
from featcache.train import checkpoint, tracking
from featcache.train.evaluate import evaluate_checkpoint, read_splits
from featcache.train.loop import Built, Member, run_group
from featcache.train.meta import run_meta, source_of
from featcache.train.rundir import checkpoint_path, previous_run, write_config


def check_train_split(cache, cache_path: str) -> None:
    """Refuse a run with no train videos, saying why: a manifest whose video ids match none of
    the cache's (``ok1.mp4`` vs ``ok1``) is named with a few ids of each."""
    if cache.annotations.done("train"):  # the index's briefs: no record is read
        return
    ann = cache.annotations
    done = sum(r.done for r in ann.records.values())
    if ann.path and ann.missing and ann.unlisted and len(ann.unlisted) == done:  # no listed id is cached
        few = lambda ids: ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")  # noqa: E731
        stems = {os.path.splitext(v)[0] for v in ann.missing} & set(ann.unlisted)
        hint = " (the manifest's ids are the cache's plus a file extension: drop it)" if stems else ""
        raise FeatcacheError(f"{cache_path}: the video ids of --manifest {ann.path} do not match the cache's: none of "
                             f"its {len(ann.missing)} ids is a cached video (manifest: {few(ann.missing)}; cache: "
                             f"{few(ann.unlisted)}){hint}; use the ids the cache was extracted with "
                             "(featcache cache info lists them)")
    where = f"--manifest {ann.path}" if ann.path else "the store's annotations"
    raise FeatcacheError(f"{cache_path}: no videos in the train split ({where}); check the manifest's split "
                         "column, or give a training manifest with --manifest M.csv (video_id,label,split)")


def run_training(cache_path: str, cfg: TrainConfig, out_dir: str, resume: bool = False, overwrite: bool = False,
                 show_progress: bool = True, on_epoch: Callable[[dict], None] | None = None,
                 echo: Callable[[str], None] | None = None) -> dict:
    """Train ``cfg.head`` on the cache's train split, select on val, report on test. ``echo``
    gets the lines saying where labels and splits come from and which videos are left out."""
    return train_group(cache_path, cfg.batch, [cfg.head_config], [out_dir], resume=resume, overwrite=overwrite,
                       show_progress=show_progress, on_epoch=on_epoch, echo=echo)[0]


def train_group(cache_path: str, batch: BatchConfig, heads: list[HeadConfig], out_dirs: list[str],
                resume: bool = False, overwrite: bool = False, show_progress: bool = True, data: dict | None = None,
                on_epoch: Callable[[dict], None] | None = None, echo: Callable[[str], None] | None = None,
                built: list[Built | None] | None = None) -> list[dict]:
    """Train several heads in one pass over the data (DINOv2-linear-eval style): every head sees
    the batches of ``batch``, has its own optimiser, schedule, RNG stream and checkpoints, and the
    summed loss is back-propagated once. Each head's results equal training it alone with the same
    seed. ``data`` (split -> ViewData of the view, already read) avoids reading again; ``built``
    (per head, from :func:`build_head` with this view's shape, or None) avoids building again;
    ``on_epoch`` is called with each finished epoch's log record (of the first head)."""
    cfgs = [TrainConfig.of(batch, h) for h in heads]  # each run's whole config (its config.yaml)
    for h in heads:  # a missing logger package stops the run before anything is written
        tracking.require(parse_log(h.log))
    # labels and splits: the manifest's, or the store's; val carved from train when asked
    cache = annotate(open_cache(cache_path), batch.manifest, batch.val_fraction)
    for line in cache.annotations.summary() if echo else ():
        echo(line)
    facts = cache.facts
    batch.view.check(facts.shape)
    for h in heads:
        check_clip_head(h.head, facts)
    if facts.clip_rows and batch.augment != "none":
        raise FeatcacheError(f"augment={batch.augment}: flips and crops of a frame's patch grid are for frame caches; "
                             "a clip cache holds a flattened T'xH'xW' sequence (use augment=none)")
    stale = [path for out_dir in out_dirs for path in previous_run(out_dir, resume, overwrite)]
    check_train_split(cache, cache_path)  # before anything is read
    for h in heads:
        check_selection(cache.annotations, h.select)
    data = data or read_splits(cache, batch.view, max_bytes=batch.view_budget)
    data = with_train_views(cache, batch.view, data, batch.train_views, batch.seed, batch.view_budget,
                            batch.temporal_jitter)
    task = _task(batch.task, data)
    device = resolve_device(batch.device)
    train = data["train"]
    shape = (train.x.shape[-1], len(task.classes), train.x.shape[1], train.grid, train.num_prefix_tokens)
    heads_built = []
    for cfg, given in zip(cfgs, built or [None] * len(cfgs)):  # each head's RNG stream continues from its own initialisation
        args = head_args(cfg, *shape, facts)
        fits = given is not None and given.head.featcache_args == {**args, **cfg.head_options}
        heads_built.append(given if fits else build_head(cfg, args, train.x[:2], device))
    for path in stale:  # only now that the data, the task and every head are known to be good
        os.remove(path)
    source = ViewBatches(batch, data, task)
    members = []
    for cfg, out_dir, b in zip(cfgs, out_dirs, heads_built):
        os.makedirs(out_dir, exist_ok=True)
        meta = run_meta(cache, task.classes, task.multi, cfg,
                        streamed=tuple(s for s, d in data.items() if isinstance(d.x, StreamedTokens)))
        write_config(out_dir, meta)
        members.append(Member(cfg, b, source, device, out_dir, meta))

    def evaluate(m: Member) -> dict:  # best.pt as featcache eval reads it, scored by the head already built
        path = checkpoint_path(m.out_dir, "best")
        checkpoint.load_trainable(m.head, checkpoint.read(path).state_dict)
        return evaluate_checkpoint(path, cache, splits=("val", "test"), out_dir=m.out_dir, data=data, head=m.head.eval())

    return run_group(batch, members, source, device, evaluate, resume=resume, show_progress=show_progress,
                     on_epoch=on_epoch)


class ViewBatches:
    """The labelled videos of a cached view (:class:`featcache.train.loop.Batches`): an epoch is
    the train split in ``epoch_order`` (in memory or streamed), val the val split."""

    title = ""

    def __init__(self, batch: BatchConfig, data: dict[str, ViewData], task: Task):
        self.cfg, self.data, self.task = batch, data, task
        self.classes, self.multi = task.classes, task.multi
        self.train, self.val_data = data["train"], data.get("val")  # no val: nothing to select on
        self.num_prefix_tokens, self.grid = self.train.num_prefix_tokens, self.train.grid
        self.y = task.targets(self.train.labels)

    def __len__(self) -> int:
        return len(self.train.x)

    def epoch(self, epoch: int):
        x = self.train.x
        if hasattr(x, "set_epoch"):  # train_views=random: this epoch's cached view of each video
            x.set_epoch(epoch, self.cfg.seed)
        order = epoch_order(len(x), self.cfg.seed, epoch, self.cfg.shuffle_window)  # in memory or streamed
        for idx, batch in batches(x, order, self.cfg.batch_size, self.cfg.view_budget or memory_budget()):
            yield batch, self.y[idx]

    def val(self, batch_size: int):
        val = self.val_data
        if val is None or not len(val.video_ids):
            return None
        return (val.x[i:i + batch_size] for i in range(0, len(val.x), batch_size)), self.task.targets(val.labels)

    def loss(self, head: HeadConfig) -> nn.Module:
        if not self.task.multi:
            return nn.CrossEntropyLoss(label_smoothing=head.label_smoothing)
        pos_weight = None
        if head.pos_weight == "auto":
            pos = self.y.sum(0)
            pos_weight = (len(self.y) - pos) / pos.clamp(min=1)
        elif head.pos_weight is not None:
            pos_weight = torch.full((len(self.task.classes),), float(head.pos_weight))
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def state_dict(self) -> dict:
        return {}  # an epoch's batches follow from the seed and the epoch alone

    def load_state_dict(self, state: dict) -> None:
        pass


def _task(kind: str, data: dict[str, ViewData]) -> Task:
    """The classes and single/multi-label of the labels, as ``kind`` (auto, single, multi) asks."""
    labels = [ls for d in data.values() for ls in d.labels]
    classes = sorted({c for ls in labels for c in ls})
    multi = kind == "multi" or (kind == "auto" and any(len(ls) > 1 for ls in labels))
    if not multi and any(not ls for ls in labels):  # multi-label: no label = every class negative
        raise FeatcacheError("some videos have no label; single-label training needs one for every video")
    if not multi and any(len(ls) > 1 for ls in labels):
        raise FeatcacheError("task=single, but some videos have several labels; use task=multi")
    if len(classes) < 2:
        raise FeatcacheError(f"only one class ({classes[0]!r}) in the cache; a classifier needs at least two")
    return Task(classes, multi)


def head_args(cfg: TrainConfig, in_dim: int, num_classes: int, num_frames: int, grid, num_prefix_tokens: int,
              attrs: StoreAttrs | None = None) -> dict:
    """The constructor arguments every head takes for a view of this shape (without the head's
    own options), with the frozen tail's spec for heads that run blocks of the cached model."""
    args = {"in_dim": int(in_dim), "num_classes": int(num_classes), "num_frames": int(num_frames),
            "grid": tuple(grid), "num_prefix_tokens": int(num_prefix_tokens)}
    args.update(backbone_args(cfg.head, attrs))
    return args


def new_head(cfg: TrainConfig, args: dict) -> nn.Module:
    """``cfg.head`` constructed from ``args`` (:func:`head_args`) and its options after seeding
    with ``cfg.seed``; errors are one line naming the head."""
    torch.manual_seed(cfg.seed)
    user = False
    try:
        user = not source_of(cfg.head).builtin
        head = create_head(cfg.head, **args, **cfg.head_options)
    except Exception as exc:  # a user's constructor may raise anything: one line naming the head
        if not (user or isinstance(exc, (ValueError, TypeError))):
            raise
        what = f"{type(exc).__name__}: {exc}" if user and not isinstance(exc, ValueError) else str(exc)
        message = what if what.startswith("head ") else f"head {cfg.head}: {what}"
        raise FeatcacheError(message) from None
    head.featcache_args = {**args, **cfg.head_options}
    return head


def build_head(cfg: TrainConfig, args: dict, sample: torch.Tensor, device: torch.device | None = None) -> Built:
    """The head a run trains, built once, the same way for ``train``, ``pretrain`` and a sweep's
    planner (which measures it, then hands it to training): :func:`new_head`, its RNG streams
    taken right after (its dropout continues from them), a user's head tried on ``sample`` (two
    videos of the view), then started from ``cfg.init``. Errors are a FeatcacheError naming the
    head or the init run."""
    head = new_head(cfg, args)
    built = Built.now(head, device)
    if not source_of(cfg.head).builtin:  # the built-in heads are tested to keep the interface
        check_head_output(cfg.head, head, sample, args["num_classes"])
    if cfg.init:
        checkpoint.init_from(head, cfg.head, cfg.view.as_dict(), cfg.init)
    return built


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


# heads that need per-frame tokens of an image model: refused on a clip cache (tokens.unit == clip)
FRAME_AXIS_HEADS = {"r3d": "its Conv3d runs over the frames' patch grid",
                    "stadapter_posthoc": "its adapters convolve over the frames' patch grid",
                    "adapter": "its adapters sit inside the frozen image model (adapter and amflow modes)"}


def check_clip_head(head: str, attrs: StoreAttrs) -> None:
    """One line when ``head`` needs a frame axis and the cache holds clips of a video encoder."""
    if attrs.clip_rows and head in FRAME_AXIS_HEADS:
        raise FeatcacheError(f"head {head}: needs frame tokens ({FRAME_AXIS_HEADS[head]}), but the cache holds "
                             "clip tokens of a video encoder; use pool, linear, attentive, transformer, lstm or tcn")


def backbone_args(head: str, attrs: StoreAttrs | None) -> dict:
    """``{"backbone": spec}`` for heads that run frozen blocks of the cached model (rebuilt from
    the cache's provenance), else nothing."""
    from featcache.heads.registry import head_options

    try:
        options = head_options(head)
    except ValueError as exc:  # the registry's one-line reasons: an unknown head, a head file that fails to import
        raise FeatcacheError(str(exc)) from None
    if "backbone" not in options or attrs is None:
        return {}
    from featcache.heads.frozen_tail import backbone_spec

    return {"backbone": backbone_spec(attrs)}
