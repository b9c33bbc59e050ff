"""Figures a run and a sweep leave behind (matplotlib, the ``plot`` extra; skipped without it).

- ``curves.png`` (every run): loss and the selection metric per epoch, train vs val, the chance
  level and the selected epoch marked.
- ``confusion_<split>.png``: counts in every cell, a colour bar, classes on both axes.
- ``leaderboard.png`` (sweeps): the metric the leaderboard reports (test) with val beside it for
  every cell, value labels, error bars (std over seeds) when replicates are aggregated, the chance
  level, readable cell names, and one panel per varied axis, all on one shared axis.

Pure reporting: takes numbers and names, writes PNG files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featcache.train.meta import EpochRecord


@dataclass(frozen=True)
class Bar:
    """One group of bars of the leaderboard figure: its label, the value of each metric (the
    mean over replicates) and their standard deviations (error bars; none when absent)."""

    label: str
    values: dict
    errors: dict = field(default_factory=dict)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None  # optional: pip install featcache[plot]
    return plt


def plot_curves(path: str, log: list[EpochRecord | dict], metric: str, chance: float | None = None,
                title: str = "") -> None:
    """Two panels from a run's log records: loss and ``metric`` (top1 or mAP) per epoch."""
    plt = _pyplot()
    if plt is None or not log:
        return
    from matplotlib.ticker import MaxNLocator

    log = [EpochRecord.from_json(r) for r in log]
    epochs = [r.epoch for r in log]
    best = _selected_epoch(log, metric)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    panels = ((axes[0], "loss", "loss"), (axes[1], metric, metric))
    for ax, key, label in panels:
        for split, style, colour in (("train", "o-", "tab:blue"), ("val", "s--", "tab:orange")):
            values = [r.extra.get(f"{split}/{key}") for r in log]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, color=colour, ms=3, label=split)
        if key == metric and chance is not None:
            ax.axhline(chance, color="grey", lw=1, ls=":", label=f"chance {chance:.2f}")
        if best is not None:
            ax.axvline(best, color="tab:red", lw=0.8, ls="-.", alpha=0.6, label=f"selected (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if metric != "loss":
        axes[1].set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _selected_epoch(log: list[EpochRecord], metric: str) -> int | None:
    """The epoch best.pt holds: the first with the highest val metric (as training selects)."""
    scored = [(r.extra[f"val/{metric}"], -r.epoch) for r in log if f"val/{metric}" in r.extra]
    return -max(scored)[1] if scored else None


def plot_confusion(path: str, classes: list[str], cm: np.ndarray, title: str = "") -> None:
    """Counts (rows: true class, columns: predicted), annotated, with a colour bar."""
    plt = _pyplot()
    if plt is None:
        return
    n = len(classes)
    size = min(20, max(4.5, 0.4 * n + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("videos")
    ticks = 7 if n > 20 else 9
    ax.set_xticks(range(n), classes, rotation=90 if n > 6 else 0, fontsize=ticks)
    ax.set_yticks(range(n), classes, fontsize=ticks)
    if n <= 30:  # beyond that the numbers are unreadable; the colours and the CSV carry them
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8 if n <= 15 else 6,
                        color="white" if cm[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(cm.sum())
    acc = f"top-1 {np.trace(cm) / total:.3f} on {total} videos" if total else "no videos"
    ax.set_title(f"{title}: {acc}" if title else acc, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_leaderboard(path: str, cells: list[Bar], panels: list[tuple[str, list[Bar]]], shown: list[str],
                     chance: float | None = None, title: str = "") -> None:
    """Grouped bars: for each cell (a :class:`Bar`: label, mean and std per metric) one bar per
    metric of ``shown`` (e.g. test/top1, val/top1); then one panel per varied axis (``panels``:
    axis name -> bars, means over the other axes). One y axis."""
    plt = _pyplot()
    if plt is None or not cells:
        return
    groups = [("cells", cells), *panels]
    widths = [max(2.6, 0.38 * len(bars) * len(shown) + 0.8) for _, bars in groups]
    longest = max(len(line) for _, bars in groups for b in bars for line in b.label.split("\n"))
    lines = max(b.label.count("\n") + 1 for _, bars in groups for b in bars)
    fig_width = min(40, max(5.0, sum(widths) + 1))
    fig, axes = plt.subplots(1, len(groups), figsize=(fig_width, 3.4 + 0.09 * longest + 0.12 * lines),
                             squeeze=False, sharey=True, gridspec_kw={"width_ratios": widths})
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    top = max([b.values.get(m, 0) + b.errors.get(m, 0) for _, bars in groups for b in bars for m in shown]
              + [chance or 0])
    for k, (ax, (name, bars)) in enumerate(zip(axes[0], groups)):
        width = 0.8 / len(shown)
        for j, metric in enumerate(shown):
            x = np.arange(len(bars)) + (j - (len(shown) - 1) / 2) * width
            values = [b.values.get(metric, np.nan) for b in bars]
            errors = [b.errors.get(metric, 0.0) for b in bars]
            has_err = any(e > 0 for e in errors)
            ax.bar(x, values, width, yerr=errors if has_err else None, capsize=3 if has_err else 0,
                   color=colours[j % len(colours)], label=metric, alpha=1.0 if j == 0 else 0.75)
            crowded = len(bars) * len(shown) > 12
            for xi, v, e in zip(x, values, errors):  # above the error bar, not across it
                if not np.isnan(v):
                    ax.text(xi, v + e + 0.01 * max(top, 1e-9), _label(v, e), ha="center", va="bottom",
                            fontsize=6.5, rotation=90 if crowded else 0)
        if chance is not None:
            ax.axhline(chance, color="grey", lw=1, ls=":", label=f"chance {chance:.2f}" if k == 0 else None)
        ax.set_xticks(range(len(bars)), [b.label for b in bars], rotation=30 if longest > 8 else 0,
                      ha="right" if longest > 8 else "center", fontsize=7)
        ax.set_title(name if name == "cells" else f"mean over the other axes: {name}", fontsize=8.5)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel(" / ".join(shown), fontsize=8)
    axes[0][0].set_ylim(0, max(1.0, top) * 1.15 if top <= 1 else top * 1.15)
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        import textwrap

        fig.suptitle("\n".join(textwrap.wrap(title, int(fig_width * 10))), fontsize=9.5)  # fits a narrow figure
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(value: float, error: float) -> str:
    if value is None or np.isnan(value):
        return ""
    return f"{value:.3f}\n±{error:.3f}" if error else f"{value:.3f}"
