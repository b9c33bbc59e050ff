"""`featcache ablate`: a sweep file's grid of cells from one cache, in fused passes or as a Slurm array."""
from __future__ import annotations

from typing import Optional

import typer

from featcache.cli.app import SLURM_OPTIONS, app, user_errors
from featcache.errors import FeatcacheError, OptionError

ABLATE_EXAMPLES = """
Examples:

  featcache ablate pipelines/stadapter_luv_table1_frames.yaml --cache caches/hmdb51_cut0.zarr --out runs/stadapter_t1 --dry-run

  featcache ablate pipelines/advise_table5_tmm_vs_avg.yaml --cache caches/diving48.zarr --out runs/advise

  featcache ablate sweep.yaml --manifest ucf101_s2.csv --out runs/split2   # every cell on split 2's labels and splits

  featcache ablate sweep.yaml --out runs/s1 --only 0,3 --filter head.temporal=avg --set epochs=5

  featcache ablate sweep.yaml --out runs/s2 --slurm --partition gpu --gpus-per-task 1 --wait
"""


@app.command(epilog=ABLATE_EXAMPLES)
def ablate(
    sweep_file: str = typer.Argument(..., help="A sweep YAML file (see docs/sweeps.md)."),
    out: str = typer.Option("runs/sweep", "--out", "-o", help="Folder for cells/, leaderboard.csv and .md."),
    cache: Optional[str] = typer.Option(None, help="The cache to use (overrides the file's cache:)."),
    set_: list[str] = typer.Option([], "--set", help="Override a base option KEY=VALUE for every cell."),
    manifest: Optional[str] = typer.Option(None, "--manifest", "-m", help="Labels and splits of every cell from this training manifest (a sweep may vary manifest: instead)."),
    only: Optional[str] = typer.Option(None, help="Run only these cells: comma-separated indices or names."),
    filter_: list[str] = typer.Option([], "--filter", help="Run only cells with KEY=VALUE (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, fused passes, memory and view reads (in seconds: nothing trains)."),
    time_cells: bool = typer.Option(False, "--time-cells", help="Also time one real forward + backward per distinct head, for the plan's training-time estimate."),
    memory_gb: Optional[float] = typer.Option(None, help="Memory budget of one fused pass (default: half the free RAM, or 80% of free GPU memory)."),
    max_fused: int = typer.Option(32, help="Most heads trained in one pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    slurm: bool = typer.Option(False, "--slurm", help="Submit each fused group as a task of a Slurm job array (submitit); re-run the command to write the leaderboard, or give --wait."),
    cluster: str = SLURM_OPTIONS.cluster,
    partition: Optional[str] = SLURM_OPTIONS.partition,
    gpus_per_task: int = SLURM_OPTIONS.gpus_per_task,
    cpus_per_task: int = SLURM_OPTIONS.cpus_per_task,
    mem_gb: int = SLURM_OPTIONS.mem_gb,
    time: int = typer.Option(240, "--time", help="--slurm: time limit per task (minutes); preempted or timed-out tasks requeue and skip finished cells."),
    slurm_logs: str = SLURM_OPTIONS.slurm_logs,
    wait: bool = typer.Option(False, "--wait", help="--slurm: wait for the tasks, then write the leaderboard."),
    poll: float = SLURM_OPTIONS.poll,
):
    """Run a grid of trainings from one cache, fusing cells that read the same data into one pass."""
    from featcache.spec.config import parse_assignments
    from featcache.spec.sweep import load_sweep, select
    from featcache.sweep.run import run_sweep

    interrupted = ("interrupted; a dry run writes nothing, so there is nothing to resume" if dry_run
                   else "interrupted; run the same command again to resume (finished cells are skipped)")
    # user errors (FeatcacheError: a SweepError naming the file and cell, an OptionError its flag) are one
    # line and exit status 2; anything else raised while a sweep plans or trains is a bug and keeps its traceback
    with user_errors(interrupted=interrupted):
        overrides = {**parse_assignments(set_), **({"manifest": manifest} if manifest else {})}
        sweep = load_sweep(sweep_file, cache=cache, overrides=overrides)
        try:
            filters = parse_assignments(filter_)
        except OptionError as exc:
            raise OptionError("filter", exc.message) from None
        cells = select(sweep.cells, only.split(",") if only else None, filters)
        if not cells:
            raise FeatcacheError(f"{sweep_file}: no cell matches --only/--filter")
        memory = int(memory_gb * 1e9) if memory_gb else None
        launch = None
        if slurm:
            import functools

            from featcache.launch.submitit import SlurmConfig
            from featcache.launch.sweep_array import launch_groups

            cluster_cfg = SlurmConfig(0, partition, gpus_per_task, cpus_per_task, mem_gb, time, logs=slurm_logs,
                                      cluster=cluster)
            launch = functools.partial(launch_groups, slurm=cluster_cfg, wait=wait, poll_s=poll, echo=typer.echo)
        rows = run_sweep(sweep, out, cells, dry_run=dry_run, memory_bytes=memory, max_fused=max_fused,
                         show_progress=not quiet, echo=typer.echo, launch=launch, time_cells=time_cells)
    if rows:
        from featcache.sweep.leaderboard import best_cell

        best = best_cell(rows, sweep.axes, sweep.metric, sweep.goal)  # the leaderboard's first row (seeds averaged)
        ci = best.ci.get(sweep.metric)
        typer.echo(f"best: {best.cell} {sweep.metric} {best.score(sweep.metric):.4f}"
                   + (f" (95% bootstrap interval {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
                   + (" (ranked on test: not a valid protocol, see the warning above)" if sweep.metric.startswith("test/") else "")
                   + "; "
                   f"leaderboard: {out}/leaderboard.md, {out}/leaderboard.csv")
