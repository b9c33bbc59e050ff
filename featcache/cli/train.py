"""`featcache train`, `pretrain`, `probe` and `heads` (`eval` is in cli/evaluate.py, `ablate` in cli/ablate.py)."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer

from featcache.cli.app import app, user_errors
from featcache.errors import FeatcacheError

TRAIN_EXAMPLES = """
Examples:

  featcache train caches/hmdb51.zarr --head r3d --view uniform:8 --out runs/r3d

  featcache train c.zarr --head pool --set head.temporal=concat --set head.mlp_layers=2 --set epochs=20

  featcache train c.zarr --config pipelines/advise_r3d.yaml --set seed=1 --out runs/r3d_s1

  featcache train c.zarr --head my_heads.py:TinyHead --set head.hidden=64 --set log=tensorboard

  featcache train ucf101.zarr --head r3d --manifest ucf101_s2.csv --out runs/r3d_split2   # labels and splits of split 2
"""


# options shared by train, pretrain and probe
_CONFIG = typer.Option(None, "--config", "-c", help="YAML file of options (same keys as --set).")
_SET = typer.Option([], "--set", help="Override KEY=VALUE, e.g. epochs=20, head.hidden=256 (repeatable).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace the run already in --out (refused otherwise).")
_MANIFEST = typer.Option(None, "--manifest", "-m", help="Labels and splits from this training manifest "
                         "(video_id,label,split), matched to the cache by video_id (default: the store's own).")


@app.command(epilog=TRAIN_EXAMPLES)
def train(
    cache: str = typer.Argument(..., help="A cache written by featcache extract."),
    head: Optional[str] = typer.Option(None, help="Head name (featcache heads lists them), or your own: FILE.py:Class or module:Class."),
    view: Optional[str] = typer.Option(None, help="Frames to use, e.g. uniform:8 or keyframes:8. Default: from the "
                                       "cache, its first cached uniform:N (clips:N for a video encoder's cache), "
                                       "else uniform:8 (clips:8)."),
    config: Optional[str] = _CONFIG,
    set_: list[str] = _SET,
    out: str = typer.Option("runs/latest", "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt."),
    overwrite: bool = _OVERWRITE,
    init: Optional[str] = typer.Option(None, "--init", help="Start the head from a featcache pretrain run (its TMM; the classifier is new)."),
    manifest: Optional[str] = _MANIFEST,
    list_heads: bool = typer.Option(False, "--list-heads", help="List heads and their options, then exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train a light head on the cached tokens: fit on train, select on val, report on test."""
    if list_heads:
        heads(head=head)
        return
    from featcache.train.fit import run_training

    again = _resume_command(cache, head, view, config, set_, init, manifest, out)
    with user_errors(interrupted=f"interrupted; resume with: {again}"):
        if resume and overwrite:
            raise FeatcacheError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        if resume:
            _check_resumable(out)
        cfg = _train_config(config, set_, head, view, init=init, manifest=manifest, cache_path=cache)
        results = run_training(cache, cfg, out, resume=resume, overwrite=overwrite, show_progress=not quiet,
                               echo=typer.echo)
    for line in summary_lines(cfg, results, out):
        typer.echo(line)


def summary_lines(cfg, results: dict, out: str) -> list[str]:
    """What a finished `train` prints: the kept epoch and the val/test metrics, or, where a split
    is empty, that it was not evaluated (never a bare "best epoch 0;")."""
    from featcache.train.meta import Metrics

    metrics = Metrics.from_json(results)
    shown = {k: v for k, v in metrics.scores.items()
             if k.split("/")[-1] in ("top1", "top5", "mean_class_acc", "macro_f1", "mAP")}
    kept = f"best epoch {metrics.best_epoch} on val" if cfg.select == "val" else \
        f"kept the last epoch ({metrics.best_epoch}, select: last)"
    missing = [s for s in ("val", "test") if not any(k.startswith(f"{s}/") for k in shown)]
    lines = [f"trained {cfg.head} on {cfg.view}; {kept}"
             + "".join(f"; {k} {v:.4f}" for k, v in sorted(shown.items()))]
    if missing == ["val", "test"]:
        lines.append("warning: no val or test videos in the splits, so the head was not evaluated on val or test: "
                     "nothing measures how well it does; give a manifest with val and test splits (--manifest M.csv), "
                     f"or evaluate later with featcache eval {out} --manifest M.csv")
    elif missing == ["test"]:
        lines.append("warning: no test videos in the splits, so there are no test metrics; evaluate later with "
                     f"featcache eval {out} --manifest M.csv")
    lines.append(f"run directory: {out} (metrics.json, log.jsonl, best.pt, config.yaml)")
    return lines


def _resume_command(cache, head, view, config, pairs, init, manifest, out, command: str = "train",
                    task: Optional[str] = None) -> str:
    """The `featcache train` (or `pretrain`) command that continues this run (the same options and --resume)."""
    import shlex

    words = ["featcache", command, cache]
    for flag, value in (("--task", task), ("--head", head), ("--view", view), ("--config", config), ("--init", init),
                        ("--manifest", manifest)):
        words += [flag, value] if value is not None else []
    for pair in pairs:
        words += ["--set", pair]
    return " ".join(shlex.quote(w) for w in [*words, "--out", out, "--resume"])


def _check_resumable(out: str) -> None:
    """--resume needs a run to continue: refuse a folder that does not exist or holds none."""
    if not os.path.isdir(out):
        raise FeatcacheError(f"--resume: {out} does not exist, so there is no run to continue; "
                             "drop --resume to start a new run there")
    from featcache.train import rundir

    has = {name for name in ("last", "metrics", "config") if rundir.has(out, name)}
    if "metrics" in has and "last" not in has:
        raise FeatcacheError(f"--resume: the run in {out} has finished; nothing to continue "
                             "(eval it with featcache eval, or give --overwrite to train it anew)")
    if not has:  # a run interrupted before its first epoch ended holds config.yaml: it starts at epoch 0
        raise FeatcacheError(f"--resume: {out} holds no featcache run to continue; drop --resume to start one there")


def default_view(attrs) -> str:
    """The view a cache serves as it is when none is given: its first cached ``uniform:N`` (or
    ``clips:N`` for a video encoder's cache), else ``uniform:8`` (``clips:8``) served from its pool."""
    from featcache.spec.policy import default_view as policy_default_view

    return policy_default_view(list(attrs.policies), "clip" if attrs.clip_rows else "frame")


def _train_config(path: Optional[str], pairs: list[str], head: Optional[str], view: Optional[str],
                  init: Optional[str] = None, base=None, manifest: Optional[str] = None, cache_path: Optional[str] = None):
    from featcache.spec.config import build_config, load_yaml_mapping, parse_assignments

    # a bad file or value is a ConfigError (one line), a bad --set pair an OptionError (under its flag)
    values = load_yaml_mapping(path, missing="--config: no such file") if path else {}
    cfg = build_config(values, base=base, where=f"{path}: " if path else "")
    assigned = parse_assignments(pairs)
    if cache_path and view is None and "view" not in values and "view" not in assigned:
        view = _cache_view(cache_path)
    flags = {k: v for k, v in (("head", head), ("view", view), ("init", init), ("manifest", manifest))
             if v is not None}
    cfg = build_config({**flags, **assigned}, base=cfg, where="--set ")
    from featcache.heads.registry import head_options

    try:
        options = head_options(cfg.head)  # a user's head (FILE.py:Class, module:Class) is imported and checked here
    except ValueError as exc:
        raise FeatcacheError(f"--head: {exc}") from None
    unknown = sorted(set(cfg.head_options) - set(options))
    if unknown:
        raise FeatcacheError(f"head {cfg.head} has no option {', '.join(unknown)}; "
                             f"options: {', '.join(options) or 'none'}")
    return cfg


def _cache_view(cache_path: str) -> Optional[str]:
    """:func:`default_view` of the store at ``cache_path`` (None where it cannot be opened: the
    training then says why in one line)."""
    from featcache.cache.store import open_cache

    try:
        attrs = open_cache(cache_path).facts
    except FeatcacheError:
        return None
    return default_view(attrs)


PRETRAIN_EXAMPLES = """
Examples:

  featcache extract m.csv --out dense.zarr --frames stride:1

  featcache pretrain dense.zarr --task prp --head r3d --view stride:1 --out runs/prp

  featcache train dense.zarr --head r3d --view uniform:8 --init runs/prp --out runs/ft
"""


@app.command(epilog=PRETRAIN_EXAMPLES)
def pretrain(
    cache: str = typer.Argument(..., help="A cache holding a dense pool (extract --frames stride:1)."),
    task: str = typer.Option("prp", help="Pretext task: prp (playback-rate perception, AdViSe)."),
    head: Optional[str] = typer.Option(None, help="Head to pre-train (default r3d)."),
    view: Optional[str] = typer.Option(None, help="The dense pool to sample clips from (default stride:1)."),
    config: Optional[str] = _CONFIG,
    set_: list[str] = _SET,
    out: str = typer.Option("runs/pretrain", "--out", "-o", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last.pt (same options)."),
    overwrite: bool = _OVERWRITE,
    manifest: Optional[str] = _MANIFEST,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines."),
):
    """Self-supervised pre-training of a head from a dense frame pool (video labels unused); then
    fine-tune with `featcache train --init RUN_DIR`."""
    from featcache.spec.config import TrainConfig
    from featcache.spec.view import View
    from featcache.train.meta import Metrics
    from featcache.train.pretrain import run_pretrain

    again = _resume_command(cache, head, view, config, set_, None, manifest, out, command="pretrain", task=task)
    with user_errors(interrupted=f"interrupted; resume with: {again}"):
        if resume and overwrite:
            raise FeatcacheError("--resume continues the run in --out and --overwrite replaces it; give one of them")
        if resume:
            _check_resumable(out)
        base = TrainConfig(head="r3d", view=View("stride:1"), epochs=15)
        cfg = _train_config(config, set_, head, view, base=base, manifest=manifest)
        results = run_pretrain(cache, cfg, out, task_name=task, overwrite=overwrite, show_progress=not quiet,
                               echo=typer.echo, resume=resume)
    metrics = Metrics.from_json(results)
    rate = metrics.get("val/top1")
    typer.echo(f"pre-trained {cfg.head} on {task}; best epoch {metrics.best_epoch}; "
               + (f"val rate accuracy {rate:.4f} (chance {1 / 4:.2f})" if rate is not None else "no val split"))
    typer.echo(f"run directory: {out}; fine-tune: {finetune_command(cache, cfg, out)}")


def finetune_command(cache: str, cfg, out: str) -> str:
    """The `featcache train` command that fine-tunes a pre-training: the head's options and the
    token selection (layers, tokens, spatial, channels) must be the pre-training's for --init."""
    import shlex

    from featcache.spec.config import TrainConfig

    words = ["featcache", "train", cache, "--head", cfg.head, "--view", "uniform:8", "--init", out]
    for key, value in sorted(cfg.head_options.items()):
        words += ["--set", f"head.{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    default, ours = TrainConfig().view.as_dict(), cfg.view.as_dict()
    for key in ("layers", "tokens", "spatial", "channels"):
        if ours[key] != default[key]:
            value = ours[key]
            words += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    if cfg.manifest:
        words += ["--manifest", cfg.manifest]
    return " ".join(shlex.quote(w) for w in words)


PROBE_EXAMPLES = """
Examples:

  featcache probe caches/ucf101.zarr --method knn --view uniform:8 --feature cls --out runs/knn

  featcache probe caches/ucf101.zarr --method logreg --feature cls_mean --out runs/logreg
"""


@app.command(epilog=PROBE_EXAMPLES)
def probe(
    cache: str = typer.Argument(..., help="A cache written by featcache extract."),
    method: str = typer.Option(..., help="knn (DINOv2 weighted k-NN, k 10/20 on val) or logreg (C on val)."),
    view: Optional[str] = typer.Option(None, help="Frames to pool, e.g. uniform:8."),
    feature: str = typer.Option("cls_mean", help="Per-frame feature averaged over time: cls, mean (patches) or cls_mean."),
    set_: list[str] = typer.Option([], "--set", help="View keys: layers, tokens, spatial, channels (KEY=VALUE)."),
    out: str = typer.Option("runs/probe", "--out", "-o", help="Run directory."),
    overwrite: bool = _OVERWRITE,
    manifest: Optional[str] = _MANIFEST,
):
    """Closed-form baselines on pooled per-video features: k-NN and logistic regression."""
    from featcache.train.probe import run_probe

    with user_errors():
        cfg = _train_config(None, set_, None, view, manifest=manifest)
        results = run_probe(cache, cfg, out, method, feature, overwrite=overwrite, echo=typer.echo)
    shown = {k: v for k, v in results.items() if k.split("/")[-1] in ("top1", "top5", "mean_class_acc", "k", "C")}
    typer.echo(f"{method} on {feature} features; " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
    typer.echo(f"run directory: {out} (metrics.json, predictions_<split>.csv, config.yaml)")


@app.command(epilog="Examples:\n\n  featcache heads\n\n  featcache heads --head my_heads.py:TinyHead")
def heads(head: Optional[str] = typer.Option(None, "--head", help="Only this head: a name, FILE.py:Class or module:Class.")):
    """List the heads (built in, and registered by installed packages under the entry-point group
    featcache.heads) and their options with defaults; --head lists one, your own included."""
    from featcache.heads.registry import REQUIRED, head_options, head_source, list_heads
    from featcache.train.meta import HeadSource

    with user_errors():
        for name in [head] if head else list_heads():
            try:
                options, source = head_options(name), HeadSource.from_json(head_source(name))
            except ValueError as exc:
                if head:
                    raise FeatcacheError(f"--head: {exc}") from None
                typer.echo(f"{name:12s} (an installed entry point that cannot be loaded: {exc})")
                continue
            opts = ", ".join(f"{k}=<required>" if v is REQUIRED else f"{k}={v!r}" for k, v in options.items())
            origin = "" if source.builtin else f"   [{source.where}]"
            typer.echo(f"{name:12s} {opts}{origin}")
