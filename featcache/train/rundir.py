"""The run directory: what a training run writes, in one place (train, ablate cells, pretrain, probe).

RUN_DIR:
    config.yaml        the run's metadata (featcache.train.meta.RunMeta): resolved config, cache path and
                       fingerprint, classes, single or multi-label, head provenance, manifest
    log.jsonl          one line per epoch of this run: train/loss, train/top1, val/loss, val/..., lr, seconds
    curves.png         loss and the selection metric per epoch, train vs val (with matplotlib)
    events.out.tfevents.*, wandb/   with --set log=tensorboard / log=wandb (featcache.train.tracking)
    best.pt, last.pt   checkpoints (best on the val metric; last for --resume, removed once the run
                       has finished unless keep_last: true)
    metrics.json       final flat metrics: val/..., test/..., best_epoch
    confusion_<split>.csv, per_class_<split>.csv   (+ confusion_<split>.png with matplotlib)

Only this module knows the file names: the others read and write a run directory through it.

A new run never mixes with an old one: without ``resume`` a folder that already holds a run is
refused unless ``overwrite`` is given, and then the old run's files are removed first.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os

from featcache.errors import FeatcacheError
from featcache.train.meta import EpochRecord, Metrics, RunMeta
from featcache.train.tracking import TB_FILES

CONFIG, LOG, METRICS, CURVES = "config.yaml", "log.jsonl", "metrics.json", "curves.png"
CHECKPOINTS = ("best", "last")  # best.pt, last.pt

# what a run writes; a new run into a folder removes these first
RUN_FILES = (LOG, "best.pt", "last.pt", METRICS, CONFIG, "confusion_*.csv", "confusion_*.png",
             "per_class_*.csv", "predictions_*.csv", "eval_*.json", "windows_*.csv", "views_*.csv", CURVES, TB_FILES, "wandb_id")


def checkpoint_path(run_dir: str, which: str = "best") -> str:
    """RUN_DIR/best.pt or RUN_DIR/last.pt."""
    if which not in CHECKPOINTS:
        raise ValueError(f"checkpoint: expected best or last, got {which!r}")
    return os.path.join(run_dir, f"{which}.pt")


def curves_path(run_dir: str) -> str:
    return os.path.join(run_dir, CURVES)


def has(run_dir: str, name: str) -> bool:
    """Whether the run holds ``name``: config, log, metrics, best or last."""
    files = {"config": CONFIG, "log": LOG, "metrics": METRICS, "best": "best.pt", "last": "last.pt"}
    return os.path.exists(os.path.join(run_dir, files[name]))


def previous_run(out_dir: str, resume: bool, overwrite: bool) -> list[str]:
    """The files of a run already in ``out_dir`` that a new run must remove first. Refuses a
    folder that holds a run unless ``resume`` (keep it: nothing to remove) or ``overwrite``,
    so a log never mixes two runs. Writes nothing."""
    old = [name for pattern in RUN_FILES for name in glob.glob(os.path.join(out_dir, pattern))]
    if resume or not old:
        return []
    if not overwrite:
        state = "a finished run" if has(out_dir, "metrics") else "an unfinished run"
        raise FeatcacheError(f"--out {out_dir}: holds {state}; use another --out, --resume to continue it, "
                             "or --overwrite to replace it")
    return old


def write_config(out_dir: str, meta: RunMeta | dict) -> None:
    """Write ``config.yaml``: the run's :class:`~featcache.train.meta.RunMeta` (the resolved config,
    cache path and fingerprint, classes, single or multi-label, head provenance, manifest)."""
    import yaml

    with open(os.path.join(out_dir, CONFIG), "w") as f:
        yaml.safe_dump(meta.to_json() if isinstance(meta, RunMeta) else meta, f, sort_keys=False)


def read_config(run_dir: str) -> dict:
    """``config.yaml`` as written by :func:`write_config`, as stored (:func:`read_meta` parses it)."""
    import yaml

    with open(os.path.join(run_dir, CONFIG)) as f:
        return yaml.safe_load(f) or {}


def read_meta(run_dir: str) -> RunMeta:
    """``config.yaml`` parsed: the run's :class:`~featcache.train.meta.RunMeta`."""
    return RunMeta.from_json(read_config(run_dir))


def write_metrics(run_dir: str, results: Metrics | dict) -> None:
    """``metrics.json``: the final flat metrics (the file a finished run is recognised by)."""
    with open(os.path.join(run_dir, METRICS), "w") as f:
        json.dump(results.to_json() if isinstance(results, Metrics) else results, f, indent=2, sort_keys=True)


def read_metrics(run_dir: str) -> dict:
    """``metrics.json`` as stored (:func:`read_results` parses it)."""
    with open(os.path.join(run_dir, METRICS)) as f:
        return json.load(f)


def read_results(run_dir: str) -> Metrics:
    """``metrics.json`` parsed: best epoch, parameter count and scores."""
    return Metrics.from_json(read_metrics(run_dir))


def append_log(run_dir: str, record: EpochRecord | dict) -> None:
    """One epoch's record, one line of ``log.jsonl``."""
    with open(os.path.join(run_dir, LOG), "a") as f:
        f.write(json.dumps(record.to_json() if isinstance(record, EpochRecord) else record) + "\n")


def read_log(run_dir: str) -> list[dict]:
    """Every epoch's record in ``log.jsonl`` (resumed epochs included), in order."""
    with open(os.path.join(run_dir, LOG)) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_epochs(run_dir: str) -> list[EpochRecord]:
    """``log.jsonl`` parsed: one :class:`~featcache.train.meta.EpochRecord` per epoch."""
    return [EpochRecord.from_json(r) for r in read_log(run_dir)]


def remove_last(run_dir: str) -> None:
    """Drop ``last.pt`` (the resumable state) of a finished run."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(checkpoint_path(run_dir, "last"))


def write_eval(run_dir: str, name: str, results: dict) -> None:
    """``eval_<name>.json`` (``featcache eval``: ``name`` is the split and protocol, e.g. ``test@views2``)."""
    with open(os.path.join(run_dir, f"eval_{name}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
