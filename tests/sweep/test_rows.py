"""Leaderboard rows as a frozen type (featcache/sweep/rows.py), parsed once from the runner's dicts."""
import dataclasses

import pytest

from featcache.errors import FeatcacheError
from featcache.sweep.leaderboard import best_cell, parse_rows, rank
from featcache.sweep.rows import CellResult


def test_a_row_round_trips_and_is_frozen():
    row = {"cell": "000_head=pool", "index": 0, "settings": {"head": "pool"}, "metrics": {"val/top1": 0.5},
           "params": 10, "train_s": 1.5, "classes": 4, "ci": {"test/top1": (0.25, 0.75)}, "later": "kept"}
    typed = CellResult.from_json(row)
    assert typed.extra == {"later": "kept"} and typed.n == 1 and typed.runs == () and typed.std == {}
    assert {k: v for k, v in typed.to_json().items() if k not in ("n", "runs", "std")} == row
    assert CellResult.from_json(typed) is typed and parse_rows([typed, row]) == [typed, typed]
    assert typed.score("val/top1") == 0.5 and typed.score("test/top1") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.cell = "x"


def test_rank_and_best_cell_take_dicts_or_rows():
    rows = [{"cell": f"c{i}", "index": i, "settings": {"seed": i % 2, "lr": lr}, "metrics": {"val/top1": v}}
            for i, (lr, v) in enumerate([(0.1, 0.5), (0.1, 0.7), (0.2, 0.9), (0.2, 0.8)])]
    assert [r.cell for r in rank(rows, "val/top1", "maximize")] == ["c2", "c3", "c1", "c0"]
    assert [r.cell for r in rank(parse_rows(rows), "val/top1", "minimize")] == ["c0", "c1", "c3", "c2"]
    best = best_cell(rows, ("seed", "lr"), "val/top1", "maximize")  # seeds averaged: lr 0.2 at 0.85
    assert best.settings == {"lr": 0.2} and best.n == 2 and best.runs == ("c2", "c3")
    assert best.metrics["val/top1"] == pytest.approx(0.85) and best.std["val/top1"] == pytest.approx(0.0707107)
    with pytest.raises(FeatcacheError, match="metric 'test/top1' is not in metrics.json of c0"):
        rank(rows, "test/top1", "maximize")
