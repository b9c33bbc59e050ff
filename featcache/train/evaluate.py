"""Evaluation and reporting: scores of a saved head on the splits of a cache, the metrics, the
per-class files and confusion matrices a run directory holds. Training lives in
:mod:`featcache.train.fit`.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch
from torch import nn

from featcache.cache.dataset import Task, ViewData, materialise
from featcache.cache.store import Cache, open_cache
from featcache.config import from_dict
from featcache.device import resolve_device
from featcache.errors import FeatcacheError
from featcache.train import checkpoint, metrics
from featcache.view import View

SPLITS = ("train", "val", "test")


def read_splits(cache: Cache, view: View, splits=SPLITS) -> dict[str, ViewData]:
    """Each split of ``view``, read once."""
    return {s: materialise(cache, view, s) for s in splits}


@torch.inference_mode()
def predict(head: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    head.eval()
    outs = [head(x[i:i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def score(logits: np.ndarray, targets: np.ndarray, task: Task) -> tuple[dict, np.ndarray | None]:
    if task.multi:
        return metrics.multi_label(logits, targets), None
    return metrics.single_label(logits, targets, len(task.classes))


def flat(m: dict, split: str) -> dict:
    """Per-split metrics as flat keys (``val/top1``); per-class lists are left out."""
    return {f"{split}/{k}": v for k, v in m.items() if not isinstance(v, list)}


def evaluate_checkpoint(path: str, cache, splits=("test",), out_dir: str | None = None,
                        data: dict | None = None) -> dict:
    """Metrics of a saved head on the given splits of ``cache`` (a Cache, or None for the
    checkpoint's own); writes per-class files and confusion matrices into ``out_dir``.
    ``data`` (split -> ViewData of the checkpoint's view, already read) avoids reading again."""
    ckpt = checkpoint.load(path)
    if "pretext" in ckpt:
        raise FeatcacheError(f"{path}: a {ckpt['pretext']['task']} pre-training; its score is val/top1 in "
                             "metrics.json; fine-tune it with featcache train --set init=RUN_DIR")
    cache = cache or open_cache(ckpt["cache"]["path"])
    if cache.fingerprint != ckpt["cache"]["fingerprint"]:
        raise FeatcacheError(
            f"{cache.path} (fingerprint {cache.fingerprint}) is not the cache this head was trained on "
            f"(fingerprint {ckpt['cache']['fingerprint']}: other model, preprocessing, layers or frames)")
    cfg = from_dict(ckpt["config"])
    head = checkpoint.build_head(ckpt)
    task = Task(ckpt["classes"], ckpt["multi_label"])
    device = resolve_device(cfg.device)
    head.to(device)
    results = {}
    for split in splits:
        split_data = data[split] if data else materialise(cache, cfg.view, split)
        if not split_data.video_ids:
            continue
        unknown = sorted({c for ls in split_data.labels for c in ls} - set(task.classes))
        if unknown:
            raise FeatcacheError(f"split {split}: labels {unknown} were not among the trained classes")
        logits = predict(head, split_data.x, cfg.batch_size, device)
        m, cm = score(logits, task.targets(split_data.labels).numpy(), task)
        results.update(flat(m, split))
        if out_dir:
            _write_per_class(out_dir, split, task, m, cm)
    return results


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # optional
    size = max(4, 0.35 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
