"""Sweep leaderboards: OUT/leaderboard.csv and OUT/leaderboard.md (+ leaderboard.png with
matplotlib). One row per cell, sorted by the sweep metric, the best cell marked, and a summary per
axis (mean metric per value) so each factor's effect shows at a glance. A sweep with an ``init``
axis also gets AdViSe's delta Acc per pre-initialised cell (:func:`paired_deltas`)."""
from __future__ import annotations

import csv
import os
from collections import defaultdict

_SKIP = {"best_epoch", "params"}


def metric_columns(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k, v in r["metrics"].items() if k not in _SKIP and not isinstance(v, list)}
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(keys, key=lambda k: (order.get(k.split("/")[0], 3), k))


def rank(rows: list[dict], metric: str, goal: str) -> list[dict]:
    missing = [r["cell"] for r in rows if metric not in r["metrics"]]
    if missing:
        raise ValueError(f"metric {metric!r} is not in metrics.json of {missing[0]} (it has "
                         f"{', '.join(sorted(rows[0]['metrics']))})")
    sign = -1 if goal == "maximize" else 1
    return sorted(rows, key=lambda r: (sign * r["metrics"][metric], r["index"]))


def axis_summary(rows: list[dict], axes: tuple[str, ...], metric: str) -> dict[str, list[tuple]]:
    """axis -> [(value, mean metric, number of cells)] in first-seen value order."""
    out = {}
    for axis in axes:
        groups: dict = defaultdict(list)
        for r in sorted(rows, key=lambda r: r["index"]):
            if axis in r["settings"]:
                groups[str(r["settings"][axis])].append(r["metrics"][metric])
        if len(groups) > 1:
            out[axis] = [(v, sum(ms) / len(ms), len(ms)) for v, ms in groups.items()]
    return out


SCRATCH = ("", "none", "None", None)  # init values of a cell trained from scratch


def paired_deltas(rows: list[dict], metric: str, axis: str = "init") -> dict[str, dict[str, float]]:
    """AdViSe's delta Acc: for every cell with a pre-trained ``init``, its metric minus that of the
    cell whose settings are the same except ``init: none`` (same seed, same everything else).
    Column name -> {cell: difference}, for the sweep metric and its ``test/`` counterpart; cells
    without a scratch partner get no value. Empty when the sweep has no such pairs."""
    def key(r):
        return tuple(sorted((k, str(v)) for k, v in r["settings"].items() if k != axis))

    scratch = {key(r): r for r in rows if axis in r["settings"] and r["settings"][axis] in SCRATCH}
    names = [metric] + ([f"test/{metric.split('/', 1)[1]}"] if not metric.startswith("test/") else [])
    out: dict[str, dict[str, float]] = {}
    for name in names:
        col = {r["cell"]: r["metrics"][name] - scratch[key(r)]["metrics"][name] for r in rows
               if r["settings"].get(axis) not in SCRATCH and key(r) in scratch
               and name in r["metrics"] and name in scratch[key(r)]["metrics"]}
        if col:
            out[f"delta {name}"] = col
    return out


def write_leaderboard(out_dir: str, rows: list[dict], axes: tuple[str, ...], metric: str, goal: str) -> None:
    ranked = rank(rows, metric, goal)
    metrics = metric_columns(rows)
    deltas = paired_deltas(rows, metric)
    header = ["rank", "best", "cell", *axes, *metrics, *deltas, "params", "train_s"]
    table = []
    for i, r in enumerate(ranked, 1):
        table.append([i, "*" if i == 1 else "", r["cell"], *[r["settings"].get(a, "") for a in axes],
                      *[_fmt(r["metrics"].get(m)) for m in metrics], *[_fmt(d.get(r["cell"])) for d in deltas.values()],
                      r["params"], r["train_s"]])
    with open(os.path.join(out_dir, "leaderboard.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    summary = axis_summary(rows, axes, metric)
    with open(os.path.join(out_dir, "leaderboard.md"), "w") as f:
        f.write(f"# Leaderboard ({metric}, {goal})\n\n")
        best = ranked[0]
        f.write(f"Best: **{best['cell']}** with {metric} = {_fmt(best['metrics'][metric])}\n\n")
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
    _plot(os.path.join(out_dir, "leaderboard.png"), ranked, summary, metric)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "" if value is None else str(value)


def _plot(path: str, ranked: list[dict], summary: dict, metric: str) -> None:
    """One panel with every cell's metric (best first), then one per varied axis (mean per value)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # optional: pip install featcache[plot]
    panels = [("cells", [(r["cell"], r["metrics"][metric]) for r in ranked])]
    panels += [(axis, [(v, m) for v, m, _ in values]) for axis, values in summary.items()]
    widths = [max(3.2, 0.45 * len(bars) + 1) for _, bars in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (title, bars) in zip(axes[0], panels):
        ax.bar(range(len(bars)), [m for _, m in bars])
        ax.set_xticks(range(len(bars)), [str(v) for v, _ in bars], rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
