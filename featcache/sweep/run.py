"""Running a sweep: check it against the cache, plan fused groups within memory, train, rank.

Cells whose configs have the same batch side (``TrainConfig.batch``, a :class:`BatchConfig`: the
view, labels and splits, batch size, epochs, seed, task, device, ...) are trained in one pass
(``train_group``); a group whose heads would not fit the memory budget is split. Groups that share
a view run one after the other, so each view is read once. Finished cells are skipped. Each cell's
head is built once, by ``featcache.train.fit.build_head`` as ``train`` builds it: by its probe,
which measures it, then handed to the training of its group.

Long module: planning (probe, measure, pack into groups, print) and running (groups, finished
cells, leaderboard rows) share the plans, the heads they built and the cell folders.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

from featcache.cache.dataset import frame_positions, memory_budget
from featcache.cache.facts import StoreAttrs
from featcache.cache.store import open_cache
from featcache.data.annotations import annotate, check_selection
from featcache.errors import FeatcacheError
from featcache.spec.config import BatchConfig, to_dict
from featcache.spec.sweep import Cell, Sweep, SweepError
from featcache.spec.view import Layout, View
from featcache.sweep.leaderboard import TEST_SELECTION, test_intervals, write_leaderboard
from featcache.sweep.rows import CellResult
from featcache.train import rundir
from featcache.train.evaluate import read_splits
from featcache.train.fit import build_head, check_clip_head, check_train_split, head_args, train_group
from featcache.train.loop import Built
from featcache.train.meta import source_of


@dataclass
class Plan:
    cell: Cell
    bytes: int  # estimated training memory of the head (parameters, optimiser state, activations)
    step_s: float | None  # measured seconds of one forward + backward on one batch (None: not timed)
    built: Built | None = None  # the cell's head, built once and trained by run_groups


def run_sweep(sweep: Sweep, out_dir: str, cells: list[Cell], dry_run: bool = False,
              memory_bytes: int | None = None, max_fused: int = 32, show_progress: bool = True,
              echo=print, launch=None, time_cells: bool = False) -> list[CellResult]:
    """Plan and run the cells; returns the leaderboard rows (empty for a dry run, or while
    cluster tasks are still training). Memory is estimated from a forward + backward on meta
    tensors (shapes only, no arithmetic); ``time_cells`` also times one real step per distinct
    head (cells differing only in optimiser settings share it), for the plan's seconds. ``launch(sweep, out_dir, groups, fingerprint)``, when
    given (the CLI passes :func:`featcache.launch.sweep_array.launch_groups` for ``--slurm``), runs
    the fused groups elsewhere, e.g. one task of a job array each, instead of in this process, and
    returns True once every cell has finished."""
    cache = open_cache(sweep.cache)
    layouts = _check_views(sweep, cache, cells)
    annotated = _check_manifests(sweep, cache, cells, echo)
    _check_metric(sweep, annotated)
    if sweep.metric.startswith("test/"):
        echo(f"warning: metric {sweep.metric}: {TEST_SELECTION}")
    measured: dict = {}  # one measurement per distinct head and batch, shared by the cells
    plans = [_probe(sweep, cell, layouts[cell.config.view], _classes(annotated, cell), cache.facts, measured,
                    time_cells) for cell in cells]
    budget = memory_bytes or _available_bytes(cells[0].config.device)
    groups = plan_groups(plans, budget, max_fused)
    first = cells[0].config
    _print_plan(sweep, groups, len(annotated[first.manifest, first.val_fraction].annotations.done("train")), echo)
    if dry_run:
        return []
    os.makedirs(out_dir, exist_ok=True)
    _write_resolved(sweep, out_dir)
    heads = {} if launch is not None else kept_heads(plans, memory_budget())  # a cluster task builds its own
    plans = None
    groups = [[p.cell for p in g] for g in groups]
    if launch is not None:
        if not launch(sweep, out_dir, groups, cache.fingerprint):
            return []
    else:
        skipped = run_groups(sweep.cache, out_dir, groups, show_progress, echo, heads)
        if skipped:
            echo(f"{skipped} finished cell(s) skipped (delete their folders under {out_dir}/cells to redo them)")
    rows = [_row(out_dir, c) for c in cells]
    write_leaderboard(out_dir, rows, sweep.axes, sweep.metric, sweep.goal)
    return rows


def _classes(annotated: dict, cell: Cell) -> int:
    """The number of classes the cell's run will have (its manifest's labels; 2 at least)."""
    return max(2, len(annotated[cell.config.manifest, cell.config.val_fraction].annotations.classes()))


def kept_heads(plans: list[Plan], budget: int) -> dict[str, Built]:
    """Cell name -> the head its probe built, for training; heads beyond ``budget`` bytes in all
    (parameters and buffers, frozen parts included) are let go and built again when trained."""
    kept, total = {}, 0
    for plan in plans:
        size = sum(t.numel() * t.element_size() for t in (*plan.built.head.parameters(), *plan.built.head.buffers()))
        if total + size <= budget:
            kept[plan.cell.name], total = plan.built, total + size
    return kept


def run_groups(cache_path: str, out_dir: str, groups: list[list[Cell]], show_progress: bool = False,
               echo=print, heads: dict[str, Built] | None = None) -> int:
    """Train each group's unfinished cells in one pass, reading each view once for adjacent
    groups; returns the number of finished cells skipped. ``heads`` (cell name -> its head as
    planned, :func:`kept_heads`) are trained instead of built again, each let go once trained."""
    cache = open_cache(cache_path)
    data, data_key, skipped = None, None, 0
    heads = heads if heads is not None else {}
    for group in groups:
        batch = group_batch(group)
        built = {c.name: heads.pop(c.name, None) for c in group}
        todo = [c for c in group if not finished(c, out_dir, cache.fingerprint)]
        skipped += len(group) - len(todo)
        if not todo:
            continue
        if _data_key(batch) != data_key:  # groups that share a view are adjacent (plan_groups)
            data = None  # free the previous view before reading the next
            echo(f"reading view {batch.view}" + (f" (labels and splits: {batch.manifest})" if batch.manifest else ""))
            data = read_splits(annotate(cache, batch.manifest, batch.val_fraction), batch.view,
                               max_bytes=batch.view_budget)
            data_key = _data_key(batch)
        echo(f"training {len(todo)} cell(s) in one pass: {', '.join(c.name for c in todo)}")
        train_group(cache_path, batch, [c.config.head_config for c in todo], [_cell_dir(out_dir, c) for c in todo],
                    overwrite=True, show_progress=show_progress, data=data, built=[built[c.name] for c in todo])
    return skipped


def group_batch(cells: list[Cell]) -> BatchConfig:
    """The batch side the cells of one fused group share (:func:`plan_groups` groups by it)."""
    batches = {c.config.batch for c in cells}
    if len(batches) != 1:  # a caller's bug, not the sweep file's
        raise ValueError(f"the cells of a fused group must share one BatchConfig: {', '.join(c.name for c in cells)}")
    return batches.pop()


def _check_views(sweep: Sweep, cache, cells: list[Cell]) -> dict[View, Layout]:
    """Every distinct view must be servable for every video; returns each view's layout."""
    layouts = {}
    entries = None  # every done video's brief, read only when a view's frames are not a cached policy
    for cell in cells:
        view = cell.config.view
        if view in layouts:
            continue
        try:
            view.check(cache.facts.shape)
            if cache.layout != "packed" or cache.policy_positions(cache.index_rows("done"), str(view.frames)) is None:
                entries = entries if entries is not None else cache.done_entries(None)
                for entry in entries:
                    frame_positions(entry, view.frames)
        except FeatcacheError as exc:
            raise SweepError(f"{sweep.path}: cell {cell.name}: view={view.frames}: {exc}") from None
        layouts[view] = view.layout(cache.facts.shape)
    return layouts


def _check_manifests(sweep: Sweep, cache, cells: list[Cell], echo) -> dict:
    """Every distinct manifest of the cells read and matched against the cache before anything
    trains; its summary printed. Returns manifest -> the annotated cache."""
    out = {}
    for cell in cells:
        cfg = cell.config
        key = (cfg.manifest, cfg.val_fraction)
        try:
            if key not in out:
                out[key] = annotate(cache, *key)
                for line in out[key].annotations.summary():
                    echo(line)
            check_selection(out[key].annotations, cfg.select, sweep.metric)
        except FeatcacheError as exc:
            raise SweepError(f"{sweep.path}: cell {cell.name}: {exc}") from None
        try:
            check_train_split(out[key], sweep.cache)
        except FeatcacheError as exc:
            raise SweepError(f"{sweep.path}: cell {cell.name}: {exc}") from None
    return out


def _check_metric(sweep: Sweep, annotated: dict) -> None:
    """The sweep's metric must be a key every cell's metrics.json will hold (checked before any
    cell trains, not after all of them have)."""
    import numpy as np

    from featcache.train import metrics
    from featcache.train.evaluate import flat

    multi = any(len(r.labels) > 1 for a in annotated.values() for r in a.records().values())
    tasks = {c.config.task for c in sweep.cells}
    known = {"best_epoch", "params"}
    for split in ("val", "test"):
        if "multi" in tasks or (multi and "auto" in tasks):
            known |= set(flat(metrics.multi_label(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])), split))
        if "single" in tasks or (not multi and "auto" in tasks):
            known |= set(flat(metrics.single_label(np.array([[1.0, 0.0]]), np.array([0]), 2)[0], split))
    if sweep.metric not in known:
        raise SweepError(f"{sweep.path}: metric.name: {sweep.metric!r} is not a metric these cells report; "
                         f"expected one of {', '.join(sorted(known))}")


def _probe(sweep: Sweep, cell: Cell, layout: Layout, classes: int, attrs: StoreAttrs, measured: dict | None = None,
           time_it: bool = False) -> Plan:
    """Build the cell's head on the view's shape (once: :func:`run_groups` trains this head) and
    measure its training memory on meta tensors (no arithmetic); with ``time_it`` time one real
    forward + backward instead, leaving the head as built (no gradients, buffers restored, RNG
    untouched). ``measured`` (shared by the cells) keeps one measurement per distinct head and
    batch: cells that differ only in lr, weight decay, ... share it."""
    cfg = cell.config
    try:  # as `featcache train` builds it; its errors name the head or the init run
        check_clip_head(cfg.head, attrs)
        args = head_args(cfg, layout.dim, classes, layout.frames, layout.grid, layout.num_prefix_tokens, attrs)
        built = build_head(cfg, args, torch.zeros(2, *layout.shape))
    except FeatcacheError as exc:
        raise SweepError(f"{sweep.path}: cell {cell.name}: {exc}") from None
    head = built.head
    shape = (cfg.batch_size, *layout.shape)
    measured = {} if measured is None else measured
    key = (cfg.head, repr(args), repr(sorted(cfg.head_options.items())), shape, cfg.amp, cfg.device, cfg.init, time_it)
    if key not in measured:
        measured[key] = _measure(head, torch.zeros(shape)) if time_it else (_meta_bytes(head, shape), None)
    bytes_, step_s = measured[key]
    return Plan(cell, bytes_, step_s, built)


def _meta_bytes(head: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Training bytes of one batch of ``shape`` (saved tensors + parameters, gradients and two
    Adam moments), from a forward + backward of a meta copy of the head: shapes are propagated,
    nothing is computed, so a dry run of a large sweep prints its plan in seconds. A head whose
    forward cannot run on meta tensors (data-dependent shapes, .item()) is measured on one real
    sample and scaled to the batch."""
    import copy

    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    params = sum(p.numel() * p.element_size() for p in head.parameters() if p.requires_grad)
    try:
        meta = copy.deepcopy(head).to("meta")
        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            meta(torch.empty(shape, device="meta")).float().sum().backward()
        return saved[0] + 4 * params
    except Exception:  # noqa: BLE001 - any op without a meta kernel: measure one sample for real
        one, _ = _measure(head, torch.zeros(1, *shape[1:]))
        return (one - 4 * params) * shape[0] + 4 * params


def _measure(head: torch.nn.Module, x: torch.Tensor) -> tuple[int, float]:
    """(training bytes, seconds) of one real forward + backward; the head is left as it was."""
    buffers = {name: b.detach().clone() for name, b in head.named_buffers()}  # e.g. batch-norm running stats
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        head(x).float().sum().backward()
    step_s = time.perf_counter() - start
    with torch.no_grad():
        for name, b in head.named_buffers():
            b.copy_(buffers[name])
    for p in head.parameters():
        p.grad = None
    params = sum(p.numel() * p.element_size() for p in head.parameters() if p.requires_grad)
    return saved[0] + 4 * params, step_s  # params, grads, two Adam moments


def _available_bytes(device: str) -> int:
    if device != "cpu" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0] * 0.8)
    return memory_budget()


def plan_groups(plans: list[Plan], budget: int, max_fused: int) -> list[list[Plan]]:
    """Cells with the same fusion key, packed in order into groups within ``budget`` bytes and
    ``max_fused`` heads; a cell that alone exceeds the budget still runs, alone. Groups that
    read the same view come out adjacent (in order of first appearance), so a sweep reads each
    view once."""
    by_key: dict[tuple, list[list[Plan]]] = {}
    for plan in sorted(plans, key=_first_seen([_data_key(p.cell.config.batch) for p in plans])):
        groups = by_key.setdefault(plan.cell.config.batch, [[]])
        last = groups[-1]
        if last and (len(last) >= max_fused or sum(p.bytes for p in last) + plan.bytes > budget):
            groups.append([])
        groups[-1].append(plan)
    return [g for groups in by_key.values() for g in groups]


def _data_key(batch: BatchConfig) -> tuple:
    """What one read of the cache serves (:func:`run_groups` reads again when it changes): the
    view, the labels and splits (a sweep over split files reads each file's splits) and the
    memory the read may take."""
    return batch.view, batch.manifest, batch.val_fraction, batch.max_view_memory_gb


def _first_seen(keys: list[tuple]):
    """Sort key: a plan's data key by the position of its first appearance (stable)."""
    order = {}
    for key in keys:
        order.setdefault(key, len(order))
    return lambda plan: order[_data_key(plan.cell.config.batch)]


def view_reads(groups: list[list]) -> int:
    """The reads :func:`run_groups` will make: one each time the data key changes."""
    keys = [_data_key((g[0].cell if hasattr(g[0], "cell") else g[0]).config.batch) for g in groups]
    return sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])


def _print_plan(sweep: Sweep, groups: list[list[Plan]], n_train: int, echo) -> None:
    total, timed = 0.0, all(p.step_s is not None for g in groups for p in g)
    echo(f"sweep {sweep.path}: {sum(len(g) for g in groups)} cells in {len(groups)} fused pass(es); "
         f"metric {sweep.metric} ({sweep.goal})")
    for i, group in enumerate(groups):
        cfg = group_batch([p.cell for p in group])
        steps = cfg.epochs * math.ceil(n_train / cfg.batch_size)
        est = steps * sum(p.step_s for p in group) if timed else 0.0
        total += est
        echo(f"  pass {i}: view {cfg.view}" + (f", splits {cfg.manifest}" if cfg.manifest else "")
             + f", {cfg.epochs} epochs x {steps // max(cfg.epochs, 1)} steps, "
             f"~{sum(p.bytes for p in group) / 1e6:.0f} MB" + (f", ~{est:.1f} s" if timed else ""))
        for p in group:
            settings = ", ".join(f"{k}={v}" for k, v in p.cell.settings.items())
            echo(f"    [{p.cell.index}] {p.cell.name}: {settings}")
    reads = f"{view_reads(groups)} view read(s)"
    if timed:
        echo(f"estimated cost: ~{total:.1f} s of training (from one measured step per distinct head), {reads}")
    else:
        echo(f"estimated cost: {reads}; training time not measured (give --time-cells to time one step per head)")


def _cell_dir(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "cells", cell.name)


def finished(cell: Cell, out_dir: str, fingerprint: str) -> bool:
    run = _cell_dir(out_dir, cell)
    if not rundir.has(run, "metrics"):
        return False
    meta = rundir.read_meta(run)
    if meta.config != to_dict(cell.config) or meta.fingerprint != fingerprint:
        return False
    if meta.source() != source_of(cell.config.head):
        return False  # a head file edited since: redo
    if cell.config.manifest:  # the same manifest path with other contents is another cell
        from featcache.data.annotations import file_sha256

        return os.path.isfile(cell.config.manifest) and meta.manifest_sha256 == file_sha256(cell.config.manifest)
    return True


def _row(out_dir: str, cell: Cell) -> CellResult:
    run = _cell_dir(out_dir, cell)
    metrics = rundir.read_metrics(run)
    seconds = sum(record.seconds for record in rundir.read_epochs(run))
    classes = len(rundir.read_meta(run).classes or ())
    return CellResult(cell=cell.name, index=cell.index, settings=cell.settings, metrics=metrics,
                      params=metrics.get("params"), train_s=round(seconds, 2), classes=classes,
                      ci=test_intervals(run, metrics))


def _write_resolved(sweep: Sweep, out_dir: str) -> None:
    import yaml

    resolved = {"sweep": os.path.abspath(sweep.path), "cache": os.path.abspath(sweep.cache),
                "metric": {"name": sweep.metric, "goal": sweep.goal}, "axes": list(sweep.axes),
                "cells": [{"index": c.index, "name": c.name, "settings": c.settings, "config": to_dict(c.config)}
                          for c in sweep.cells]}
    with open(os.path.join(out_dir, "sweep.yaml"), "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
