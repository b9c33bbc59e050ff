"""The `featcache` command line: parse options, build a config, call one function.

Exit status: 0 success, 1 some videos failed / the cache has problems, 2 a usage error
(one line on stderr, nothing written), 130 interrupted (re-run the same command to resume).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Optional

import typer

from featcache.errors import FeatcacheError

app = typer.Typer(help="Decode videos once, run a frozen image model once, train many heads from the cache.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="Inspect and check a cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@contextlib.contextmanager
def user_errors():
    """A FeatcacheError becomes one line on stderr and exit status 2."""
    try:
        yield
    except FeatcacheError as exc:
        typer.echo(f"featcache: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("featcache: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None


def _parse_kv(pairs: list[str], option: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FeatcacheError(f"{option}: expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FeatcacheError(f"{option}: expected comma-separated integers such as -1 or -4,-1, got {text!r}") from None


def _parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise FeatcacheError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def _parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.partition("x")
    if not (sep and w.isdigit() and h.isdigit()) or int(w) < 2 or int(h) < 2:
        raise FeatcacheError(f"--luv-size: expected WxH such as 64x48, got {text!r}")
    return int(w), int(h)


EXTRACT_EXAMPLES = """
Examples:

  featcache extract data/ucf101.csv --out caches/ucf101_dinov2.zarr --frames uniform:16,keyframes:8

  featcache extract manifest.csv --out tiny.zarr --weights random --model-arg depth=2 --precision fp32

  featcache extract manifest.csv --out c.zarr --model tf_efficientnet_lite0 --weights lite0.pth
"""


@app.command(epilog=EXTRACT_EXAMPLES)
def extract(
    manifest: str = typer.Argument(..., help="CSV or JSONL manifest with video_id,path,label,split."),
    out: str = typer.Option(..., "--out", "-o", help="The Zarr store to create or resume."),
    model: str = typer.Option("vit_small_patch14_dinov2.lvd142m", help="Any timm model name."),
    weights: str = typer.Option("hub", help="hub (timm pretrained), random, or a .pth/.safetensors file."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="Extra timm create_model option KEY=VALUE (repeatable)."),
    img_size: int = typer.Option(224, help="Square input size of the model."),
    frames: str = typer.Option("uniform:16", help="Frame policies, e.g. uniform:16,keyframes:8 (their union is cached)."),
    layers: str = typer.Option("-1", help="ViT blocks to cache, e.g. -1 or -4,-1."),
    batch_size: int = typer.Option(32, help="Frames per forward pass (batches span videos)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16 (autocast)."),
    dtype: str = typer.Option("float16", help="Storage dtype of the tokens: float16 or float32."),
    decoder: str = typer.Option("auto", help="auto (decord checked against PyAV), decord or pyav."),
    luv_size: str = typer.Option("64x48", help="Decode size WxH for key-frame LUV scoring."),
    short_videos: str = typer.Option("repeat", help="Videos shorter than a policy: repeat frames or fail."),
    shard: Optional[str] = typer.Option(None, help="Process only shard I/N of the videos (stable hash of the id)."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache made with other settings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    devices: Optional[str] = typer.Option(None, help="One worker per device, each a shard: all, or cuda:0,cuda:1."),
    slurm: bool = typer.Option(False, "--slurm", help="Submit a Slurm job array (submitit), one task per shard."),
    shards: int = typer.Option(8, help="--slurm: number of array tasks (shards)."),
    partition: Optional[str] = typer.Option(None, help="--slurm: partition."),
    gpus_per_task: int = typer.Option(1, help="--slurm: GPUs per task (0 for CPU tasks)."),
    cpus_per_task: int = typer.Option(8, help="--slurm: CPUs per task."),
    mem_gb: int = typer.Option(32, help="--slurm: memory per task (GB)."),
    time: int = typer.Option(240, "--time", help="--slurm: time limit per task (minutes); preempted or timed-out tasks requeue and resume."),
    slurm_logs: str = typer.Option("slurm_logs", help="--slurm: folder for per-task logs (<job id>/)."),
    cluster: str = typer.Option("slurm", help="--slurm: slurm, or local to run the same array here (submitit's local executor)."),
    wait: bool = typer.Option(False, "--wait", help="--slurm: wait for every task and print their summaries."),
):
    """Decode the videos of MANIFEST, run the frozen model, write tokens to a Zarr cache.

    Re-running the same command resumes: finished videos are skipped, failed ones retried.
    """
    from featcache.encoder import EncoderConfig
    from featcache.extract import ExtractConfig, run_extract

    with user_errors():
        enc = EncoderConfig(model=model, weights=weights, img_size=img_size,
                            layers=_parse_ints(layers, "--layers"), precision=precision, device=device,
                            model_args=_parse_kv(model_arg, "--model-arg"))
        cfg = ExtractConfig(manifest=manifest, out=out, encoder=enc, frames=frames, batch_size=batch_size,
                            dtype=dtype, decoder=decoder, luv_size=_parse_size(luv_size),
                            short_videos=short_videos, overwrite=overwrite, shard=_parse_shard(shard),
                            threads=threads)
        if slurm:
            return _launch(cfg, shards, partition, gpus_per_task, cpus_per_task, mem_gb, time, slurm_logs, cluster, wait)
        if devices:
            return _on_devices(cfg, devices)
        summary = run_extract(cfg, show_progress=not quiet)
    _print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _launch(cfg, shards, partition, gpus, cpus, mem_gb, time_min, logs, cluster, wait) -> None:
    from featcache.cluster import SlurmConfig, launch_slurm

    if cfg.shard is not None:
        raise FeatcacheError("--slurm: give --shards N, not --shard I/N (each task takes one shard)")
    jobs = launch_slurm(cfg, SlurmConfig(shards, partition, gpus, cpus, mem_gb, time_min, logs=logs, cluster=cluster))
    typer.echo(f"submitted {len(jobs)} task(s) (job {jobs[0].job_id.split('_')[0]}); logs in {logs}/<job id>/; "
               f"progress: featcache cache status {cfg.out} --shards {shards}")
    if wait:
        failed = 0
        for job in jobs:
            result = job.result()
            failed += len(result["failed"])
            typer.echo(f"shard {result['shard'][0]}/{shards}: {result['done']} done, {result['skipped']} already "
                       f"cached, {len(result['failed'])} failed, {result['frames']} frames in {result['wall_s']:.1f} s")
        if failed:
            raise typer.Exit(1)


def _on_devices(cfg, devices: str) -> None:
    from featcache.cluster import parse_devices, run_on_devices

    if cfg.shard is not None:
        raise FeatcacheError("--devices: each device takes a shard; do not combine with --shard")
    names = parse_devices(devices)
    summaries = run_on_devices(cfg, names)
    for name, summary in zip(names, summaries):
        typer.echo(f"[{name}] ", nl=False)
        _print_summary(summary, cfg.out)
    if any(s.failed for s in summaries):
        raise typer.Exit(1)


def _print_summary(s, out: str) -> None:
    mb = s.bytes_written / 1e6
    typer.echo(f"extracted {s.done} videos, {len(s.failed)} failed, {s.skipped} already cached "
               f"(of {s.total}); {s.frames} frames in {s.wall_s:.1f} s = {s.frames_per_s:.1f} frames/s; "
               f"{mb:.1f} MB written to {out}")
    for line in s.warnings:
        typer.echo(f"warning: {line}")
    for video_id, reason in s.failed.items():
        typer.echo(f"failed: {video_id}: {reason}")


@cache_app.command("info", epilog="Example:\n\n  featcache cache info caches/ucf101.zarr --json")
def cache_info(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """What a cache holds: model, preprocessing, layers, policies, videos, sizes."""
    from featcache.cache.info import cache_facts, format_facts

    with user_errors():
        facts = cache_facts(path)
    typer.echo(json.dumps(facts, indent=2) if as_json else format_facts(facts))


@cache_app.command("verify", epilog="Example:\n\n  featcache cache verify caches/ucf101.zarr")
def cache_verify(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    quick: bool = typer.Option(False, "--quick", help="Check structure only; skip reading token values."),
):
    """Check every video entry is complete and consistent; exit 1 when not."""
    from featcache import open_cache

    with user_errors():
        cache = open_cache(path)
        problems = cache.verify(check_values=not quick)
    done, failed, staged = len(cache.video_ids("done")), len(cache.failures()), len(cache.staged())
    for p in problems:
        typer.echo(f"problem: {p}")
    note = f"; {staged} interrupted write(s) will be redone by the next extract run" if staged else ""
    verdict = "FAILED" if problems else "ok"
    typer.echo(f"verify {verdict}: {done} videos done, {failed} failed, {len(problems)} problem(s){note}")
    if problems:
        raise typer.Exit(1)


@cache_app.command("status", epilog="Example:\n\n  featcache cache status caches/k400.zarr --shards 64")
def cache_status(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    manifest: Optional[str] = typer.Option(None, help="The manifest (default: the one the cache was made from)."),
    shards: int = typer.Option(1, help="Show progress per shard of N."),
):
    """Progress across shards: done / failed / in progress / pending videos."""
    from featcache import open_cache
    from featcache.cluster import shard_status
    from featcache.manifest import read_manifest

    with user_errors():
        cache = open_cache(path)
        manifest = manifest or cache.attrs.get("manifest", {}).get("path")
        if not manifest:
            raise FeatcacheError("--manifest: this cache does not record its manifest; give it")
        if shards < 1:
            raise FeatcacheError(f"--shards: must be at least 1, got {shards}")
        rows = shard_status(cache, [it.video_id for it in read_manifest(manifest)], shards)
    for r in rows:
        typer.echo(f"shard {r['shard']}/{shards}: {r['done']} done, {r['failed']} failed, "
                   f"{r['in_progress']} in progress, {r['pending']} pending")
    total = {k: sum(r[k] for r in rows) for k in ("done", "failed", "in_progress", "pending")}
    typer.echo(f"total: {total['done']} done, {total['failed']} failed, {total['in_progress']} in progress, "
               f"{total['pending']} pending")


@cache_app.command("export", epilog="Examples:\n\n  featcache cache export c.zarr --format hdf5 c.h5\n\n  featcache cache export c.zarr --format npy c_npy/")
def cache_export(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    out: str = typer.Argument(..., help="OUT.h5, or a new folder for --format npy."),
    fmt: str = typer.Option("hdf5", "--format", help="hdf5 (one file) or npy (per-video .npy + .json)."),
):
    """Export tokens, per-video records and the provenance to HDF5 or per-video .npy files."""
    from featcache.cache.export import export_cache

    with user_errors():
        n = export_cache(path, fmt, out)
    typer.echo(f"exported {n} videos to {out} ({fmt})")


@cache_app.command("import", epilog="Examples:\n\n  featcache cache import c.h5 --out c.zarr\n\n  featcache cache import i3d_features.h5 --manifest ucf101.csv --model-name i3d --out i3d.zarr")
def cache_import(
    src: str = typer.Argument(..., help="A featcache HDF5 export, or an HDF5 file with one dataset per video id."),
    out: str = typer.Option(..., "--out", "-o", help="The Zarr store to create."),
    manifest: Optional[str] = typer.Option(None, help="Labels and splits for a foreign file (video_id,path,label,split)."),
    model_name: str = typer.Option("unknown", help="Foreign file: the model that made the features (recorded)."),
    frames: Optional[str] = typer.Option(None, help="Foreign file: resample every video to uniform:K frames."),
):
    """Import an HDF5 feature file into a store so it can be trained on."""
    from featcache.cache.export import import_hdf5

    with user_errors():
        n = import_hdf5(src, out, manifest, model_name, frames)
    typer.echo(f"imported {n} videos into {out}")


@app.command(epilog="Example:\n\n  featcache demo --out demo")
def demo(
    out: str = typer.Option("demo", "--out", "-o", help="Folder for the videos, manifest and cache."),
    per_class: int = typer.Option(12, help="Videos per class (4 motion classes)."),
    model: str = typer.Option("vit_small_patch14_dinov2.lvd142m", help="Any timm model name."),
    weights: str = typer.Option("random", help="random (no download), hub, or a weights file."),
    frames: str = typer.Option("uniform:8,keyframes:8", help="Frame policies."),
):
    """Generate a small dataset of moving shapes (class = direction of motion), then extract it."""
    from featcache.encoder import EncoderConfig
    from featcache.extract import ExtractConfig, run_extract
    from featcache.synthetic import make_dataset

    with user_errors():
        typer.echo(f"writing {4 * per_class} synthetic videos to {out}/videos ...")
        manifest = make_dataset(out, "motion", per_class=per_class, num_frames=32)
        cache = os.path.join(out, "cache.zarr")
        cfg = ExtractConfig(manifest=manifest, out=cache, frames=frames,
                            encoder=EncoderConfig(model=model, weights=weights))
        summary = run_extract(cfg)
    _print_summary(summary, cache)
    typer.echo(f"\nnext:\n  featcache cache info {cache}\n"
               f"  featcache train {cache} --head r3d --view uniform:8 --out {out}/runs/r3d")
    if summary.failed:
        raise typer.Exit(1)


TRAIN_EXAMPLES = """
Examples:

  featcache train caches/hmdb51.zarr --head r3d --view uniform:8 --out runs/r3d

  featcache train c.zarr --head pool --set head.temporal=concat --set head.mlp_layers=2 --set epochs=20

  featcache train c.zarr --config pipelines/adapter.yaml --set seed=1 --out runs/adapter_s1
"""


@app.command(epilog=TRAIN_EXAMPLES)
def train(
    cache: str = typer.Argument(..., help="A cache written by featcache extract."),
    head: Optional[str] = typer.Option(None, help="Head name (featcache heads lists them)."),
    view: Optional[str] = typer.Option(None, help="Frames to use, e.g. uniform:8 or keyframes:8."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file of options (same keys as --set)."),
    set_: list[str] = typer.Option([], "--set", help="Override KEY=VALUE, e.g. epochs=20, head.hidden=256 (repeatable)."),
    out: str = typer.Option("runs/latest", "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt."),
    list_heads: bool = typer.Option(False, "--list-heads", help="List heads and their options, then exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train a light head on the cached tokens: fit on train, select on val, report on test."""
    if list_heads:
        heads()
        return
    from featcache.train.loop import run_training

    with user_errors():
        cfg = _train_config(config, set_, head, view)
        results = run_training(cache, cfg, out, resume=resume, show_progress=not quiet)
    shown = {k: v for k, v in results.items() if k.split("/")[-1] in ("top1", "top5", "mean_class_acc", "macro_f1", "mAP")}
    typer.echo(f"trained {cfg.head} on {cfg.view}; best epoch {results['best_epoch']}; "
               + ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())))
    typer.echo(f"run directory: {out} (metrics.json, log.jsonl, best.pt, config.yaml)")


def _train_config(path: Optional[str], pairs: list[str], head: Optional[str], view: Optional[str]):
    from featcache.config import build_config, parse_assignments

    values = {}
    if path:
        values = _read_yaml(path)
    try:
        cfg = build_config(values, where=f"{path}: " if path else "")
        flags = {k: v for k, v in (("head", head), ("view", view)) if v is not None}
        cfg = build_config({**flags, **parse_assignments(pairs)}, base=cfg, where="--set ")
    except ValueError as exc:
        raise FeatcacheError(str(exc)) from None
    from featcache.registry import head_options, list_heads

    if cfg.head not in list_heads():
        raise FeatcacheError(f"--head: unknown head {cfg.head!r}; available: {', '.join(list_heads())}")
    unknown = sorted(set(cfg.head_options) - set(head_options(cfg.head)))
    if unknown:
        raise FeatcacheError(f"head {cfg.head} has no option {', '.join(unknown)}; "
                             f"options: {', '.join(head_options(cfg.head))}")
    return cfg


def _read_yaml(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise FeatcacheError(f"--config: no such file {path!r}")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise FeatcacheError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise FeatcacheError(f"{path}: expected a mapping of options at the top level")
    return values


@app.command("eval", epilog="Example:\n\n  featcache eval runs/r3d --split test")
def eval_(
    run_dir: str = typer.Argument(..., help="A featcache train run directory."),
    split: str = typer.Option("test", help="train, val or test."),
    cache: Optional[str] = typer.Option(None, help="Evaluate on this cache instead of the one trained on."),
    checkpoint: str = typer.Option("best", help="best or last."),
):
    """Re-evaluate a trained head on a split; refuses caches from another model or preprocessing."""
    from featcache import open_cache
    from featcache.train.loop import SPLITS, evaluate_checkpoint

    with user_errors():
        if split not in SPLITS:
            raise FeatcacheError(f"--split: unknown {split!r}; expected train, val or test")
        if checkpoint not in ("best", "last"):
            raise FeatcacheError(f"--checkpoint: expected best or last, got {checkpoint!r}")
        results = evaluate_checkpoint(os.path.join(run_dir, f"{checkpoint}.pt"),
                                      open_cache(cache) if cache else None, splits=(split,), out_dir=run_dir)
        if not results:
            raise FeatcacheError(f"the cache has no videos in the {split} split")
    with open(os.path.join(run_dir, f"eval_{split}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    typer.echo(json.dumps(results, indent=2, sort_keys=True))


ABLATE_EXAMPLES = """
Examples:

  featcache ablate pipelines/adapter_pooling.yaml --cache caches/hmdb51.zarr --out runs/adapter --dry-run

  featcache ablate pipelines/advise_tmm.yaml --cache caches/diving48.zarr --out runs/advise

  featcache ablate sweep.yaml --out runs/s1 --only 0,3 --filter head.temporal=avg --set epochs=5
"""


@app.command(epilog=ABLATE_EXAMPLES)
def ablate(
    sweep_file: str = typer.Argument(..., help="A sweep YAML file (see README: Sweeps)."),
    out: str = typer.Option("runs/sweep", "--out", "-o", help="Folder for cells/, leaderboard.csv and .md."),
    cache: Optional[str] = typer.Option(None, help="The cache to use (overrides the file's cache:)."),
    set_: list[str] = typer.Option([], "--set", help="Override a base option KEY=VALUE for every cell."),
    only: Optional[str] = typer.Option(None, help="Run only these cells: comma-separated indices or names."),
    filter_: list[str] = typer.Option([], "--filter", help="Run only cells with KEY=VALUE (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, fused passes and estimated cost."),
    memory_gb: Optional[float] = typer.Option(None, help="Memory budget of one fused pass (default: half the free RAM, or 80% of free GPU memory)."),
    max_fused: int = typer.Option(32, help="Most heads trained in one pass."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Run a grid of trainings from one cache, fusing cells that read the same data into one pass."""
    from featcache.ablate import SweepError, load_sweep, select
    from featcache.ablate_run import run_sweep
    from featcache.config import parse_assignments

    with user_errors():
        try:
            sweep = load_sweep(sweep_file, cache=cache, overrides=parse_assignments(set_))
            filters = parse_assignments(filter_)
            cells = select(sweep.cells, only.split(",") if only else None, filters)
            if not cells:
                raise FeatcacheError(f"{sweep_file}: no cell matches --only/--filter")
            memory = int(memory_gb * 1e9) if memory_gb else None
            rows = run_sweep(sweep, out, cells, dry_run=dry_run, memory_bytes=memory, max_fused=max_fused,
                             show_progress=not quiet, echo=typer.echo)
        except (SweepError, ValueError) as exc:
            raise FeatcacheError(str(exc)) from None
    if rows:
        best = min(rows, key=lambda r: (-1 if sweep.goal == "maximize" else 1) * r["metrics"][sweep.metric])
        typer.echo(f"best: {best['cell']} {sweep.metric} {best['metrics'][sweep.metric]:.4f}; "
                   f"leaderboard: {out}/leaderboard.md, {out}/leaderboard.csv")


@app.command()
def heads():
    """List the registered heads and their options with defaults."""
    from featcache.registry import head_options, list_heads

    for name in list_heads():
        opts = ", ".join(f"{k}={v!r}" for k, v in head_options(name).items())
        typer.echo(f"{name:12s} {opts}")


manifest_app = typer.Typer(help="Build manifests from standard dataset layouts, and check them.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
_OUT = typer.Option(..., "--out", "-o", help="The manifest CSV to write.")
_VAL = typer.Option(0.1, help="Fraction of train carved into val (deterministic, seeded).")
_SEED = typer.Option(0, help="Seed of the val carve.")


def _convert(out: str, root: str, converter, *args) -> None:
    from featcache.manifest import write_manifest

    with user_errors():
        rows, notes = converter(root, *args)
        write_manifest(rows, out, root, notes)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    labels = len({lb for r in rows for lb in r["label"].split(";") if lb})
    typer.echo(f"wrote {out}: {len(rows)} videos {counts}, {labels} labels; check it with featcache manifest check {out}")


@manifest_app.command("ucf101", epilog="Example:\n\n  featcache manifest ucf101 UCF-101 --splits ucfTrainTestlist --split-id 1 --out ucf101_s1.csv")
def manifest_ucf101(root: str = typer.Argument(..., help="Folder with <Class>/v_<Class>_gXX_cYY.avi."),
                    splits: str = typer.Option(..., help="Folder with classInd.txt, trainlist0N.txt, testlist0N.txt."),
                    split_id: int = typer.Option(1, help="Official split 1, 2 or 3."),
                    out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """UCF101 from its official split files (val carved from train by performer group)."""
    from featcache import converters

    _convert(out, root, converters.ucf101, splits, split_id, val_fraction, seed)


@manifest_app.command("hmdb51", epilog="Example:\n\n  featcache manifest hmdb51 hmdb51_org --splits testTrainMulti_7030_splits --out hmdb51_s1.csv")
def manifest_hmdb51(root: str = typer.Argument(..., help="Folder with <class>/<video>.avi."),
                    splits: str = typer.Option(..., help="Folder with <class>_test_split<N>.txt files."),
                    split_id: int = typer.Option(1, help="Official split 1, 2 or 3."),
                    out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """HMDB51 from its official split files."""
    from featcache import converters

    _convert(out, root, converters.hmdb51, splits, split_id, val_fraction, seed)


@manifest_app.command("kinetics", epilog="Example:\n\n  featcache manifest kinetics k400 --csv train.csv --csv validate.csv --out k400.csv")
def manifest_kinetics(root: str = typer.Argument(..., help="Folder holding the clips (any depth)."),
                      csv_files: list[str] = typer.Option(..., "--csv", help="Official CSV(s) (repeatable)."),
                      out: str = _OUT):
    """Kinetics-400/600/700 from the official CSVs."""
    from featcache import converters

    _convert(out, root, converters.kinetics, csv_files)


@manifest_app.command("ssv2", epilog="Example:\n\n  featcache manifest ssv2 20bn-something-something-v2 --labels labels.json --train train.json --val validation.json --out ssv2.csv")
def manifest_ssv2(root: str = typer.Argument(..., help="Folder with <id>.webm."),
                  labels: str = typer.Option(..., help="something-something-v2-labels.json."),
                  train_json: str = typer.Option(..., "--train", help="something-something-v2-train.json."),
                  val_json: str = typer.Option(..., "--val", help="something-something-v2-validation.json."),
                  test_json: Optional[str] = typer.Option(None, "--test", help="something-something-v2-test.json."),
                  out: str = _OUT):
    """Something-Something v2 from the official JSON files."""
    from featcache import converters

    _convert(out, root, converters.ssv2, labels, train_json, val_json, test_json)


@manifest_app.command("diving48", epilog="Example:\n\n  featcache manifest diving48 rgb --train Diving48_V2_train.json --test Diving48_V2_test.json --out diving48.csv")
def manifest_diving48(root: str = typer.Argument(..., help="Folder with <vid_name>.mp4."),
                      train_json: str = typer.Option(..., "--train"), test_json: str = typer.Option(..., "--test"),
                      out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """Diving48 from the official JSON files."""
    from featcache import converters

    _convert(out, root, converters.diving48, train_json, test_json, val_fraction, seed)


@manifest_app.command("charades", epilog="Example:\n\n  featcache manifest charades Charades_v1_480 --train Charades_v1_train.csv --test Charades_v1_test.csv --classes Charades_v1_classes.txt --out charades.csv")
def manifest_charades(root: str = typer.Argument(..., help="Folder with <id>.mp4."),
                      train_csv: str = typer.Option(..., "--train"), test_csv: str = typer.Option(..., "--test"),
                      classes: str = typer.Option(..., help="Charades_v1_classes.txt."),
                      out: str = _OUT, val_fraction: float = _VAL, seed: int = _SEED):
    """Charades (multi-label) from the official CSVs and class list."""
    from featcache import converters

    _convert(out, root, converters.charades, train_csv, test_csv, classes, val_fraction, seed)


@manifest_app.command("folder", epilog="Example:\n\n  featcache manifest folder my_videos --out mine.csv --val-fraction 0.1 --test-fraction 0.2")
def manifest_folder(root: str = typer.Argument(..., help="Folder with <class>/<video> files."),
                    out: str = _OUT, val_fraction: float = _VAL,
                    test_fraction: float = typer.Option(0.2, help="Fraction for test."), seed: int = _SEED):
    """A generic root/<class>/<video> layout with a deterministic, seeded train/val/test split."""
    from featcache import converters

    _convert(out, root, converters.folder, val_fraction, test_fraction, seed)


@manifest_app.command("check", epilog="Example:\n\n  featcache manifest check ucf101_s1.csv")
def manifest_check(path: str = typer.Argument(..., help="A manifest."),
                   as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
    """Missing files, duplicate ids, classes without training videos, label sets, class balance."""
    from featcache.manifest import check_manifest

    with user_errors():
        facts, errors = check_manifest(path)
    if as_json:
        typer.echo(json.dumps({**facts, "errors": errors}, indent=2))
    else:
        typer.echo(f"{path}: {facts['videos']} videos {facts['per_split']}; {facts['classes']} classes "
                   f"{facts['classes_per_split']}; multi-label: {facts['multi_label']}; unlabelled: {facts['unlabelled']}")
        typer.echo(f"train class balance: smallest {facts['smallest_classes']}, largest {facts['largest_classes']}")
        for e in errors[:20]:
            typer.echo(f"error: {e}")
        if len(errors) > 20:
            typer.echo(f"... and {len(errors) - 20} more errors")
        typer.echo(f"check {'FAILED' if errors else 'ok'}: {len(errors)} error(s), {facts['missing_files']} missing file(s)")
    if errors:
        raise typer.Exit(1)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        from featcache import __version__

        typer.echo(f"featcache {__version__}")
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
