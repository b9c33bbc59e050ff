"""`featcache demo`: the two-stage story end to end, in a few minutes on a laptop CPU.

1. Generate clips whose four classes differ only by the direction a square moves (every frame
   taken alone is drawn from the same distribution, so averaging frames cannot tell them apart).
2. Extract them once with the frozen image model (DINOv2 ViT-S/14 by default).
3. Run a small sweep from the cache with `featcache ablate`: average pooling vs two temporal heads
   (AdViSe's R3D TMM and an LSTM) over the same per-frame features, fused into one pass.
4. Write the leaderboard to OUT/leaderboard.{csv,md,png} and say what it shows.
"""
from __future__ import annotations

import os
from typing import Callable

from featcache.errors import FeatcacheError
from featcache.sweep.leaderboard import parse_rows
from featcache.sweep.rows import CellResult

# The sweep the demo runs; written to OUT/demo_sweep.yaml so it can be re-run and edited.
# Every cell sees the same view (8 uniform frames, the patch grid average-pooled to 4x4 so the
# square's position survives in each frame's feature) and trains with the same settings, so the
# three heads train in one fused pass and differ only in how they combine frames.
SWEEP = """\
# featcache demo: does a temporal head see motion that frame averaging cannot?
# Classes differ only by the direction a square moves; every cell reads the same cached tokens.
description: average pooling vs temporal heads on motion-only classes
base: {{view: uniform:8, spatial: 4, epochs: {epochs}, batch_size: 16, lr: 1.0e-3, weight_decay: 0.05}}
method: list
cells:
  - {{head: pool, head.temporal: avg, head.frame_feature: patches}}   # average of per-frame features
  - {{head: r3d, head.hidden: 128, head.out_dim: 128}}                # AdViSe TMM on the 4x4 patch grid
  - {{head: lstm, head.frame_feature: patches, head.hidden: 128}}      # an LSTM over the frames in order
metric: {{name: val/top1, goal: maximize}}
"""


def run_demo(out: str, per_class: int, encoder, epochs: int, echo: Callable[[str], None] = print,
             show_progress: bool = True) -> list[dict]:
    """Generate, extract, sweep; returns the leaderboard's rows (one per head, in sweep order)."""
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract
    from featcache.spec.sweep import load_sweep
    from featcache.sweep.run import run_sweep

    echo(f"1/3 writing {4 * per_class} clips (4 classes: the direction a square moves) to {out}/videos")
    manifest = make_dataset(out, "motion", per_class=per_class, num_frames=16)
    cache = os.path.join(out, "cache.zarr")
    echo(f"2/3 extracting them once with {encoder.model} ({encoder.weights} weights) into {cache}")
    summary = run_extract(ExtractConfig(manifest=manifest, out=cache, frames="uniform:8", encoder=encoder),
                          show_progress=show_progress)
    if summary.failed:
        raise FeatcacheError(f"{len(summary.failed)} demo clip(s) failed to extract: {summary.failed}")
    echo(f"    {summary.done} extracted, {summary.skipped} already cached; {summary.frames} frames in "
         f"{summary.wall_s:.1f} s ({summary.frames_per_s:.1f} frames/s)")
    sweep_path = os.path.join(out, "demo_sweep.yaml")
    with open(sweep_path, "w") as f:
        f.write(SWEEP.format(epochs=epochs))
    echo(f"3/3 training three heads from the cache: featcache ablate {sweep_path} --cache {cache} --out {out}")
    sweep = load_sweep(sweep_path, cache=cache)
    return run_sweep(sweep, out, list(sweep.cells), show_progress=show_progress, echo=lambda line: echo(f"    {line}"))


def report(out: str, rows: list[CellResult | dict], test_clips: int) -> list[str]:
    """What the leaderboard shows, and what to run next."""
    cache, sweep = os.path.join(out, "cache.zarr"), os.path.join(out, "demo_sweep.yaml")
    rows = parse_rows(rows)
    test = {r.settings.get("head"): r.score("test/top1") for r in rows}
    val = {r.settings.get("head"): r.score("val/top1") for r in rows}
    best = max((h for h in test if h != "pool"), key=lambda h: (val[h], test[h]))  # chosen on val, as a paper would
    lines = ["", f"top-1 on held-out clips ({test_clips} test clips; chance 0.25):",
             f"  {'head':26s} {'val':>6s} {'test':>6s}"]
    lines += [f"  {h + (' (average of frames)' if h == 'pool' else ''):26s} {val[h]:6.3f} {test[h]:6.3f}" for h in test]
    if test[best] > test["pool"]:
        lines.append(f"the temporal head {best} beats average pooling on the test clips ({test[best]:.3f} vs "
                     f"{test['pool']:.3f}): the cached tokens keep the motion, averaging frames throws it away.")
    else:
        lines.append(f"this time the temporal head {best} did not beat average pooling ({test[best]:.3f} vs "
                     f"{test['pool']:.3f}); try more clips (--per-class) or epochs (--epochs).")
    lines += [f"leaderboard: {out}/leaderboard.md, {out}/leaderboard.csv, {out}/leaderboard.png; runs in {out}/cells/",
              "", "next:",
              f"  featcache cache info {cache}",
              f"  featcache train {cache} --head r3d --view uniform:8 --set spatial=4 --out {out}/runs/r3d",
              f"  featcache ablate {sweep} --cache {cache} --out {out}/sweep2 --set epochs=40   # edit the file, re-run",
              f"  featcache eval {out}/cells/<cell> --split test"]
    return lines
