"""The app every command module registers on, the error convention and the option parsers they share."""
from __future__ import annotations

import contextlib
import json
import types
from typing import Optional

import typer

from featcache.errors import FeatcacheError, OptionError

app = typer.Typer(help="Decode videos once, run a frozen image model once, train many heads from the cache.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
cache_app = typer.Typer(help="Inspect and check a cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


# Options that `extract --slurm` and `ablate --slurm` share (one definition, one help text).
# the --slurm options extract and ablate share (typer option objects, one spelling of each)
SLURM_OPTIONS = types.SimpleNamespace(
    cluster=typer.Option("slurm", help="--slurm: slurm, or local to run the same array here (submitit's local executor)."),
    partition=typer.Option(None, help="--slurm: partition."),
    gpus_per_task=typer.Option(1, help="--slurm: GPUs per task (0 for CPU tasks)."),
    cpus_per_task=typer.Option(8, help="--slurm: CPUs per task."),
    mem_gb=typer.Option(32, help="--slurm: memory per task (GB)."),
    slurm_logs=typer.Option("slurm_logs", help="--slurm: folder for per-task logs (<job id>/)."),
    poll=typer.Option(10.0, help="--slurm --wait: seconds between progress polls."),
)


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted; run the same command again to resume"):
    """A FeatcacheError becomes one line on stderr and exit status 2; Ctrl-C the line
    ``interrupted`` (how to resume) and exit status 130."""
    try:
        yield
    except FeatcacheError as exc:
        message = f"{exc.flag}: {exc.message}" if isinstance(exc, OptionError) else str(exc)
        typer.echo(f"featcache: error: {message}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"featcache: {interrupted}", err=True)
        raise typer.Exit(130) from None


def parse_kv(pairs: list[str], option: str) -> dict:
    """``KEY=VALUE`` pairs, each VALUE read as YAML (JSON is YAML too), so ``--model-arg
    pretrained_cfg_overlay={mean: [0.5, 0.5, 0.5]}`` is a dict; a value YAML cannot read is one line."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FeatcacheError(f"{option}: expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)  # numbers such as 1e-5 (a string to YAML 1.1)
        except json.JSONDecodeError:
            try:
                out[key] = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError as exc:
                problem = str(getattr(exc, "problem", "") or exc).splitlines()[0]
                raise FeatcacheError(f"{option} {key}: {value!r} is not a YAML value ({problem}); quote the whole "
                                     f"pair, e.g. {option} '{key}={{a: 1, b: [2, 3]}}'") from None
    return out


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise FeatcacheError(f"{option}: expected comma-separated integers such as -1 or -4,-1, got {text!r}") from None


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise FeatcacheError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def parse_size(text: str) -> "tuple[int, int] | str":
    if text.strip().lower() == "full":
        return "full"
    w, sep, h = text.partition("x")
    if not (sep and w.isdigit() and h.isdigit()) or int(w) < 2 or int(h) < 2:
        raise FeatcacheError(f"--luv-size: expected WxH such as 64x48, or full, got {text!r}")
    return int(w), int(h)


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")):
    if version:
        from featcache.version import __version__

        typer.echo(f"featcache {__version__}")
        raise typer.Exit()
