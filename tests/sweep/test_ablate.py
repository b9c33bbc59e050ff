"""Sweeps: expansion, validation, fused training equal to solo training, leaderboards, pipelines/."""
import csv
import glob
import json
import os
import time

import numpy as np
import pytest
import torch
from conftest import tiny_encoder_config
from typer.testing import CliRunner

from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.spec.sweep import SweepError, _expand, cell_name, load_sweep, select
from featcache.sweep.run import Plan, plan_groups
from featcache.train import checkpoint
from featcache.train.fit import new_head, run_training, train_group

PIPELINES = os.path.join(os.path.dirname(__file__), "..", "..", "pipelines")
runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Generated motion clips extracted with the pool the pipelines/ sweep files expect."""
    root = tmp_path_factory.mktemp("sweep")
    manifest = make_dataset(str(root), "motion", per_class=10, num_frames=32)
    out = str(root / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=out, frames="uniform:8,uniform:16,uniform:32,keyframes:8",
                              encoder=tiny_encoder_config(cut_block=0)), show_progress=False)
    return out


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ expansion (pure)
def test_grid_zip_and_list_expansion():
    spec = {"parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", "z"]}, "c": {"values": [7, 8]}},
            "zip": [["a", "c"]]}
    cells, axes = _expand(spec, "f.yaml")
    assert axes == ["a", "b", "c"] and len(cells) == 6  # (a, c) zipped x b
    assert {(c["a"], c["c"]) for c in cells} == {(1, 7), (2, 8)}
    listed, axes = _expand({"method": "list", "cells": [{"head": "r3d"}, {"head": {"name": "pool", "temporal": "concat"}}]}, "f")
    assert listed == [{"head": "r3d"}, {"head": "pool", "head.temporal": "concat"}] and axes == ["head", "head.temporal"]
    names = [cell_name(i, c) for i, c in enumerate(cells)]
    assert len(set(names)) == 6 and all("/" not in n for n in names) and names[0].startswith("000_a=1")


@pytest.mark.parametrize("text,match", [
    ("cache: c\nbase: {epochs: 2}\nparams: {}\n", "s.yaml: unknown key 'params'"),
    ("cache: c\nparameters: {lr: [1, 2]}\n", r"s.yaml: parameters.lr: expected \{values: \[...\]\}"),
    ("cache: c\nparameters: {epochs: {values: [2, many]}}\n", "s.yaml: cell 001_epochs=many: epochs: expected int, got 'many'"),
    ("cache: c\nparameters: {head.temporal: {values: [avg]}}\nzip: [[head.temporal, lr]]\n", "zip: 'lr' is not a parameter"),
    ("cache: c\nmethod: random\n", "method: 'random' is not one of grid, list"),
    ("cache: c\nmetric: {name: accuracy}\n", "metric.name: expected a metrics.json key"),
    ("base: {}\n", "no cache"),
    ("cache: c\nbase: {optimiser: sgd}\n", "unknown key 'optimiser'"),
])
def test_sweep_files_are_validated(tmp_path, text, match):
    with pytest.raises(SweepError, match=match):
        load_sweep(write(tmp_path, text))


def test_select_only_and_filter(tmp_path):
    sweep = load_sweep(write(tmp_path, "cache: c\nparameters: {head.temporal: {values: [avg, concat]}, "
                                       "head.mlp_layers: {values: [0, 1]}}\n"))
    assert [c.index for c in select(sweep.cells, ["0", "3"])] == [0, 3]
    assert [c.index for c in select(sweep.cells, None, {"head.temporal": "avg"})] == [0, 1]
    assert [c.index for c in select(sweep.cells, None, {"head.mlp_layers": 1, "head": "pool"})] == [1, 3]


def test_memory_budget_splits_groups():
    cfg = build_config({"head": "pool"})
    other = build_config({"head": "pool", "view": "uniform:16"})
    cells = [type("C", (), {"config": c})() for c in (cfg, cfg, cfg, other, cfg)]
    plans = [Plan(c, 100, 0.0) for c in cells]
    assert [len(g) for g in plan_groups(plans, budget=1000, max_fused=8)] == [4, 1]
    assert [len(g) for g in plan_groups(plans, budget=250, max_fused=8)] == [2, 2, 1]
    assert [len(g) for g in plan_groups(plans, budget=1000, max_fused=3)] == [3, 1, 1]
    assert [len(g) for g in plan_groups([Plan(cells[0], 5000, 0.0)] * 2, budget=1000, max_fused=8)] == [1, 1]


def test_the_sweep_planner_fuses_on_the_batch_side():
    """plan_groups puts cells that differ only on the head side in one pass, and a cell that
    differs on the batch side (max_view_memory_gb decides how the shared view is read) in another."""
    from featcache.sweep.run import group_batch

    cfgs = [build_config(v) for v in ({}, {"head": "r3d", "lr": 0.1, "head.hidden": 8, "log": "tensorboard"},
                                       {"max_view_memory_gb": 2.0}, {"seed": 1})]
    cells = [type("C", (), {"config": c, "name": str(i)})() for i, c in enumerate(cfgs)]
    groups = plan_groups([Plan(c, 1, None) for c in cells], budget=10**9, max_fused=8)
    assert sorted([p.cell.name for p in g] for g in groups) == [["0", "1"], ["2"], ["3"]]
    assert group_batch([p.cell for p in groups[0]]) == cfgs[0].batch
    with pytest.raises(ValueError, match="must share one BatchConfig"):  # a caller's bug, not a user error
        group_batch(cells[:3])


def test_heads_kept_for_training_stay_within_the_memory_budget():
    from featcache.sweep.run import kept_heads
    from featcache.train.loop import Built

    cells = [type("C", (), {"name": n})() for n in "abc"]
    sizes = [torch.nn.Linear(10, 10), torch.nn.Linear(100, 10), torch.nn.Linear(10, 10)]  # 440, 4040, 440 bytes
    plans = [Plan(c, 0, 0.0, Built(h, torch.get_rng_state())) for c, h in zip(cells, sizes)]
    assert list(kept_heads(plans, 10_000)) == ["a", "b", "c"]
    assert list(kept_heads(plans, 1000)) == ["a", "c"]  # b would pass the budget: built again when trained
    assert kept_heads(plans, 100) == {}


# ------------------------------------------------------------------ fusion is exact
@pytest.mark.slow
def test_fused_training_equals_training_each_cell_alone(cache, tmp_path):
    values = [{"head": "pool", "head.dropout": 0.3, "lr": 3e-3}, {"head": "transformer", "head.dropout": 0.2},
              {"head": "tcn", "optimizer": "sgd", "lr": 1e-2}, {"head": "r3d", "head.hidden": 32, "weight_decay": 0.0}]
    cfgs = [build_config({"epochs": 3, "batch_size": 8, "view": "uniform:8", "augment": "crop_flip", "keep_last": True, **v})
            for v in values]  # token-grid augmentation drawn once per batch for every head
    assert len({c.batch for c in cfgs}) == 1  # one batch side: the group's
    fused = train_group(cache, cfgs[0].batch, [c.head_config for c in cfgs], [str(tmp_path / f"fused{i}") for i in range(4)],
                        show_progress=False)
    for i, cfg in enumerate(cfgs):
        alone = run_training(cache, cfg, str(tmp_path / f"alone{i}"), show_progress=False)
        assert alone.keys() == fused[i].keys()
        for key in alone:
            assert alone[key] == pytest.approx(fused[i][key], abs=1e-6), (cfg.head, key)
        a = checkpoint.load(str(tmp_path / f"alone{i}" / "last.pt"))["state_dict"]
        f = checkpoint.load(str(tmp_path / f"fused{i}" / "last.pt"))["state_dict"]
        for name in a:
            torch.testing.assert_close(a[name], f[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # whole trainings
def test_each_cell_head_is_built_once_and_trains_as_if_built_fresh(cache, tmp_path, monkeypatch):
    """A 3-cell sweep constructs 3 heads (the probe's, handed to training and evaluation), and
    the probe's forward + backward leaves no trace: each cell equals its run alone (r3d's batch
    norm and dropout, the pool head's dropout)."""
    import functools

    from featcache.heads.pool import PoolHead
    from featcache.heads.r3d import R3DHead
    from featcache.spec.sweep import load_sweep
    from featcache.sweep.run import run_sweep

    built = []
    for cls in (R3DHead, PoolHead):
        real = cls.__init__

        @functools.wraps(real)  # keeps the signature the registry reads the options from
        def counting(self, *args, _real=real, _name=cls.__name__, **kwargs):
            built.append(_name)
            _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    path = write(tmp_path, f"cache: {cache}\nbase: {{view: uniform:8, epochs: 2, batch_size: 8}}\n"
                           "method: list\ncells: [{head: r3d, head.hidden: 16}, {head: r3d, head.hidden: 32}, "
                           "{head: pool, head.dropout: 0.3}]\n")
    sweep = load_sweep(path)
    rows = run_sweep(sweep, str(tmp_path / "sw"), sweep.cells, show_progress=False, echo=lambda line: None)
    assert sorted(built) == ["PoolHead", "R3DHead", "R3DHead"]
    assert len(rows) == 3
    for row, cell in zip(sorted(rows, key=lambda r: r.index), sweep.cells):
        alone = run_training(cache, cell.config, str(tmp_path / f"alone{cell.index}"), show_progress=False)
        assert alone == row.metrics, cell.name
        mine = checkpoint.load(str(tmp_path / "sw" / "cells" / cell.name / "best.pt"))["state_dict"]
        theirs = checkpoint.load(str(tmp_path / f"alone{cell.index}" / "best.pt"))["state_dict"]
        for name in theirs:  # batch-norm running statistics included
            assert torch.equal(mine[name], theirs[name]), (cell.name, name)


# ------------------------------------------------------------------ the CLI and pipelines/
@pytest.mark.slow
def test_pipeline_sweep_end_to_end(cache, tmp_path):
    sweep = os.path.join(PIPELINES, "stadapter_luv_table3_keyframes.yaml")
    out = str(tmp_path / "out")
    dry = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "--dry-run", "--set", "epochs=2"])
    assert dry.exit_code == 0, dry.output
    assert "4 cells in 2 fused pass(es)" in dry.output and "estimated cost" in dry.output
    assert not os.path.exists(out)

    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", "--set", "epochs=2"])
    assert r.exit_code == 0, r.output
    assert r.output.count("training 2 cell(s) in one pass") == 2
    with open(os.path.join(out, "leaderboard.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["best"] == "*" and all(not r["best"] for r in rows[1:])
    vals = [float(r["val/top1"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    assert {r["view"] for r in rows} == {"uniform:8", "keyframes:8"} and {"test/top1", "params", "train_s"} <= set(rows[0])
    md = open(os.path.join(out, "leaderboard.md")).read()
    assert "Best: **" in md and "- **view**: uniform:8:" in md and "- **head.temporal**: avg:" in md
    assert len(os.listdir(os.path.join(out, "cells"))) == 4 and os.path.exists(os.path.join(out, "sweep.yaml"))

    again = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", "--set", "epochs=2"])
    assert again.exit_code == 0 and "in one pass" not in again.output
    assert "4 finished cell(s) skipped" in again.output

    sub = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", str(tmp_path / "sub"), "-q",
                              "--set", "epochs=1", "--filter", "view=keyframes:8", "--only", "2,3,0"])
    assert sub.exit_code == 0, sub.output
    assert len(list(csv.DictReader(open(tmp_path / "sub" / "leaderboard.csv")))) == 2


def test_every_pipeline_sweep_is_valid():
    files = [f for f in glob.glob(os.path.join(PIPELINES, "*.yaml")) if "parameters" in open(f).read()
             or "cells:" in open(f).read()]
    assert len(files) >= 5
    for path in files:
        assert load_sweep(path, cache="any").cells


@pytest.mark.parametrize("args,message", [
    (["ablate", "{pipelines}/advise_fig3_spatial.yaml", "--cache", "{cache}"],
     "cell 002_spatial=9_init=none: view=uniform:8: spatial: 9 must be between 0 and the cached grid 4x4"),
    (["ablate", "{pipelines}/stadapter_luv_table1_frames.yaml", "--cache", "{cache}", "--set", "head.bogus=2"],
     ": head 'adapter' has no option bogus"),
    (["ablate", "{tmp}/bad.yaml"], "no such sweep file"),
    (["ablate", "{pipelines}/multilabel_charades.yaml", "--cache", "{tmp}/none.zarr"], "not a featcache cache"),
    (["ablate", "{pipelines}/stadapter_luv_table1_frames.yaml", "--cache", "{cache}", "--only", "99"], "no cell matches"),
    (["ablate", "{pipelines}/stadapter_luv_table1_frames.yaml", "--cache", "{cache}", "--filter", "bogus"],
     "--filter: expected key=value, got 'bogus'"),
    (["ablate", "{pipelines}/stadapter_luv_table1_frames.yaml", "--cache", "{cache}", "--set", "head=bogus"],
     ": unknown head 'bogus'; available: "),  # the registry's ValueError, made a user error where it is raised
])
def test_bad_sweeps_fail_with_one_line(cache, tmp_path, args, message):
    args = [a.format(pipelines=PIPELINES, cache=cache, tmp=tmp_path) for a in args]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


FLAKY_HEAD = """
from torch import nn


class Flaky(nn.Module):
    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens, fault: str = "nan"):
        super().__init__()
        self.fc, self.fault = nn.Linear(in_dim, num_classes), fault

    def forward(self, x):  # (B, T, N, C); the planner's checks (eval mode, meta tensors) pass, training does not
        logits = self.fc(x.mean((1, 2)))  # (B, num_classes)
        if self.training and x.device.type != "meta":
            if self.fault == "raise":
                raise ValueError("a bug in the head's training step")
            logits = logits * float("nan")
        return logits
"""


@pytest.mark.slow  # a subprocess and two short trainings
def test_a_user_error_mid_training_is_one_line_and_a_bug_keeps_its_traceback(cache, tmp_path):
    """What goes wrong while a sweep trains: a FeatcacheError (a cell diverged: the user's lr or
    data) is one line and exit status 2; a ValueError from code (here a head's training step) is
    a bug, so it keeps its traceback and exit status 1, never dressed as "featcache: error"."""
    import subprocess
    import sys

    (tmp_path / "flaky.py").write_text(FLAKY_HEAD)
    sweep = write(tmp_path, "base: {head: flaky.py:Flaky, view: uniform:8, epochs: 1, batch_size: 8}\n")
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", str(tmp_path / "nan"), "-q"])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("featcache: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "train/loss became nan at epoch 0" in r.stderr and "lower the learning rate" in r.stderr

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(PIPELINES)),
                                                         os.environ.get("PYTHONPATH", "")])}
    bug = subprocess.run([sys.executable, "-m", "featcache.cli", "ablate", sweep, "--cache", cache, "--out",
                          str(tmp_path / "bug"), "-q", "--set", "head.fault=raise"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert bug.returncode == 1, bug.stderr
    assert "Traceback (most recent call last)" in bug.stderr
    assert bug.stderr.strip().splitlines()[-1] == "ValueError: a bug in the head's training step"
    assert "featcache: error" not in bug.stderr


SEED_BY_VIEW = "base: {head: pool, epochs: 1, batch_size: 8}\nparameters:\n  seed: {values: [0, 1]}\n" \
               "  view: {values: [uniform:8, keyframes:8]}\n"


def test_groups_that_share_a_view_are_adjacent():
    a, b = build_config({"view": "uniform:8"}), build_config({"view": "keyframes:8"})
    cells = [type("C", (), {"config": build_config({"seed": s, "view": str(v.view.frames)})})()
             for s in (0, 1) for v in (a, b)]  # seed x view: A, B, A, B
    groups = plan_groups([Plan(c, 1, 0.0) for c in cells], budget=10, max_fused=8)
    assert [str(g[0].cell.config.view) for g in groups] == ["uniform:8", "uniform:8", "keyframes:8", "keyframes:8"]


def test_a_seed_by_view_sweep_reads_each_view_once(cache, tmp_path):
    sweep, out = write(tmp_path, SEED_BY_VIEW), str(tmp_path / "out")
    dry = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "--dry-run"])
    assert dry.exit_code == 0 and "4 cells in 4 fused pass(es)" in dry.output and "2 view read(s)" in dry.output
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    assert r.output.count("reading view") == 2 and r.output.count("training 1 cell(s)") == 4


def test_a_retrained_cell_starts_a_fresh_log(cache, tmp_path):
    sweep, out = write(tmp_path, SEED_BY_VIEW), str(tmp_path / "out")
    assert runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", "--only", "0"]).exit_code == 0
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", "--only", "0", "--set", "epochs=2"])
    assert r.exit_code == 0 and "training 1 cell(s)" in r.output  # the config changed: the cell is trained again
    cell = glob.glob(os.path.join(out, "cells", "000_*"))[0]
    log = [json.loads(line) for line in open(os.path.join(cell, "log.jsonl")).read().splitlines()]
    assert [x["epoch"] for x in log] == [0, 1]  # this run's epochs, once each
    row = next(csv.DictReader(open(os.path.join(out, "leaderboard.csv"))))
    seconds = sum(x["seconds"] for x in log)
    assert float(row["train_s"]) == pytest.approx(seconds, abs=0.01)


# ------------------------------------------------------------------ sweeps on a cluster
@pytest.mark.slow
def test_a_sweep_on_a_local_array_equals_the_local_run(cache, tmp_path):
    """Each fused group is one task of a submitit array (--cluster local runs the same array here):
    the leaderboard equals a plain run's; without --wait a re-run writes it once the tasks end."""
    sweep = write(tmp_path, "parameters: {seed: {values: [0, 1]}}\n"
                            "base: {head: pool, view: uniform:8, epochs: 2, batch_size: 8}\n")
    local = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", str(tmp_path / "plain"), "-q"])
    assert local.exit_code == 0, local.output
    array = ["--slurm", "--cluster", "local", "--gpus-per-task", "0", "--cpus-per-task", "1", "--poll", "0.5",
             "--slurm-logs", str(tmp_path / "logs")]
    out = str(tmp_path / "array")
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", *array, "--wait"])
    assert r.exit_code == 0, r.output
    assert "submitted 2 task(s)" in r.output and "cells finished: 2/2" in r.output
    rows = {name: list(csv.DictReader(open(os.path.join(d, "leaderboard_runs.csv")))) for name, d in
            (("plain", tmp_path / "plain"), ("array", out))}
    assert [(x["cell"], x["val/top1"], x["test/top1"]) for x in rows["plain"]] == \
        [(x["cell"], x["val/top1"], x["test/top1"]) for x in rows["array"]]
    again = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q", *array])
    assert again.exit_code == 0 and "submitted" not in again.output and "best:" in again.output

    later = str(tmp_path / "later")
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", later, "-q", *array])
    assert r.exit_code == 0 and "re-run this command when they end" in r.output
    assert not os.path.exists(os.path.join(later, "leaderboard.csv"))
    for _ in range(600):  # the local array's processes outlive the submitting command
        if len(glob.glob(os.path.join(later, "cells", "*", "metrics.json"))) == 2:
            break
        time.sleep(0.2)
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", later, "-q", *array])
    assert r.exit_code == 0 and "submitted" not in r.output, r.output
    assert len(list(csv.DictReader(open(os.path.join(later, "leaderboard_runs.csv"))))) == 2  # per seed
    assert [r["n"] for r in csv.DictReader(open(os.path.join(later, "leaderboard.csv")))] == ["2"]  # seeds aggregated


# ------------------------------------------------------------------ issue 34: dry runs in seconds
LR_WD = "base: {head: attentive, view: uniform:8, epochs: 3, batch_size: 8}\nparameters:\n" \
        "  lr: {values: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}\n  weight_decay: {values: [0.0, 1.0e-4, 1.0e-3, 1.0e-2, 0.05]}\n"


def _count_real_forwards(monkeypatch):
    """Every module forward whose input holds real numbers (not meta tensors), counted."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    real = []

    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].device.type != "meta":
            real.append(type(module).__name__)

    handle = register_module_forward_pre_hook(hook)
    return real, handle


def test_a_20_cell_lr_wd_dry_run_prints_its_plan_and_trains_nothing(cache, tmp_path, monkeypatch):
    """Issue 34 item 3: pipelines/attentive_lr_wd.yaml's dry run timed a real forward + backward per
    cell (40 minutes on 1280-dim tokens) before printing anything. Now no module sees a real tensor,
    and the memory estimate equals the one a real step measures."""
    from featcache.sweep import run as sweep_run

    sweep, out = write(tmp_path, LR_WD), str(tmp_path / "out")
    real, handle = _count_real_forwards(monkeypatch)
    try:
        start = time.perf_counter()
        dry = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "--dry-run"])
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    assert dry.exit_code == 0, dry.output
    assert "20 cells in 1 fused pass(es)" in dry.output and "1 view read(s)" in dry.output
    assert "training time not measured (give --time-cells" in dry.output and " s\n" not in dry.output
    assert real == [] and not os.path.exists(out) and seconds < 30
    head = new_head(build_config({"head": "attentive"}),
                    {"in_dim": 32, "num_classes": 2, "num_frames": 8, "grid": (2, 2), "num_prefix_tokens": 1})
    shape = (8, 8, 5, 32)  # (B, T, N, C)
    # within 10%: on meta, attention takes the math path, which saves a few more tensors than the fused CPU kernel
    assert sweep_run._meta_bytes(head, shape) == pytest.approx(sweep_run._measure(head, torch.zeros(shape))[0], rel=0.1)


def test_time_cells_times_one_step_per_distinct_head(cache, tmp_path, monkeypatch):
    sweep, out = write(tmp_path, LR_WD), str(tmp_path / "out")
    calls = []
    from featcache.sweep import run as sweep_run

    real_measure = sweep_run._measure
    monkeypatch.setattr(sweep_run, "_measure", lambda *a: calls.append(1) or real_measure(*a))
    dry = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "--dry-run", "--time-cells"])
    assert dry.exit_code == 0, dry.output
    assert len(calls) == 1  # 20 cells differing only in lr and weight decay: one head, one step
    assert "from one measured step per distinct head" in dry.output


def test_ctrl_c_on_a_dry_run_offers_no_resume(cache, tmp_path, monkeypatch):
    from featcache.sweep import run as sweep_run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_run, "_probe", interrupt)
    sweep = write(tmp_path, LR_WD)
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 130 and "resume" not in r.output.replace("nothing to resume", "")
    assert "a dry run writes nothing" in r.output


def test_a_sweep_over_split_files_counts_one_read_per_file(cache, tmp_path):
    """Issue 34 item 7: the dry run said 1 view read where the run read 3 (one per split file)."""
    from featcache.cache.store import open_cache

    ids = sorted(open_cache(cache).records())
    files = []
    for k in range(3):
        path = tmp_path / f"split{k}.csv"
        rows = [f"{v},{'left' if v.startswith('left') else 'right'},{('train', 'val', 'test')[(i + k) % 3]}"
                for i, v in enumerate(ids)]
        path.write_text("video_id,label,split\n" + "\n".join(rows) + "\n")
        files.append(str(path))
    sweep = write(tmp_path, "base: {head: pool, view: uniform:8, epochs: 1, batch_size: 8}\n"
                            f"parameters:\n  manifest: {{values: [{', '.join(files)}]}}\n  seed: {{values: [0, 1]}}\n")
    out = str(tmp_path / "out")
    dry = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "3 view read(s)" in dry.output
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    assert r.output.count("reading view") == 3


# ------------------------------------------------------------------ issue 34 item 8: test metrics
def test_bootstrap_interval_is_the_percentile_bootstrap():
    """Our seeded percentile bootstrap against scipy.stats.bootstrap(method='percentile') on the
    same 20 per-video outcomes (its own resampling: agreement within Monte-Carlo error)."""
    from scipy.stats import bootstrap

    from featcache.sweep.leaderboard import bootstrap_ci

    correct = np.array([1] * 13 + [0] * 7, dtype=float)
    lo, hi = bootstrap_ci(correct, resamples=20000)
    ref = bootstrap((correct,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                    random_state=np.random.default_rng(1)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.026) and hi == pytest.approx(ref.high, abs=0.026)
    assert bootstrap_ci(correct) == bootstrap_ci(correct)  # seeded: the same leaderboard every time
    assert lo < 0.65 < hi


def test_a_sweep_ranked_on_test_is_warned_and_test_scores_carry_intervals(cache, tmp_path):
    from featcache.sweep.leaderboard import bootstrap_ci

    sweep = write(tmp_path, "base: {head: pool, view: uniform:8, epochs: 1, batch_size: 8}\n"
                            "parameters: {lr: {values: [1.0e-3, 1.0e-2]}}\nmetric: {name: test/top1, goal: maximize}\n")
    out = str(tmp_path / "out")
    r = runner.invoke(app, ["ablate", sweep, "--cache", cache, "--out", out, "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: metric test/top1: selected on a test metric: choosing the best cell by its test score is " \
           "not a valid protocol" in r.output and "ranked on test: not a valid protocol" in r.output
    md = open(os.path.join(out, "leaderboard.md")).read()
    assert "**Warning**: selected on a test metric" in md and "95% percentile bootstrap over the test videos" in md
    for row in csv.DictReader(open(os.path.join(out, "leaderboard.csv"))):
        preds = list(csv.DictReader(open(os.path.join(out, "cells", row["cell"], "predictions_test.csv"))))
        classes = [k for k in preds[0] if k not in ("video_id", "labels")]
        correct = np.array([max(classes, key=lambda c: float(p[c])) == p["labels"] for p in preds], dtype=float)
        assert float(row["test/top1"]) == pytest.approx(correct.mean())
        assert row["test/top1 95% CI"] == "{:.4f}-{:.4f}".format(*bootstrap_ci(correct))


def test_one_varied_axis_draws_no_repeated_panel(monkeypatch, tmp_path):
    from featcache.sweep import leaderboard

    drawn = {}
    monkeypatch.setattr("featcache.train.figures.plot_leaderboard",
                        lambda path, cells, panels, *a, **k: drawn.update(cells=cells, panels=panels))
    rows = [{"cell": f"c{i}", "index": i, "settings": {"lr": lr, "head": "pool"}, "metrics": {"val/top1": v, "test/top1": v},
             "params": 1, "train_s": 1.0, "classes": 2} for i, (lr, v) in enumerate([(1e-3, 0.5), (1e-2, 0.6)])]
    leaderboard.write_leaderboard(str(tmp_path), rows, ("lr", "head"), "val/top1", "maximize")
    assert len(drawn["cells"]) == 2 and drawn["panels"] == []  # lr's panel would be the cells again
    rows += [{**rows[0], "cell": "c2", "index": 2, "settings": {"lr": 1e-3, "head": "r3d"}}]
    leaderboard.write_leaderboard(str(tmp_path), rows, ("lr", "head"), "val/top1", "maximize")
    assert [name for name, _ in drawn["panels"]] == ["lr", "head"]
