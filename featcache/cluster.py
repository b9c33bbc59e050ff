"""Scaling extraction out: Slurm job arrays through submitit, one worker per local GPU, and
progress across shards.

Every worker runs the ordinary ``run_extract`` on its shard (``shard_of``: a stable hash of the
video id), writing into the same store: each video is its own directory, published by an atomic
rename, so concurrent writers never share a chunk and a requeued or restarted task resumes where
its shard stopped.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter

from featcache.errors import FeatcacheError
from featcache.extract import ExtractConfig, ExtractSummary, run_extract, shard_of


@dataclasses.dataclass(frozen=True)
class SlurmConfig:
    shards: int
    partition: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: int = 32
    time_min: int = 240
    array_parallelism: int = 64
    logs: str = "slurm_logs"
    cluster: str = "slurm"  # slurm | local (submitit's local executor: the same array on this machine)


def shard_configs(cfg: ExtractConfig, shards: int, devices: list[str] | None = None) -> list[ExtractConfig]:
    if shards < 1:
        raise FeatcacheError(f"--shards: must be at least 1, got {shards}")
    out = []
    for i in range(shards):
        enc = cfg.encoder if devices is None else dataclasses.replace(cfg.encoder, device=devices[i])
        out.append(dataclasses.replace(cfg, shard=(i, shards), encoder=enc))
    return out


class ShardTask:
    """One array task. submitit calls ``checkpoint`` on preemption or timeout: the task is
    requeued with the same shard, and extraction resumes from the store."""

    def __call__(self, cfg: ExtractConfig) -> dict:
        summary = run_extract(cfg, show_progress=False)
        return {"shard": list(cfg.shard), "done": summary.done, "skipped": summary.skipped,
                "failed": summary.failed, "frames": summary.frames, "wall_s": summary.wall_s}

    def checkpoint(self, cfg: ExtractConfig):
        import submitit

        return submitit.helpers.DelayedSubmission(ShardTask(), cfg)


def launch_slurm(cfg: ExtractConfig, slurm: SlurmConfig):
    """Submit one array task per shard; returns the submitit jobs."""
    try:
        import submitit
    except ImportError:
        raise FeatcacheError("--slurm needs submitit: pip install submitit") from None
    if slurm.cluster not in ("slurm", "local"):
        raise FeatcacheError(f"--cluster: expected slurm or local, got {slurm.cluster!r}")
    executor = submitit.AutoExecutor(folder=os.path.join(slurm.logs, "%j"), cluster=slurm.cluster)
    params = {"name": "featcache-extract", "timeout_min": slurm.time_min, "tasks_per_node": 1,
              "cpus_per_task": slurm.cpus_per_task, "mem_gb": slurm.mem_gb,
              "slurm_array_parallelism": slurm.array_parallelism}
    if slurm.gpus_per_task:
        params["gpus_per_node"] = slurm.gpus_per_task
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    return executor.map_array(ShardTask(), shard_configs(cfg, slurm.shards))


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


def run_on_devices(cfg: ExtractConfig, devices: list[str]) -> list[ExtractSummary]:
    """One worker process per device, each extracting one shard into the same store."""
    if len(devices) == 1:
        return [run_extract(dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, device=devices[0])))]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # no forked decoder or CUDA state
    configs = shard_configs(cfg, len(devices), devices)
    with ProcessPoolExecutor(len(devices), mp_context=ctx) as pool:
        return list(pool.map(_quiet_extract, configs))


def _quiet_extract(cfg: ExtractConfig) -> ExtractSummary:
    return run_extract(cfg, show_progress=False)


def shard_status(cache, video_ids: list[str], shards: int) -> list[dict]:
    """Per shard: done / failed / in progress (being written) / pending videos."""
    from featcache.cache import schema

    records = cache.records()
    staged = {name.split("@")[0] for name in cache.staged()}
    rows = [Counter() for _ in range(shards)]
    for vid in video_ids:
        key = schema.video_key(vid)
        status = records.get(key, {}).get("status") or ("in_progress" if key in staged else "pending")
        rows[shard_of(vid, shards)][status] += 1
    return [{"shard": i, **{s: c[s] for s in ("done", "failed", "in_progress", "pending")}}
            for i, c in enumerate(rows)]
