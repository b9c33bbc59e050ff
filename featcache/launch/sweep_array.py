"""Sweeps on a cluster: each fused group of ``featcache ablate`` is one task of a submitit job
array (``--slurm``; ``--cluster local`` runs the same array on this machine).

A task trains its group's unfinished cells in one pass, exactly as a local run does
(``ablate_run.run_groups``), so a requeued task (preemption, timeout) skips the cells that
finished and redoes the one that was interrupted. The submitted array is recorded in
``OUT/slurm.json``: re-running the command while its tasks are still queued or running submits
nothing for their cells; once every cell has finished, re-running writes the leaderboard.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from featcache.errors import FeatcacheError
from featcache.launch.submitit import SlurmConfig, make_executor, squeue_states, wait_for_tasks
from featcache.spec.sweep import Cell, Sweep
from featcache.sweep.run import finished, run_groups

STATE = "slurm.json"


@dataclass(frozen=True)
class ArrayState:
    """``OUT/slurm.json``: the cluster of the last submission and its tasks (job id -> cell names)."""

    cluster: str | None = None
    tasks: dict[str, list[str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict) -> ArrayState:
        return cls(data.get("cluster"), dict(data.get("tasks") or {}),
                   {k: v for k, v in data.items() if k not in ("cluster", "tasks")})

    def to_json(self) -> dict:
        return {"cluster": self.cluster, "tasks": self.tasks, **self.extra}


@dataclass(frozen=True)
class GroupResult:
    """What an array task returns: its cells, how many it trained (the others had finished), its wall time."""

    cells: list[str]
    trained: int
    wall_s: float

    @classmethod
    def from_json(cls, data: dict) -> GroupResult:
        return cls(list(data.get("cells", [])), int(data.get("trained", 0)), float(data.get("wall_s", 0.0)))

    def to_json(self) -> dict:
        return {"cells": self.cells, "trained": self.trained, "wall_s": self.wall_s}


class SweepTask:
    """One array task: a fused group. submitit calls ``checkpoint`` on preemption or timeout."""

    def __call__(self, cache_path: str, out_dir: str, cells: list[Cell]) -> dict:
        start = time.perf_counter()
        skipped = run_groups(cache_path, out_dir, [cells], show_progress=False, echo=lambda line: print(line, flush=True))
        return GroupResult([c.name for c in cells], len(cells) - skipped, round(time.perf_counter() - start, 2)).to_json()

    def checkpoint(self, *args):
        import submitit

        return submitit.helpers.DelayedSubmission(SweepTask(), *args)


def launch_groups(sweep: Sweep, out_dir: str, groups: list[list[Cell]], fingerprint: str, slurm: SlurmConfig,
                  wait: bool, poll_s: float, echo) -> bool:
    """Submit the groups with unfinished cells (not those a live task of an earlier submission
    holds); True when every cell has finished and the leaderboard can be written."""
    todo = [[c for c in g if not finished(c, out_dir, fingerprint)] for g in groups]
    todo = [g for g in todo if g]
    if not todo:
        return True
    busy = _busy_cells(out_dir)
    submit = [g for g in todo if not {c.name for c in g} & busy]
    if len(submit) < len(todo):
        echo(f"{sum(len(g) for g in todo) - sum(len(g) for g in submit)} cell(s) are still queued or running in "
             f"tasks submitted earlier ({os.path.join(out_dir, STATE)}); not submitted again")
    if not submit:
        echo("re-run this command when those tasks end to write the leaderboard")
        return False
    executor = make_executor(slurm, f"featcache-ablate-{os.path.splitext(os.path.basename(sweep.path))[0]}"[:60])
    jobs = executor.map_array(SweepTask(), [sweep.cache] * len(submit), [out_dir] * len(submit), submit)
    array = str(jobs[0].job_id).split("_")[0]
    _save_state(out_dir, ArrayState(slurm.cluster, {str(j.job_id): [c.name for c in g] for j, g in zip(jobs, submit)}))
    echo(f"submitted {len(jobs)} task(s) (job {array}), one per fused group; logs in {slurm.logs}/{array}/")
    if not wait:
        echo("re-run this command when they end to write the leaderboard (finished cells are skipped)")
        return False
    cells = [c for g in groups for c in g]
    outcomes = wait_for_tasks(jobs, lambda: f"cells finished: {sum(finished(c, out_dir, fingerprint) for c in cells)}"
                              f"/{len(cells)}", echo, poll_s=poll_s,
                              log_path=os.path.join(slurm.logs, array, "featcache-wait.log"))
    failed = [o for o in outcomes if o.result is None]
    for o in failed:
        echo(f"task {o.job_id} ({', '.join(c.name for c in submit[o.shard])}) failed: {o.error}; log: {o.log}")
    for o in outcomes:
        if o.result is not None:
            result = GroupResult.from_json(o.result)
            echo(f"task {o.job_id}: trained {result.trained} cell(s) in {result.wall_s:.1f} s")
    if failed:
        raise FeatcacheError(f"{len(failed)} of {len(jobs)} task(s) failed; fix the cause and re-run the command "
                             "(finished cells are skipped)")
    return True


def _save_state(out_dir: str, state: ArrayState) -> None:
    path = os.path.join(out_dir, STATE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state.to_json(), f, indent=1)
    os.replace(tmp, path)


def _busy_cells(out_dir: str) -> set[str]:
    """Cells held by Slurm tasks of an earlier submission that are still in the queue."""
    try:
        with open(os.path.join(out_dir, STATE)) as f:
            state = ArrayState.from_json(json.load(f))
    except (OSError, ValueError, AttributeError):
        return set()
    if state.cluster != "slurm":
        return set()  # a local array ended with the command that waited for it
    queued = squeue_states(list(state.tasks)) or {}
    return {name for task, names in state.tasks.items() if task in queued for name in names}
