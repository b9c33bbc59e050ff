"""Submitit job arrays, shared by extraction and sweeps: the Slurm settings, the executor, and
waiting for an array's tasks (states from ``squeue`` and each task's result file, never ``sacct``).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter

from featcache.errors import FeatcacheError


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
    optional = {"gpus_per_node": slurm.gpus_per_task, "slurm_partition": slurm.partition}  # left out when unset
    executor.update_parameters(**params, **{k: v for k, v in optional.items() if v})
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
                pending, running, ended = (states.count(s) for s in ("pending", "running", "ended"))
                line = f"tasks: {pending} pending, {running} running, {ended} ended; {progress()}"
                if line != last:
                    echo(f"[{time.monotonic() - start:5.0f} s] {line}")
                    last = line
                if ended == len(jobs):
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
        return (message if name.endswith(("FeatcacheError", "OptionError", "DamagedStore")) else f"{name.rsplit('.', 1)[-1]}: {message}")[:300]
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
