"""Tracked runs (log=tensorboard / wandb, curves.png) and replicates in the leaderboard."""
import csv
import json
import sys
import types

import numpy as np
import pytest
import yaml
from conftest import cli, ctrl_c_after_epoch, extract_motion

from featcache.sweep.leaderboard import aggregate, metric_columns

FAST = ["--set", "batch_size=8", "-q"]


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    return extract_motion(tmp_path_factory, per_class=10, frames="uniform:8")


def log_of(run):
    return [json.loads(line) for line in open(run / "log.jsonl")]


def scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_one_point_per_epoch(motion, tmp_path):
    run = tmp_path / "run"
    cli("train", motion, "--head", "pool", "--set", "epochs=3", "--set", "log=tensorboard", *FAST, "--out", run)
    events, log = scalars(run), log_of(run)
    for tag in ("train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "lr"):
        assert [s for s, _ in events[tag]] == [0, 1, 2], tag
        assert [v for _, v in events[tag]] == pytest.approx([r[tag] for r in log], rel=1e-6), tag
    metrics = json.load(open(run / "metrics.json"))
    assert events["test/top1"] == [(metrics["best_epoch"], pytest.approx(metrics["test/top1"]))]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_continues_its_curves_without_duplicates(motion, tmp_path):
    run, args = tmp_path / "run", ["--head", "pool", "--set", "epochs=4", "--set", "log=tensorboard", *FAST]
    with ctrl_c_after_epoch(1):
        cli("train", motion, *args, "--out", run, code=130)
    cli("train", motion, *args, "--out", run, "--resume")
    assert [s for s, _ in scalars(run)["train/loss"]] == [0, 1, 2, 3]
    assert [r["epoch"] for r in log_of(run)] == [0, 1, 2, 3]


class FakeRun:
    def __init__(self, **kwargs):
        self.init, self.logged, self.summary, self.finished = kwargs, [], {}, False

    def log(self, values, step=None):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    runs = []
    module = types.ModuleType("wandb")
    module.init = lambda **kw: runs.append(FakeRun(**kw)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return runs


def test_wandb_gets_the_config_every_epoch_and_the_final_metrics_offline(motion, tmp_path, fake_wandb):
    run = tmp_path / "run"
    cli("train", motion, "--head", "pool", "--set", "epochs=2", "--set", "log=tensorboard,wandb", *FAST, "--out", run)
    (w,) = fake_wandb
    assert w.init["mode"] == "offline" and w.init["dir"] == str(run) and w.init["name"] == "run"
    assert w.init["config"] == yaml.safe_load(open(run / "config.yaml"))["config"]
    assert w.init["id"] == (run / "wandb_id").read_text()
    log = log_of(run)
    assert [s for s, _ in w.logged] == [0, 1]
    assert [v["val/top1"] for _, v in w.logged] == [r["val/top1"] for r in log]
    assert w.summary["test/top1"] == json.load(open(run / "metrics.json"))["test/top1"] and w.finished
    assert "train/loss" in scalars(run)  # both loggers at once


def test_each_cell_of_a_fused_pass_is_its_own_wandb_run(motion, tmp_path, fake_wandb):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"cache": motion, "base": {"epochs": 2, "batch_size": 8, "log": "wandb"},
                                     "parameters": {"head": {"values": ["pool", "linear"]}}}))
    assert "training 2 cell(s) in one pass" in cli("ablate", sweep, "--out", tmp_path / "sw", "-q").output
    assert sorted(r.init["name"] for r in fake_wandb) == ["000_head=pool", "001_head=linear"]
    assert all(len(r.logged) == 2 and r.finished for r in fake_wandb)


def test_logger_errors_are_one_line(motion, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    err = cli("train", motion, "--set", "log=wandb", "--out", tmp_path / "a", code=2).output
    assert "log=wandb needs the wandb package: pip install 'featcache[wandb]'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()  # nothing written
    err = cli("train", motion, "--set", "log=mlflow", "--out", tmp_path / "b", code=2).output
    assert "log: 'mlflow' is not one of jsonl, tensorboard, wandb" in err


# ------------------------------------------------------------------ replicates in the leaderboard
def test_a_three_seed_sweep_reports_numpys_mean_and_std_per_cell(motion, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"cache": motion, "base": {"epochs": 2, "batch_size": 8},
                                     "parameters": {"head": {"values": ["pool", "linear"]},
                                                    "seed": {"values": [0, 1, 2]}}}))
    out = tmp_path / "sw"
    printed = cli("ablate", sweep, "--out", out, "-q").output
    runs = list(csv.DictReader(open(out / "leaderboard_runs.csv")))
    cells = list(csv.DictReader(open(out / "leaderboard.csv")))
    assert len(runs) == 6 and sorted(r["seed"] for r in runs) == ["0", "0", "1", "1", "2", "2"]
    assert len(cells) == 2 and {c["n"] for c in cells} == {"3"} and "seed" not in cells[0]
    for cell in cells:
        mine = [r for r in runs if r["head"] == cell["head"]]
        for key in ("val/top1", "test/top1", "test/macro_f1"):
            values = np.array([float(r[key]) for r in mine])
            assert float(cell[key]) == pytest.approx(values.mean(), abs=6e-5), key  # 4 decimals in the CSV
            assert float(cell[f"{key}_std"]) == pytest.approx(values.std(ddof=1), abs=6e-5), key
    assert float(cells[0]["val/top1"]) >= float(cells[1]["val/top1"]) and cells[0]["best"] == "*"
    assert not any("top5" in k for k in cells[0])  # 4 classes: top5 is 1 by construction
    assert f"best: {cells[0]['cell']} val/top1 {float(cells[0]['val/top1']):.4f}" in printed
    md = open(out / "leaderboard.md").read()
    assert f"{cells[0]['val/top1']} ± {cells[0]['val/top1_std']}" in md and "leaderboard_runs.csv" in md
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregate_and_columns_on_hand_made_rows():
    rows = [{"cell": f"{i:03d}", "index": i, "settings": {"head": h, "seed": s}, "params": 1, "train_s": 1.0,
             "classes": 10, "metrics": {"val/top1": v, "val/top5": 0.9, "best_epoch": 1}}
            for i, (h, s, v) in enumerate([("a", 0, 0.5), ("a", 1, 0.7), ("b", 0, 0.2), ("b", 1, 0.3)])]
    agg = aggregate(rows, ("head", "seed"))
    assert [(r.cell, r.n, r.runs) for r in agg] == [("000_head=a", 2, ("000", "001")),
                                                    ("002_head=b", 2, ("002", "003"))]
    assert agg[0].metrics["val/top1"] == pytest.approx(0.6)
    assert agg[0].std["val/top1"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert agg[0].params == 1 and agg[0].classes == 10 and agg[0].train_s == 2.0
    assert metric_columns(rows) == ["val/top1", "val/top5"]  # 10 classes: top5 kept
    assert metric_columns([{**r, "classes": 5} for r in rows]) == ["val/top1"]
    assert [r.n for r in aggregate(rows, ("head",))] == [1, 1, 1, 1]  # no replicate axis: rows unchanged
    assert [r.to_json() for r in aggregate(rows, ("head",))] == [
        {**r, "settings": {"head": r["settings"]["head"]}, "ci": {}, "n": 1, "runs": [r["cell"]],
         "std": {k: 0.0 for k in r["metrics"]}} for r in rows]  # the dict rows of before, typed


def test_tensorboard_gets_the_hparams_of_each_run(motion, tmp_path):
    """Issue 34 item 22: TensorBoard got scalars only; each run now logs its config as hparams with
    its final val/test metrics, so sweep cells compare in the HParams view."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    cli("train", motion, "--head", "pool", "--set", "epochs=2", "--set", "lr=0.003", "--set", "log=tensorboard",
        *FAST, "--out", run)
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["lr"].number_value == pytest.approx(0.003) and session.hparams["head"].string_value == "pool"
    assert session.hparams["view"].string_value == "uniform:8"
    metrics = json.load(open(run / "metrics.json"))
    assert scalars(run)["hparam/test/top1"][0][1] == pytest.approx(metrics["test/top1"])
