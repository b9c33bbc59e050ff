"""`featcache ablate SWEEP.yaml`: expand a sweep into cells, train cells that read the same data
in one fused pass, and write a leaderboard.

Sweep file:

    cache: caches/hmdb51_dinov2_s14.zarr        # or --cache on the command line
    base: {head: pool, view: uniform:8, epochs: 10}
    method: grid                                # grid (default) | list
    parameters:                                 # grid: the product of the axes' values
      view: {values: [uniform:8, uniform:16]}
      head.temporal: {values: [avg, concat]}
      seed: {values: [0, 1, 2]}                 # replicates: the leaderboard reports mean +- std (n)
      manifest: {values: [s1.csv, s2.csv]}      # official splits: replicates too ("mean over 3 splits")
    zip: [[head.hidden, head.mlp_hidden]]       # optional: axes that vary together
    cells: [{head: r3d}, {head: pool}]          # method: list: explicit cells
    metric: {name: val/top1, goal: maximize}
"""
from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

from featcache.errors import FeatcacheError
from featcache.spec.config import ConfigError, TrainConfig, build_config, flatten, load_yaml_mapping

SWEEP_KEYS = ("name", "description", "cache", "base", "method", "parameters", "zip", "cells", "metric")
METHODS = ("grid", "list")
GOALS = ("maximize", "minimize")


@dataclass(frozen=True)
class Cell:
    index: int
    name: str
    settings: dict  # the varied settings, flat keys
    config: TrainConfig


@dataclass(frozen=True)
class Sweep:
    path: str
    cache: str
    axes: tuple[str, ...]
    cells: tuple[Cell, ...]
    metric: str
    goal: str


class SweepError(FeatcacheError):
    """A sweep file that cannot run; the message names the file, key and value."""


def load_sweep(path: str, cache: str | None = None, overrides: dict | None = None) -> Sweep:
    """Read and validate a sweep file (everything except what needs the cache's contents)."""
    try:
        spec = load_yaml_mapping(path, missing="no such sweep file")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if "axes" in unknown and "sweep" in unknown:  # the record ablate writes into its --out folder
        raise SweepError(f"{path} is the record featcache ablate wrote of the sweep file {spec['sweep']}; "
                         f"run that file with the same --out to resume (finished cells are skipped)")
    if unknown:
        raise SweepError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(SWEEP_KEYS)}")
    cache = cache or spec.get("cache")
    if not cache:
        raise SweepError(f"{path}: no cache: give `cache:` in the file or --cache")
    base = flatten(_mapping(spec.get("base", {}), path, "base"))
    base.update(overrides or {})
    settings, axes = _expand(spec, path)
    metric, goal = _metric(spec.get("metric", {}), path)
    cells = []
    for i, varied in enumerate(settings):
        name = cell_name(i, varied)
        try:
            cfg = build_config(_head_files({**base, **varied}, os.path.dirname(os.path.abspath(path))))
        except ConfigError as exc:
            raise SweepError(f"{path}: cell {name}: {exc}") from None
        cells.append(Cell(i, name, varied, cfg))
    return Sweep(path, cache, tuple(axes), tuple(cells), metric, goal)


def _head_files(values: dict, folder: str) -> dict:
    """A ``head: FILE.py:Class`` with a relative path names the file beside the sweep file when
    one is there (else it stays relative to the current folder)."""
    head = values.get("head")
    if isinstance(head, str) and ":" in head:
        target, _, attr = head.rpartition(":")
        if target.endswith(".py") and not os.path.isabs(target) and os.path.isfile(os.path.join(folder, target)):
            return {**values, "head": f"{os.path.join(folder, target)}:{attr}"}
    return values


def _mapping(value, path: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise SweepError(f"{path}: {key}: expected a mapping, got {value!r}")
    return value


def _expand(spec: dict, path: str) -> tuple[list[dict], list[str]]:
    """Pure: the list of varied settings per cell, and the varied axes."""
    method = spec.get("method", "grid")
    if method not in METHODS:
        raise SweepError(f"{path}: method: {method!r} is not one of {', '.join(METHODS)}")
    if method == "list":
        cells = spec.get("cells")
        if not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells):
            raise SweepError(f"{path}: cells: method list needs a non-empty list of mappings")
        flat = [flatten(c) for c in cells]
        axes = sorted({k for c in flat for k in c})
        return flat, axes
    params = _mapping(spec.get("parameters", {}), path, "parameters")
    values = {}
    for key, entry in params.items():
        if not isinstance(entry, dict) or set(entry) != {"values"} or not isinstance(entry["values"], list) \
                or not entry["values"]:
            raise SweepError(f"{path}: parameters.{key}: expected {{values: [...]}} with at least one value, got {entry!r}")
        values[key] = entry["values"]
    units = _zip_units(spec.get("zip", []), values, path)
    cells = []
    for combo in itertools.product(*[list(zip(*(values[k] for k in unit))) for unit in units]):
        cell = {}
        for unit, vals in zip(units, combo):
            cell.update(dict(zip(unit, vals)))
        cells.append(cell)
    return cells, list(values)


def _zip_units(zipped, values: dict, path: str) -> list[tuple[str, ...]]:
    if not isinstance(zipped, list) or not all(isinstance(g, list) for g in zipped):
        raise SweepError(f"{path}: zip: expected a list of lists of parameter names, got {zipped!r}")
    seen = set()
    units = []
    for group in zipped:
        for key in group:
            if key not in values:
                raise SweepError(f"{path}: zip: {key!r} is not a parameter")
            if key in seen:
                raise SweepError(f"{path}: zip: {key!r} appears in two zip groups")
            seen.add(key)
        if len({len(values[k]) for k in group}) > 1:
            raise SweepError(f"{path}: zip: {', '.join(group)} have different numbers of values")
        units.append(tuple(group))
    return units + [(k,) for k in values if k not in seen]


def _metric(spec, path: str) -> tuple[str, str]:
    spec = _mapping(spec, path, "metric")
    unknown = sorted(set(spec) - {"name", "goal"})
    if unknown:
        raise SweepError(f"{path}: metric: unknown key {unknown[0]!r}; expected name, goal")
    name, goal = spec.get("name", "val/top1"), spec.get("goal", "maximize")
    if not isinstance(name, str) or not re.fullmatch(r"(train|val|test)/\w+", name):
        raise SweepError(f"{path}: metric.name: expected a metrics.json key such as val/top1, got {name!r}")
    if goal not in GOALS:
        raise SweepError(f"{path}: metric.goal: {goal!r} is not one of {', '.join(GOALS)}")
    return name, goal


def cell_name(index: int, settings: dict) -> str:
    """A readable, file-system-safe, unique name: ``003_view=uniform-8_head.temporal=avg``."""
    parts = [f"{k}={v}" for k, v in settings.items()]
    text = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))[:90].strip("-_")
    return f"{index:03d}_{text}" if text else f"{index:03d}"


def select(cells, only: list[str] | None = None, filters: dict | None = None):
    """Cells named by index or name in ``only`` and matching every ``key=value`` filter."""
    out = []
    for cell in cells:
        if only and str(cell.index) not in only and cell.name not in only:
            continue
        if filters and any(str(cell.settings.get(k, _get(cell.config, k))) != str(v) for k, v in filters.items()):
            continue
        out.append(cell)
    return out


def _get(cfg: TrainConfig, key: str):
    if key.startswith("head."):
        return cfg.head_options.get(key[5:])
    return getattr(cfg, key, None)
