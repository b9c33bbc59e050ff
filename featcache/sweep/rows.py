"""A leaderboard row: one finished cell of a sweep, or the replicates of one setting aggregated.

The sweep runner hands the leaderboard one mapping per cell (``cell``, ``index``, ``settings``,
``metrics``, ``params``, ``train_s``, ``classes``, ``ci``); :meth:`CellResult.from_json` parses it
once and every leaderboard function reads the type. Aggregating replicates
(:func:`featcache.sweep.leaderboard.aggregate`) adds ``n``, ``runs`` and ``std``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

_FIELDS = ("cell", "index", "settings", "metrics", "params", "train_s", "classes", "ci", "n", "runs", "std")


@dataclass(frozen=True)
class CellResult:
    """A cell's name, index and varied settings; its ``metrics.json`` (``metrics``); the head's
    parameter count, the training seconds, the number of classes; the 95% bootstrap intervals of
    its test scores (``ci``); and for an aggregated row the replicates' count, cell names and
    sample standard deviations."""

    cell: str
    index: int
    settings: dict
    metrics: dict
    params: int | None = None
    train_s: float = 0.0
    classes: int | None = None
    ci: dict = field(default_factory=dict)
    n: int = 1
    runs: tuple[str, ...] = ()
    std: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | CellResult) -> CellResult:
        if isinstance(data, cls):
            return data
        known = {k: tuple(data[k]) if k == "runs" else data[k] for k in _FIELDS if k in data}
        return cls(**known, extra={k: v for k, v in data.items() if k not in _FIELDS})

    def to_json(self) -> dict:
        return {**{k: list(self.runs) if k == "runs" else getattr(self, k) for k in _FIELDS}, **self.extra}

    def replace(self, **changes) -> CellResult:
        return dataclasses.replace(self, **changes)

    def score(self, name: str, default=None):
        """A metric of ``metrics.json`` (``val/top1``); ``default`` when the run has none."""
        return self.metrics.get(name, default)
