"""Scaling extraction out: Slurm job arrays (through :mod:`featcache.launch.submitit`), one worker
per local GPU, and progress across shards.

Every worker runs the ordinary ``run_extract`` on its shard (``shard_of``: a stable hash of the
video id), writing into the same store: each writer appends to a segment of its own (see
docs/cache-format.md), so concurrent writers never share a file and a requeued or restarted task
resumes where its shard stopped. Workers never delete the store: with ``--overwrite`` the launcher replaces a
store made with other settings once, before any worker starts (``prepare_store``), and every
worker (a requeued Slurm task too) runs with ``overwrite=False``.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

from featcache.data.manifest import read_manifest
from featcache.errors import FeatcacheError
from featcache.extract.pipeline import ExtractConfig, ExtractSummary, prepare_store, run_extract, shard_of, validate
from featcache.launch.submitit import SlurmConfig, check_scheduler, make_executor


def shard_configs(cfg: ExtractConfig, shards: int, devices: list[str] | None = None) -> list[ExtractConfig]:
    """One worker config per shard; workers never replace the store (overwrite=False)."""
    if shards < 1:
        raise FeatcacheError(f"--shards: must be at least 1, got {shards}")
    out = []
    for i in range(shards):
        enc = cfg.encoder if devices is None else dataclasses.replace(cfg.encoder, device=devices[i])
        out.append(dataclasses.replace(cfg, shard=(i, shards), encoder=enc, overwrite=False))
    return out


def launcher_device(cfg: ExtractConfig, slurm: SlurmConfig) -> str:
    """Where the launcher builds the model to learn the store's provenance (for --overwrite):
    it must resolve the same precision as the tasks will."""
    import torch

    if torch.cuda.is_available():
        return cfg.encoder.device
    if slurm.cluster == "slurm" and slurm.gpus_per_task and cfg.encoder.precision == "auto":
        raise FeatcacheError("--overwrite with --slurm: this node has no GPU to tell which precision the GPU tasks "
                             "will use; give --precision bf16, fp16 or fp32")
    return "cpu"


class ShardTask:
    """One array task. submitit calls ``checkpoint`` on preemption or timeout: the task is
    requeued with the same shard, and extraction resumes from the store."""

    def __call__(self, cfg: ExtractConfig) -> dict:
        # the task's log (stdout: not a terminal) gets plain periodic progress lines and the summary
        summary = run_extract(cfg, show_progress=True)
        print(task_summary(summary, cfg), flush=True)
        return {"shard": list(cfg.shard), "done": summary.done, "skipped": summary.skipped,
                "failed": summary.failed, "frames": summary.frames, "wall_s": summary.wall_s}

    def checkpoint(self, cfg: ExtractConfig):
        import submitit

        return submitit.helpers.DelayedSubmission(ShardTask(), cfg)


def task_summary(summary, cfg: ExtractConfig) -> str:
    """The lines an array task prints into its own log at the end."""
    lines = [f"featcache extract shard {cfg.shard[0]}/{cfg.shard[1]}: {summary.done} done, {summary.skipped} already "
             f"cached, {len(summary.failed)} failed (of {summary.total}); {summary.frames} frames in "
             f"{summary.wall_s:.1f} s"]
    lines += [f"warning: {w}" for w in summary.warnings]
    lines += [f"failed: {v}: {reason}" for v, reason in summary.failed.items()]
    return "\n".join(lines)


def launch_slurm(cfg: ExtractConfig, slurm: SlurmConfig) -> tuple[list, list[str]]:
    """Replace the store first when asked (``cfg.overwrite``), then submit one array task per
    shard; returns the submitit jobs and the differing facts of a replaced store."""
    if slurm.cluster not in ("slurm", "local"):
        raise FeatcacheError(f"--cluster: expected slurm or local, got {slurm.cluster!r}")
    if cfg.shard is not None:
        raise FeatcacheError("--slurm: give --shards N, not --shard I/N (each task takes one shard)")
    validate(cfg)
    read_manifest(cfg.manifest)  # a bad manifest fails here, not in every task
    check_scheduler(slurm)  # before a store is replaced
    replaced = prepare_store(cfg, launcher_device(cfg, slurm)) if cfg.overwrite else []
    executor = make_executor(slurm, "featcache-extract")
    return executor.map_array(ShardTask(), shard_configs(cfg, slurm.shards)), replaced


def published(out: str) -> int:
    """Videos published in the store at ``out`` (done or failed)."""
    from featcache.cache.store import open_cache

    try:
        return len(open_cache(out).index)
    except FeatcacheError:  # not created yet
        return 0


def parse_devices(text: str) -> list[str]:
    """``all`` (every visible GPU, or the CPU when there is none), ``cuda:0,cuda:1``, or ``cpu``."""
    import torch

    if text == "all":
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise FeatcacheError(f"--devices: expected all, cpu or cuda:N[,cuda:M...], got {d!r}")
        if d.startswith("cuda") and int(d[5:]) >= torch.cuda.device_count():
            raise FeatcacheError(f"--devices: {d} is not visible ({torch.cuda.device_count()} GPU(s) here)")
    if not devices:
        raise FeatcacheError("--devices: no device given")
    return devices


def run_on_devices(cfg: ExtractConfig, devices: list[str]) -> tuple[list[ExtractSummary], list[str]]:
    """One worker process per device, each extracting one shard into the same store; with
    ``cfg.overwrite`` the store is replaced (if its settings differ) before they start. Returns
    the workers' summaries and the differing facts of a replaced store."""
    if cfg.shard is not None:
        raise FeatcacheError("--devices: each device takes a shard; do not combine with --shard")
    if len(devices) == 1:
        summary = run_extract(dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, device=devices[0])))
        return [summary], summary.replaced
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    replaced = prepare_store(cfg, devices[0]) if cfg.overwrite else []
    ctx = multiprocessing.get_context("spawn")  # no forked decoder or CUDA state
    configs = shard_configs(cfg, len(devices), devices)
    with ProcessPoolExecutor(len(devices), mp_context=ctx) as pool:
        return list(pool.map(_quiet_extract, configs)), replaced


def _quiet_extract(cfg: ExtractConfig) -> ExtractSummary:
    return run_extract(cfg, show_progress=False)


@dataclasses.dataclass(frozen=True)
class ShardStatus:
    """One shard's videos (``featcache cache status``): done, failed, in progress (being written),
    pending; ``shard`` None for the total over shards."""

    shard: int | None
    done: int = 0
    failed: int = 0
    in_progress: int = 0
    pending: int = 0

    @classmethod
    def total(cls, rows: list[ShardStatus]) -> ShardStatus:
        return cls(None, *(sum(getattr(r, f) for r in rows) for f in ("done", "failed", "in_progress", "pending")))


def shard_status(cache, video_ids: list[str], shards: int) -> list[ShardStatus]:
    """Per shard: done / failed / in progress (being written) / pending videos."""
    from featcache.cache import schema

    statuses = cache.statuses(video_ids)  # the index columns: no record is read
    staged = cache.in_progress_keys()
    rows = [Counter() for _ in range(shards)]
    for vid, status in zip(video_ids, statuses):
        status = status or ("in_progress" if schema.video_key(vid) in staged else "pending")
        rows[shard_of(vid, shards)][status] += 1
    return [ShardStatus(i, **c) for i, c in enumerate(rows)]
