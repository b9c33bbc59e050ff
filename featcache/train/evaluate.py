"""Evaluation and reporting: a saved head scored on the splits of a cache under a protocol
(:mod:`featcache.train.protocols`), the metrics, and the predictions, per-class files and confusion
matrices a run directory holds. Training lives in :mod:`featcache.train.fit`.
"""
from __future__ import annotations

import csv
import os

import numpy as np
from torch import nn

from featcache.cache.dataset import Task, ViewData, materialise
from featcache.cache.store import Cache, open_cache
from featcache.data.annotations import AnnotatedCache, annotate, check_same_manifest
from featcache.device import resolve_device
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.config import from_dict
from featcache.spec.view import View
from featcache.train import checkpoint, metrics
from featcache.train.meta import CacheRef, ManifestRef, RunMeta
from featcache.train.protocols import DenseClips, MultiView, Protocol, Run, SingleView, check_combine, predict, probabilities
from featcache.train.protocols_release import RELEASES
from featcache.train.protocols_windows import Windows

__all__ = ["PROTOCOLS", "SPLITS", "evaluate", "evaluate_checkpoint", "load_run", "parse_protocol", "predict",
           "probabilities", "read_splits", "report_split"]

SPLITS = ("train", "val", "test")
PROTOCOLS = {"featcache": DenseClips, **RELEASES}  # --protocol: whose placement of dense clips and crops


def read_splits(cache: Cache, view: View, splits=SPLITS, max_bytes: int | None = None) -> dict[str, ViewData]:
    """Each split of ``view``, read once (streamed when larger than ``max_bytes``)."""
    return {s: materialise(cache, view, s, max_bytes) for s in splits}


def score(logits: np.ndarray, targets: np.ndarray, task: Task) -> tuple[dict, np.ndarray | None]:
    if task.multi:
        return metrics.multi_label(logits, targets), None
    return metrics.single_label(logits, targets, len(task.classes))


def flat(m: dict, split: str) -> dict:
    """Per-split metrics as flat keys (``val/top1``); per-class lists are left out."""
    return {f"{split}/{k}": v for k, v in m.items() if not isinstance(v, list)}


def parse_protocol(protocol: str = "featcache", temporal_views: int = 1, spatial_views: int = 1,
                   combine: str = "mean", clip_rate: int = 0, pool: str | None = None, window: int = 0,
                   stride: int = 0, aggregate: str = "max") -> Protocol:
    """The protocol ``featcache eval``'s options name (the one place that reads them): sliding
    windows (``window`` / ``stride``), dense clips placed by ``protocol`` (``clip_rate`` or
    ``pool``), interleaved multi-view (``temporal_views`` x ``spatial_views``), else the single view."""
    if window or stride:
        if temporal_views != 1 or spatial_views != 1 or clip_rate or protocol != "featcache":
            raise FeatcacheError("--window and --temporal-views/--spatial-views/--clip-rate/--protocol are two protocols; "
                                 "give one of them")
        return Windows(window, stride, aggregate, pool)
    if protocol not in PROTOCOLS:
        raise OptionError("protocol", f"unknown {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if clip_rate or pool:
        return PROTOCOLS[protocol](temporal_views, spatial_views, clip_rate, combine, pool)
    if protocol != "featcache":
        raise OptionError("protocol", f"{protocol} places dense clips: give --clip-rate R (its sampling rate)")
    if temporal_views == spatial_views == 1:
        check_combine(combine)
        return SingleView()
    return MultiView(temporal_views, spatial_views, combine)


def evaluate(run: Run, protocol: Protocol, splits=("test",), out_dir: str | None = None, tag: str = "",
             data: dict | None = None) -> dict:
    """Metrics of ``run``'s head on ``splits`` under ``protocol``: keys ``<split>/<metric>@<name>``
    (the protocol's name; none for the head's own view), then ``tag`` (``@last``, so another
    checkpoint's outputs never overwrite the best one's); into ``out_dir`` the predictions
    (``predictions_<split>@<name>.csv``), per-class files and the protocol's own files. ``data``
    (split -> ViewData of the head's view, already read) spares the single view a second read.
    A split without videos is left out."""
    protocol = protocol.resolve(run)
    suffix = protocol.suffix + tag
    results = {}
    for split in splits:
        scored = protocol.score(run, split, data.get(split) if data else None)
        if scored is None:
            continue
        logits = _as_logits(scored.scores, run.task.multi, scored.combine, scored.views)
        results.update(report_split(run.task, split, suffix, scored.video_ids, scored.labels, logits, scored.scores,
                                    out_dir))
        results.update({f"{split}/{k}{suffix}": v for k, v in scored.extras.items()})
        for prefix, write in scored.files.items() if out_dir else ():
            write(os.path.join(out_dir, f"{prefix}_{split}{suffix}.csv"))
    return results


def evaluate_checkpoint(path: str, cache, splits=("test",), out_dir: str | None = None, data: dict | None = None,
                        protocol: Protocol | None = None, manifest: str | None = None, tag: str = "",
                        head: nn.Module | None = None) -> dict:
    """:func:`evaluate` of the head saved at ``path`` (see :func:`load_run` for ``cache``,
    ``manifest`` and ``head``) under ``protocol`` (default: its own view)."""
    return evaluate(load_run(path, cache, manifest, head), protocol or SingleView(), splits, out_dir, tag, data)


def load_run(path: str, cache: Cache | None, manifest: str | None = None, head: nn.Module | None = None) -> Run:
    """A trained head from its checkpoint, checked against the cache it will read. Labels and
    splits: ``cache``'s when it is already annotated (training's own evaluation), else those of
    ``manifest``, else the manifest the run was trained with (refused if it changed since), else
    the store's own."""
    ckpt = checkpoint.read(path)
    meta = ckpt.meta
    if ckpt.is_pretraining:
        raise FeatcacheError(f"{path}: a {meta.pretext.name} pre-training; its score is val/top1 in "
                             "metrics.json; fine-tune it with featcache train --set init=RUN_DIR")
    trained = meta.cache or CacheRef()
    cache = cache or open_cache(trained.path)
    if cache.fingerprint != trained.fingerprint:
        raise FeatcacheError(f"{cache.path} (fingerprint {cache.fingerprint}) is not the cache this head was trained on "
                             f"(fingerprint {trained.fingerprint}): {_what_differs(cache, trained)}")
    cfg = from_dict(meta.config)
    if manifest is not None or not isinstance(cache, AnnotatedCache):
        cache = _annotated(cache, meta, manifest, cfg.val_fraction)
    device = resolve_device(cfg.device)
    head = checkpoint.build_head(ckpt) if head is None else head
    return Run(cfg, cache, head.to(device), Task(list(meta.classes or ()), bool(meta.multi_label)), device)


def _what_differs(cache: Cache, trained: CacheRef) -> str:
    """The fingerprint facts (cache/schema.py ``differing_facts``, as ``extract`` names them) in
    which ``cache`` differs from the cache a run was trained on, read from that cache's path when it
    is still there with the recorded fingerprint; else why they cannot be named."""
    from featcache.cache.schema import differing_facts

    path = trained.path
    try:
        original = open_cache(path)
    except Exception:  # noqa: BLE001 -- moved, deleted or unreadable: say so rather than fail here
        return (f"the cache it was trained on ({path}) is not there to compare, so the facts that differ "
                "cannot be named (other model, preprocessing, layers or frames)")
    if original.fingerprint != trained.fingerprint:
        return (f"{path} now holds another cache (fingerprint {original.fingerprint}), so the facts that differ "
                "cannot be named (other model, preprocessing, layers or frames)")
    diff = differing_facts(original.attrs, cache.attrs)
    return f"these facts differ from {path}'s: {', '.join(diff) or 'none named (fingerprint scheme changed)'}"


def _annotated(cache: Cache, meta: RunMeta, manifest: str | None, val_fraction: float) -> AnnotatedCache:
    """The cache under the labels and splits an evaluation of a run (its ``meta``) uses (see load_run)."""
    recorded = meta.manifest or ManifestRef()
    if manifest is None and recorded.path:
        if not os.path.isfile(recorded.path):
            raise FeatcacheError(f"the manifest this run was trained with, {recorded.path}, is gone; "
                                 "give --manifest M.csv")
        check_same_manifest(recorded.sha256, recorded.path)
        manifest = recorded.path
    annotated = annotate(cache, manifest, val_fraction)
    classes, trained = annotated.annotations.classes(), list(meta.classes or ())
    if manifest and classes != trained:
        extra, lost = sorted(set(classes) - set(trained)), sorted(set(trained) - set(classes))
        raise FeatcacheError(f"--manifest {manifest}: its class list differs from the run's ({len(classes)} vs "
                             f"{len(trained)} classes; new: {extra[:5]}, absent: {lost[:5]}); "
                             "evaluate with a manifest of the same classes")
    return annotated


def report_split(task: Task, split: str, suffix: str, video_ids: list[str], labels: list[list[str]], logits: np.ndarray,
            scores: np.ndarray, out_dir: str | None) -> dict:
    """Metrics of one split under one protocol; predictions and per-class files into ``out_dir``."""
    unknown = sorted({c for ls in labels for c in ls} - set(task.classes))
    if unknown:
        raise FeatcacheError(f"split {split}: labels {unknown} were not among the trained classes")
    m, cm = score(logits, task.targets(labels).numpy(), task)
    if out_dir:
        name = f"{split}{suffix}"
        write_predictions(os.path.join(out_dir, f"predictions_{name}.csv"), video_ids, labels, task.classes, scores)
        _write_per_class(out_dir, name, task, m, cm)
    return {f"{k}{suffix}": v for k, v in flat(m, split).items()}


def _as_logits(scores: np.ndarray, multi: bool, combine: str, views: int) -> np.ndarray:
    """Scores back on the scale the metrics read (argmax / ranking / logit 0 = probability 0.5);
    a monotone map, so the metrics are recomputable from the predictions file alone."""
    p = scores / views if combine == "sum" else scores
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p)) if multi else np.log(p)


def write_predictions(path: str, video_ids: list[str], labels: list[list[str]], classes: list[str],
                      scores: np.ndarray) -> None:
    """``video_id, labels`` (true labels joined by ``;``), then one column per class: the score
    the metrics were computed from (softmax for single-label, sigmoid for multi-label)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "labels", *classes])
        for vid, ls, row in zip(video_ids, labels, scores.tolist()):
            w.writerow([vid, ";".join(ls), *(f"{v:.9g}" for v in row)])


def _write_per_class(out_dir: str, split: str, task: Task, m: dict, cm: np.ndarray | None) -> None:
    with open(os.path.join(out_dir, f"per_class_{split}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        if cm is None:
            w.writerow(["class", "ap"])  # empty: no positive in this split (not in mAP)
            w.writerows((c, "" if ap is None else ap) for c, ap in zip(task.classes, m["ap"]))
            return
        w.writerow(["class", "precision", "recall", "support"])
        w.writerows(zip(task.classes, m["precision"], m["recall"], cm.sum(axis=1).tolist()))
    with open(os.path.join(out_dir, f"confusion_{split}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\pred", *task.classes])
        w.writerows([c, *row] for c, row in zip(task.classes, cm.tolist()))
    _plot_confusion(os.path.join(out_dir, f"confusion_{split}.png"), task.classes, cm)


def _plot_confusion(path: str, classes: list[str], cm: np.ndarray) -> None:
    from featcache.train.figures import plot_confusion

    plot_confusion(path, classes, cm, title=os.path.basename(path)[len("confusion_"):-len(".png")])
