"""Sweep leaderboards: OUT/leaderboard.csv and OUT/leaderboard.md (+ leaderboard.png with
matplotlib). One row per cell, sorted by the sweep metric, the best cell marked, and a summary per
axis (mean metric per value) so each factor's effect shows at a glance. A sweep with an ``init``
axis also gets AdViSe's delta Acc per pre-initialised cell (:func:`paired_deltas`).

Replicates as papers report them: a sweep axis over ``seed`` (or ``manifest``: other splits) is
aggregated, so each remaining cell is one row with every metric's mean, its standard deviation
over the replicates (sample std, ddof=1, as pandas ``.std()``) and their number ``n``, ranked by
the mean; the per-run rows are kept in OUT/leaderboard_runs.csv (always written). ``top5`` is left
out when there are 5 or fewer classes (it is 1 by construction).

Test scores of single runs carry a 95% percentile-bootstrap interval over the test videos
(:func:`bootstrap_ci`, seeded), since test splits of 14-32 videos move by several points from one
draw to the next. A sweep ranked on a ``test/`` metric is marked as such: choosing a cell by its
test score is not a valid protocol (select on ``val/``, report ``test/``)."""
from __future__ import annotations

import csv
import os
from collections import defaultdict

import numpy as np

from featcache.errors import FeatcacheError
from featcache.sweep.rows import CellResult

_SKIP = {"best_epoch", "params"}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
TEST_SELECTION = ("selected on a test metric: choosing the best cell by its test score is not a valid protocol "
                  "(the test split then selects as well as measures); rank on val/... and report test/...")
REPLICATE_AXES = ("seed", "manifest")  # axes whose values are replicates of one setting


def parse_rows(rows: list[CellResult | dict]) -> list[CellResult]:
    """The sweep's rows as :class:`~featcache.sweep.rows.CellResult` (parsed once; typed rows pass)."""
    return [CellResult.from_json(r) for r in rows]


def metric_columns(rows: list[CellResult | dict]) -> list[str]:
    rows = parse_rows(rows)
    classes = min((r.classes or 10**9 for r in rows), default=10**9)
    keys = {k for r in rows for k, v in r.metrics.items() if k not in _SKIP and not isinstance(v, list)
            and not (classes <= 5 and k.split("/")[-1].startswith("top5"))}
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(keys, key=lambda k: (order.get(k.split("/")[0], 3), k))


def bootstrap_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron and Tibshirani 1993, ch. 13) of the mean of per-video
    values (1 = correct): ``resamples`` draws of the test videos with replacement, from a seeded
    generator so the leaderboard is the same on every run."""
    values = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))  # (B, n)
    means = values[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def per_video_correct(path: str, metric: str) -> np.ndarray | None:
    """Per test video: 1 where ``top1`` / ``top5`` counts it correct (a true label among the k
    best scores, as :func:`featcache.train.metrics.selection`), read from a predictions file;
    None for a metric that is not a mean over videos or a missing file."""
    k = {"top1": 1, "top5": 5}.get(metric)
    if k is None or not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    classes, body = rows[0][2:], rows[1:]
    if not body:
        return None
    scores = np.array([[float(v) for v in r[2:]] for r in body])  # (videos, classes)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, len(classes))]
    return np.array([any(classes[j] in r[1].split(";") for j in t) for r, t in zip(body, top)], dtype=float)


def test_intervals(run_dir: str, metrics: dict) -> dict[str, tuple[float, float]]:
    """``test/top1`` / ``test/top5`` -> 95% bootstrap interval from the run's predictions_test.csv."""
    out = {}
    for key in metrics:
        split, _, name = key.partition("/")
        if split == "test":
            correct = per_video_correct(os.path.join(run_dir, "predictions_test.csv"), name)
            if correct is not None:
                out[key] = bootstrap_ci(correct)
    return out


def aggregate(rows: list[CellResult | dict], axes: tuple[str, ...]) -> list[CellResult]:
    """Rows that differ only in replicate axes (``seed``, ``manifest``) become one row:
    ``metrics`` the mean, ``std`` the sample standard deviation (0 for one run), ``n`` and
    ``runs`` (their cell names). Without a replicate axis the rows come back with n = 1."""
    replicate = [a for a in axes if a in REPLICATE_AXES]
    kept = [a for a in axes if a not in replicate]
    groups: dict = {}
    for r in sorted(parse_rows(rows), key=lambda r: r.index):
        key = tuple(str(r.settings.get(a, "")) for a in kept) if replicate else r.index
        groups.setdefault(key, []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        keys = [k for k, v in first.metrics.items()
                if isinstance(v, (int, float)) and all(isinstance(m.metrics.get(k), (int, float)) for m in members)]
        values = {k: np.array([m.metrics[k] for m in members], dtype=float) for k in keys}
        settings = {a: first.settings[a] for a in kept if a in first.settings}
        out.append(first.replace(cell=first.cell if not replicate else _group_name(first, settings),
                                 settings=settings, n=len(members), runs=tuple(m.cell for m in members),
                                 metrics={k: float(v.mean()) for k, v in values.items()},
                                 std={k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
                                 ci=first.ci if len(members) == 1 else {},
                                 train_s=round(sum(m.train_s for m in members), 2)))
    return out


def _group_name(first: CellResult, settings: dict) -> str:
    from featcache.spec.sweep import cell_name

    return cell_name(first.index, settings)


def best_cell(rows: list[CellResult | dict], axes: tuple[str, ...], metric: str, goal: str) -> CellResult:
    """The leaderboard's first row (replicates aggregated)."""
    return rank(aggregate(rows, axes), metric, goal)[0]


def rank(rows: list[CellResult | dict], metric: str, goal: str) -> list[CellResult]:
    rows = parse_rows(rows)
    missing = [r.cell for r in rows if metric not in r.metrics]
    if missing:
        raise FeatcacheError(f"metric {metric!r} is not in metrics.json of {missing[0]} (it has "
                             f"{', '.join(sorted(rows[0].metrics))}); rank on one of those (metric: name: ...)")
    sign = -1 if goal == "maximize" else 1
    return sorted(rows, key=lambda r: (sign * r.metrics[metric], r.index))


def axis_summary(rows: list[CellResult | dict], axes: tuple[str, ...], metric: str) -> dict[str, list[tuple]]:
    """axis -> [(value, mean metric, number of runs)] in first-seen value order (the mean over the
    cells with that value; an aggregated row counts its n runs)."""
    out = {}
    for axis in axes:
        groups: dict = defaultdict(list)
        for r in sorted(parse_rows(rows), key=lambda r: r.index):
            if axis in r.settings:
                groups[str(r.settings[axis])].append((r.metrics[metric], r.n))
        if len(groups) > 1:
            out[axis] = [(v, sum(m for m, _ in ms) / len(ms), sum(n for _, n in ms)) for v, ms in groups.items()]
    return out


SCRATCH = ("", "none", "None", None)  # init values of a cell trained from scratch


def paired_deltas(rows: list[CellResult | dict], metric: str, axis: str = "init") -> dict[str, dict[str, float]]:
    """AdViSe's delta Acc: for every cell with a pre-trained ``init``, its metric minus that of the
    cell whose settings are the same except ``init: none`` (same seed, same everything else).
    Column name -> {cell: difference}, for the sweep metric and its ``test/`` counterpart; cells
    without a scratch partner get no value. Empty when the sweep has no such pairs."""
    def key(r):
        return tuple(sorted((k, str(v)) for k, v in r.settings.items() if k != axis))

    rows = parse_rows(rows)
    scratch = {key(r): r for r in rows if r.settings.get(axis, "-") in SCRATCH}
    names = [metric] + ([f"test/{metric.split('/', 1)[1]}"] if not metric.startswith("test/") else [])
    out: dict[str, dict[str, float]] = {}
    for name in names:
        col = {r.cell: r.metrics[name] - scratch[key(r)].metrics[name] for r in rows
               if r.settings.get(axis) not in SCRATCH and key(r) in scratch
               and name in r.metrics and name in scratch[key(r)].metrics}
        if col:
            out[f"delta {name}"] = col
    return out


def _table(ranked: list[CellResult], axes, metrics: list[str], replicates: bool, joined: bool = False,
           deltas: dict | None = None) -> tuple[list, list]:
    """Header and rows of a leaderboard: per metric its mean and std (columns ``m``, ``m_std``;
    one ``mean ± std`` cell when ``joined``) and ``n`` when replicates are aggregated, else the value;
    then the ``deltas`` columns (:func:`paired_deltas`)."""
    deltas = deltas or {}
    if not replicates:
        stats = list(metrics)
    else:
        stats = [f"{m} (mean ± std)" for m in metrics] if joined else [c for m in metrics for c in (m, f"{m}_std")]
    intervals = [m for m in metrics if any(m in r.ci for r in ranked)]
    header = ["rank", "best", "cell", *axes, *(["n"] if replicates else []), *stats,
              *[f"{m} 95% CI" for m in intervals], *deltas, "params", "train_s"]
    table = []
    for i, r in enumerate(ranked, 1):
        values = []
        for m in metrics:
            mean, std = _fmt(r.metrics.get(m)), _fmt(r.std.get(m)) if replicates else ""
            values += [f"{mean} ± {std}"] if replicates and joined else [mean, std] if replicates else [mean]
        table.append([i, "*" if i == 1 else "", r.cell, *[r.settings.get(a, "") for a in axes],
                      *([r.n] if replicates else []), *values, *[_ci(r.ci.get(m)) for m in intervals],
                      *[_fmt(d.get(r.cell)) for d in deltas.values()],
                      r.params, r.train_s])
    return header, table


def _write_csv(path: str, header: list, table: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)


def write_leaderboard(out_dir: str, rows: list[CellResult | dict], axes: tuple[str, ...], metric: str,
                      goal: str) -> None:
    rows = parse_rows(rows)
    metrics = metric_columns(rows)
    _write_csv(os.path.join(out_dir, "leaderboard_runs.csv"),
               *_table(rank(rows, metric, goal), axes, metrics, False, deltas=paired_deltas(rows, metric)))
    replicates = any(a in REPLICATE_AXES for a in axes)
    runs, rows = rows, aggregate(rows, axes)
    axes = tuple(a for a in axes if a not in REPLICATE_AXES)
    ranked = rank(rows, metric, goal)
    deltas = paired_deltas(rows, metric)  # of the means, when replicates are aggregated
    header, table = _table(ranked, axes, metrics, replicates, deltas=deltas)
    _write_csv(os.path.join(out_dir, "leaderboard.csv"), header, table)
    header, table = _table(ranked, axes, metrics, replicates, joined=True, deltas=deltas)  # markdown: mean ± std
    summary = axis_summary(rows, axes, metric)
    with open(os.path.join(out_dir, "leaderboard.md"), "w") as f:
        f.write(f"# Leaderboard ({metric}, {goal})\n\n")
        best = ranked[0]
        spread = f" ± {_fmt(best.std[metric])} (mean ± std over n={best.n})" if replicates else ""
        if metric.startswith("test/"):
            f.write(f"**Warning**: {TEST_SELECTION}.\n\n")
        ci = best.ci.get(metric)
        interval = f" (95% bootstrap interval over the test videos {_ci(ci)})" if ci else ""
        f.write(f"Best: **{best.cell}** with {metric} = {_fmt(best.metrics[metric])}{spread}{interval}\n\n")
        f.write("| " + " | ".join(map(str, header)) + " |\n|" + "---|" * len(header) + "\n")
        for row in table:
            cells = [f"**{c}**" if row[1] and j == 2 else str(c) for j, c in enumerate(row)]
            f.write("| " + " | ".join(cells) + " |\n")
        if summary:
            f.write(f"\n## Mean {metric} per axis value\n\n")
            for axis, values in summary.items():
                parts = ", ".join(f"{v}: {_fmt(m)} (n={n})" for v, m, n in values)
                if len(values) == 2:  # e.g. init none vs prp: AdViSe's delta Acc
                    parts += f"; difference {values[1][0]} - {values[0][0]} = {values[1][1] - values[0][1]:+.4f}"
                f.write(f"- **{axis}**: {parts}\n")
        if any(r.ci for r in ranked):
            f.write(f"\nIntervals: 95% percentile bootstrap over the test videos ({BOOTSTRAP_RESAMPLES} resamples, "
                    f"seed {BOOTSTRAP_SEED}), from each cell's predictions_test.csv.\n")
        if replicates:
            f.write(f"\nReplicates: {len(runs)} runs; every row is the mean ± sample std (ddof=1) over its n runs "
                    "(seed/manifest axis); the runs are in leaderboard_runs.csv.\n")
    _plot(os.path.join(out_dir, "leaderboard.png"), ranked, axes, metric, goal)


def _ci(interval) -> str:
    return f"{interval[0]:.4f}-{interval[1]:.4f}" if interval else ""


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def _plot(path: str, ranked: list[CellResult], axes: tuple[str, ...], metric: str, goal: str) -> None:
    """The metric the text reports (the test split of the sweep metric) with val beside it, per
    cell and per varied axis (mean over the other axes), error bars when replicates are aggregated."""
    from featcache.train.figures import Bar, plot_leaderboard

    split, name = metric.split("/", 1)
    shown = [m for m in (f"test/{name}", f"val/{name}") if all(m in r.metrics for r in ranked)] or [metric]
    cells = [Bar(_readable(r.settings) or r.cell, r.metrics, r.std) for r in ranked]
    panels = []
    for axis in axes:
        groups: dict = defaultdict(list)
        for r in sorted(ranked, key=lambda r: r.index):
            if axis in r.settings:
                groups[str(r.settings[axis])].append(r.metrics)
        if len(groups) > 1 and any(len(ms) > 1 for ms in groups.values()):  # one cell per value: the cells again
            panels.append((axis, [Bar(_short(v), {m: float(np.mean([x[m] for x in ms])) for m in shown})
                                  for v, ms in groups.items()]))
    classes = min((r.classes or 0 for r in ranked), default=0)
    chance = 1 / classes if classes and name in ("top1", "mean_class_acc") else None
    n = max(r.n for r in ranked)
    note = f"; mean ± std over {n} replicates" if n > 1 else ""
    caution = " - not a valid protocol: select on val" if split == "test" else ""
    plot_leaderboard(path, cells, panels, shown, chance,
                     title=f"{' and '.join(shown)} (selected on {metric}, {goal}{caution}){note}")


def _readable(settings: dict) -> str:
    """A cell's varied settings, one per line, with long head file paths shortened."""
    return "\n".join(f"{k}={_short(v)}" for k, v in settings.items())


def _short(value) -> str:
    """A head file's path shortened to its file name (``/a/b/my_heads.py:Head`` -> ``my_heads.py:Head``)."""
    text = str(value)
    if ":" in text and text.rpartition(":")[0].endswith(".py"):
        path, _, cls = text.rpartition(":")
        return f"{os.path.basename(path)}:{cls}"
    return text
