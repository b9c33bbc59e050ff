"""The run directory: what a training run writes, in one place (train, ablate cells, pretrain, probe).

RUN_DIR:
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

import glob
import os

from featcache.errors import FeatcacheError
from featcache.train.tracking import TB_FILES

# what a run writes; a new run into a folder removes these first
RUN_FILES = ("log.jsonl", "best.pt", "last.pt", "metrics.json", "config.yaml", "confusion_*.csv", "confusion_*.png",
             "per_class_*.csv", "predictions_*.csv", "eval_*.json", "curves.png", TB_FILES, "wandb_id")


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


def write_config(out_dir: str, meta: dict) -> None:
    """Write ``config.yaml``: the resolved config, cache path and fingerprint, classes, task."""
    import yaml

    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
