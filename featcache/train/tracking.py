"""Tracked runs: where a run's per-epoch records go besides ``log.jsonl`` (``--set log=...``).

- ``jsonl`` (default): only ``RUN_DIR/log.jsonl``, one line per epoch.
- ``tensorboard``: TensorBoard event files in ``RUN_DIR`` (``torch.utils.tensorboard``; the
  ``tensorboard`` extra): every number of an epoch's record (``train/loss``, ``train/top1``,
  ``val/loss``, ``val/top1`` ..., ``lr``) at step = epoch, and the final ``test/*`` metrics at the
  best epoch; at the end the run's resolved config as hyper-parameters with its final ``val/*``
  and ``test/*`` metrics (``add_hparams``, tags ``hparam/...``), so the cells of a sweep compare
  in TensorBoard's HParams view. ``tensorboard --logdir runs/`` shows every run under its folder name.
- ``wandb``: a Weights & Biases run (the ``wandb`` extra) named after the run folder, with the
  resolved config; offline (``RUN_DIR/wandb/``, ``wandb sync`` uploads it later) unless
  ``WANDB_MODE`` says otherwise or ``WANDB_API_KEY`` is set. ``WANDB_PROJECT`` picks the project
  (default ``featcache``). A resumed run continues the same W&B run.

Several may be given: ``log=tensorboard,wandb``. Imports of tensorboard and wandb happen here,
only when asked for.
"""
from __future__ import annotations

import os
import secrets

from featcache.errors import FeatcacheError
from featcache.train.meta import EpochRecord, Metrics

TB_FILES = "events.out.tfevents.*"  # what SummaryWriter writes into RUN_DIR


def require(kinds: tuple[str, ...]) -> None:
    """Fail before anything is written when a requested logger's package is missing."""
    if "tensorboard" in kinds:
        _tensorboard_writer()
    if "wandb" in kinds:
        _wandb_module()


class Tracker:
    """The loggers of one run directory: ``epoch(record)`` per epoch, ``finish(results)`` once."""

    def __init__(self, kinds: tuple[str, ...], out_dir: str, config: dict, start_epoch: int = 0):
        self.writer = self.run = None
        self.config = config
        if "tensorboard" in kinds:
            self.writer = _tensorboard(out_dir, start_epoch)
        if "wandb" in kinds:
            self.run = _wandb(out_dir, config, resume=start_epoch > 0)

    def epoch(self, record: EpochRecord | dict) -> None:
        record = EpochRecord.from_json(record)
        step, numbers = record.epoch, record.numbers()
        if self.writer is not None:
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.run is not None:
            self.run.log({**numbers, "epoch": step, "seconds": record.seconds}, step=step)

    def finish(self, results: Metrics | dict) -> None:
        """The final metrics (test/*, at the selected epoch), then close everything."""
        results = results.to_json() if isinstance(results, Metrics) else results
        step = max(0, int(Metrics.from_json(results).get("best_epoch", 0)))
        final = {k: v for k, v in results.items() if k.startswith("test/") and isinstance(v, (int, float))}
        if self.writer is not None:
            for key, value in final.items():
                self.writer.add_scalar(key, value, step)
            numbers = {f"hparam/{k}": float(v) for k, v in results.items() if k.startswith(("val/", "test/"))
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}
            # run_name ".": the same folder as the curves, so each run is one row of the HParams view
            self.writer.add_hparams(hparams(self.config), numbers, run_name=".")
        if self.run is not None:
            self.run.summary.update({k: v for k, v in results.items() if isinstance(v, (int, float))})
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.run is not None:
            self.run.finish()
            self.run = None


def hparams(config: dict, prefix: str = "") -> dict:
    """A run's config flattened to what TensorBoard's HParams view takes: ``head.hidden`` style
    keys, numbers, strings and booleans as they are, anything else (lists, None) as its text."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _tensorboard_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FeatcacheError("log=tensorboard needs the tensorboard package: pip install 'featcache[tensorboard]'") from None
    return SummaryWriter


def _wandb_module():
    try:
        import wandb
    except ImportError:
        raise FeatcacheError("log=wandb needs the wandb package: pip install 'featcache[wandb]'") from None
    return wandb


def _tensorboard(out_dir: str, start_epoch: int):
    # a resumed run drops what a killed run logged after its last checkpoint (purge_step)
    return _tensorboard_writer()(log_dir=out_dir, purge_step=start_epoch if start_epoch else None)


def _wandb(out_dir: str, config: dict, resume: bool):
    wandb = _wandb_module()
    id_file = os.path.join(out_dir, "wandb_id")
    if resume and os.path.exists(id_file):
        run_id = open(id_file).read().strip()
    else:
        run_id = secrets.token_hex(6)
        with open(id_file, "w") as f:
            f.write(run_id)
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    try:
        return wandb.init(project=os.environ.get("WANDB_PROJECT", "featcache"), name=os.path.basename(os.path.abspath(out_dir)),
                          dir=out_dir, config=config, id=run_id, resume="allow", mode=mode, reinit="create_new")
    except Exception as exc:  # wandb's own errors (login, network) as one line
        raise FeatcacheError(f"log=wandb: {type(exc).__name__}: {exc}"[:300]) from None
