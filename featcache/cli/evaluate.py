"""`featcache eval`: a saved run scored on a cache's splits, with the evaluation protocols."""
from __future__ import annotations

import json
from typing import Optional

import typer

from featcache.cli.app import app, user_errors
from featcache.errors import FeatcacheError


@app.command("eval", epilog="Examples:\n\n  featcache eval runs/r3d --split test\n\n"
                             "  featcache eval runs/r3d --temporal-views 2   # two uniform:8 views of a uniform:16 pool\n\n"
                             "  featcache eval runs/r3d --temporal-views 10 --spatial-views 3 --clip-rate 2 --combine sum"
                             "   # SlowFast's 30 views: 10 dense clips x 3 crops (docs/protocols.md)\n\n"
                             "  featcache eval runs/att --protocol vjepa --temporal-views 2 --clip-rate 4 --spatial-views 3"
                             "   # V-JEPA's 16x2x3 on a uniform:32 head")
def eval_(
    run_dir: str = typer.Argument(..., help="A featcache train run directory."),
    split: str = typer.Option("test", help="train, val or test."),
    cache: Optional[str] = typer.Option(None, help="Evaluate on this cache instead of the one trained on."),
    checkpoint: str = typer.Option("best", help="best or last (a run trained with keep_last; outputs named @last)."),
    temporal_views: int = typer.Option(1, help="Multi-view testing: V interleaved uniform:N views from a uniform:N*V pool "
                                              "(VideoMAE-like), or with --clip-rate V dense clips (SlowFast)."),
    spatial_views: int = typer.Option(1, help="Multi-view testing: 3 crops along the long side (a cache from extract --crops 3)."),
    combine: str = typer.Option("mean", help="How view scores combine (softmax/sigmoid first): mean, sum or max."),
    window: int = typer.Option(0, help="Sliding windows of this many pool frames (the head's clip length) over a dense pool."),
    stride: int = typer.Option(0, help="--window: start a window every STRIDE pool frames (default: the window, no overlap)."),
    aggregate: str = typer.Option("max", help="--window: a video's score is the max or mean over its windows."),
    pool: Optional[str] = typer.Option(None, help="--window / --clip-rate: the dense pool (fps:F or stride:S for windows, "
                                                  "stride:S for clips; default the cache's first)."),
    clip_rate: int = typer.Option(0, help="Dense-clip views: each of the --temporal-views is N frames every R source "
                                          "frames, starts evenly spaced (SlowFast get_start_end_idx), from a stride:S pool."),
    protocol: str = typer.Option("featcache", help="--clip-rate: whose clip placement and crops: featcache, slowfast "
                                                   "(its default torchvision backend: TARGET_FPS 30, clips decoded by "
                                                   "pts), slowfast-pyav, slowfast-whole (its formula over the whole "
                                                   "video), stadapter, or vjepa (--temporal-views = its segments, "
                                                   "--clip-rate = its frame_step; docs/protocols.md)."),
    manifest: Optional[str] = typer.Option(None, "--manifest", "-m", help="Labels and splits from this manifest "
                                           "(default: the one the run was trained with; its class list must be the run's)."),
):
    """Re-evaluate a trained head on a split (writes predictions_<split>.csv); refuses caches from
    another model or preprocessing."""
    from featcache.cache.store import open_cache
    from featcache.train import rundir
    from featcache.train.evaluate import SPLITS, evaluate, load_run, parse_protocol

    with user_errors():
        if split not in SPLITS:
            raise FeatcacheError(f"--split: unknown {split!r}; expected train, val or test")
        if checkpoint not in ("best", "last"):
            raise FeatcacheError(f"--checkpoint: expected best or last, got {checkpoint!r}")
        chosen = parse_protocol(protocol, temporal_views, spatial_views, combine, clip_rate, pool, window, stride,
                                aggregate)
        path, other = rundir.checkpoint_path(run_dir, checkpoint), open_cache(cache) if cache else None
        if checkpoint == "last" and not rundir.has(run_dir, "last") and rundir.has(run_dir, "best"):
            raise FeatcacheError(f"--checkpoint last: {run_dir} has no last.pt (a finished run keeps it only when "
                                 "trained with --set keep_last=true); evaluate best, or train with keep_last")
        run = load_run(path, other, manifest)
        chosen = chosen.resolve(run)  # its name may depend on the cache (the default pool)
        tag = "@last" if checkpoint == "last" else ""  # its outputs never overwrite the best checkpoint's
        results = evaluate(run, chosen, (split,), out_dir=run_dir, tag=tag)
        if not results:
            raise FeatcacheError(f"the cache has no videos in the {split} split")
    rundir.write_eval(run_dir, f"{split}{chosen.suffix}{tag}", results)
    typer.echo(json.dumps(results, indent=2, sort_keys=True))
