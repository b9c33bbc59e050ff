"""`featcache demo`: generate motion clips, extract them once, sweep three heads from the cache."""
from __future__ import annotations

import os
import time

import typer

from featcache.cli.app import app, parse_kv, user_errors


@app.command(epilog="Example:\n\n  featcache demo --out demo")
def demo(
    out: str = typer.Option("demo", "--out", "-o", help="Folder for the clips, manifest, cache, runs and leaderboard."),
    per_class: int = typer.Option(40, help="Clips per class (4 motion classes; 60/20/20 train/val/test)."),
    model: str = typer.Option("vit_small_patch14_dinov2.lvd142m", help="Any timm model name."),
    weights: str = typer.Option("random", help="random (no download), hub, or a weights file."),
    img_size: int = typer.Option(224, help="Square input size of the model."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="Extra timm create_model option KEY=VALUE."),
    epochs: int = typer.Option(30, help="Training epochs of every head."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """The whole two-stage story: motion clips -> one extraction -> a sweep of three heads from the
    cache -> OUT/leaderboard.{csv,md,png}, where a temporal head beats average pooling."""
    from featcache.data.manifest import read_manifest
    from featcache.errors import FeatcacheError
    from featcache.extract.encoder import EncoderConfig
    from featcache.launch.demo import report, run_demo

    start = time.perf_counter()
    with user_errors():
        if per_class < 5:
            raise FeatcacheError(f"--per-class: at least 5 clips per class (train/val/test), got {per_class}")
        encoder = EncoderConfig(model=model, weights=weights, img_size=img_size, precision=precision,
                                model_args=parse_kv(model_arg, "--model-arg"))
        rows = run_demo(out, per_class, encoder, epochs, echo=typer.echo, show_progress=not quiet)
    test_clips = sum(item.split == "test" for item in read_manifest(os.path.join(out, "manifest.csv")))
    for line in report(out, rows, test_clips):
        typer.echo(line)
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f} s")
