"""Scaling extraction out: Slurm job arrays through submitit, one worker per local GPU, and
progress across shards.

Every worker runs the ordinary ``run_extract`` on its shard (``shard_of``: a stable hash of the
video id), writing into the same store: each video is its own directory, published by an atomic
rename, so concurrent writers never share a chunk and a requeued or restarted task resumes where
its shard stopped. Workers never delete the store: with ``--overwrite`` the launcher replaces a
store made with other settings once, before any worker starts (``prepare_store``), and every
worker (a requeued Slurm task too) runs with ``overwrite=False``.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter

from featcache.errors import FeatcacheError
from featcache.extract import ExtractConfig, ExtractSummary, prepare_store, run_extract, shard_of, validate
from featcache.manifest import read_manifest


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


def check_scheduler(slurm: SlurmConfig) -> None:
    """``--slurm`` where no Slurm is installed is one line saying what to do instead."""
    if slurm.cluster == "slurm" and shutil.which("sbatch") is None:
        raise FeatcacheError("--slurm: no Slurm on this machine (sbatch is not on PATH); run on a Slurm login node, "
                             "or give --cluster local to run the same array here, or drop --slurm")


def make_executor(slurm: SlurmConfig, name: str):
    """A submitit executor for one array (per-task logs under ``slurm.logs/<job id>/``)."""
    try:
        import submitit
    except ImportError:
        raise FeatcacheError("--slurm needs submitit: pip install submitit") from None
    if slurm.cluster not in ("slurm", "local"):
        raise FeatcacheError(f"--cluster: expected slurm or local, got {slurm.cluster!r}")
    check_scheduler(slurm)
    executor = submitit.AutoExecutor(folder=os.path.join(slurm.logs, "%j"), cluster=slurm.cluster)
    params = {"name": name, "timeout_min": slurm.time_min, "tasks_per_node": 1,
              "cpus_per_task": slurm.cpus_per_task, "mem_gb": slurm.mem_gb,
              "slurm_array_parallelism": slurm.array_parallelism}
    if slurm.gpus_per_task:
        params["gpus_per_node"] = slurm.gpus_per_task
    if slurm.partition:
        params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    return executor


@dataclasses.dataclass
class TaskOutcome:
    """How one array task ended: its ShardTask result, or the one-line reason it failed."""

    shard: int
    job_id: str
    result: dict | None
    error: str
    log: str  # the task's stderr file


_PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED"}


def wait_for_tasks(jobs: list, progress, echo, poll_s: float = 10.0,
                   log_path: str | None = None) -> list[TaskOutcome]:
    """Wait until every task has ended, printing one progress line per poll when it changed
    (tasks pending / running / ended, then ``progress()``, e.g. videos in the store). Task states come from ``squeue``
    and each task's result file, never from ``sacct``: clusters without accounting work, and
    submitit's warnings go to ``log_path`` (or are dropped), not to the terminal."""
    import logging
    import time
    import warnings

    start, last, gone = time.monotonic(), None, Counter()
    slurm_jobs = bool(jobs) and type(jobs[0]).__name__ == "SlurmJob"  # not submitit's local executor
    handler = logging.FileHandler(log_path) if log_path else logging.NullHandler()
    logger = logging.getLogger("submitit")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            while True:
                queued = squeue_states([str(j.job_id) for j in jobs]) if slurm_jobs else None
                states = []
                for i, job in enumerate(jobs):
                    if queued is not None and str(job.job_id) in queued:
                        # still queued: a result file may be an earlier, requeued attempt's
                        gone[i] = 0
                        states.append("pending" if queued[str(job.job_id)] in _PENDING else "running")
                    elif job.paths.result_pickle.exists():
                        states.append("ended")
                    elif queued is None:  # not Slurm (submitit's local executor)
                        states.append("ended" if job.done() else "running")
                    else:  # left the queue without a result: ended (after a second look)
                        gone[i] += 1
                        states.append("ended" if gone[i] >= 2 else "running")
                counts = Counter(states)
                line = (f"tasks: {counts['pending']} pending, {counts['running']} running, {counts['ended']} ended; "
                        f"{progress()}")
                if line != last:
                    echo(f"[{time.monotonic() - start:5.0f} s] {line}")
                    last = line
                if counts["ended"] == len(jobs):
                    break
                time.sleep(poll_s)
            outcomes = [_outcome(i, job) for i, job in enumerate(jobs)]
        for w in caught:
            logger.warning("%s", w.message)
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = True
    return outcomes


def _outcome(index: int, job) -> TaskOutcome:
    try:
        result = job.result()
    except Exception as exc:  # the task raised, or ended without a result (killed, node failure)
        return TaskOutcome(index, str(job.job_id), None, _last_error(str(exc)) or type(exc).__name__,
                           str(job.paths.stderr))
    return TaskOutcome(index, str(job.job_id), result, "", str(job.paths.stderr))


def _last_error(text: str) -> str:
    """The exception line of a task's traceback (``featcache.errors.FeatcacheError: manifest not
    found: ...`` -> ``manifest not found: ...``), or the message's first line."""
    import re

    found = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$", text, flags=re.MULTILINE)
    if found:
        name, message = found[-1]
        return (message if name.endswith("FeatcacheError") else f"{name.rsplit('.', 1)[-1]}: {message}")[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""


def squeue_states(task_ids: list[str]) -> dict[str, str] | None:
    """task id (``123_4``) -> Slurm state of the tasks still in the queue; None without squeue."""
    import shutil
    import subprocess

    if not task_ids or shutil.which("squeue") is None:
        return None
    arrays = sorted({str(t).split("_")[0] for t in task_ids})
    p = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:  # the whole array has left the queue
        return {}
    return dict(line.split(None, 1) for line in p.stdout.splitlines() if " " in line)


def published(out: str) -> int:
    """Videos published in the store at ``out`` (done or failed)."""
    from featcache.cache.store import open_cache

    try:
        return len(open_cache(out).records())
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


def shard_status(cache, video_ids: list[str], shards: int) -> list[dict]:
    """Per shard: done / failed / in progress (being written) / pending videos."""
    from featcache.cache import schema

    records = cache.records()
    staged = cache.in_progress_keys()
    rows = [Counter() for _ in range(shards)]
    for vid in video_ids:
        key = schema.video_key(vid)
        status = records.get(key, {}).get("status") or ("in_progress" if key in staged else "pending")
        rows[shard_of(vid, shards)][status] += 1
    return [{"shard": i, **{s: c[s] for s in ("done", "failed", "in_progress", "pending")}}
            for i, c in enumerate(rows)]
