"""Nothing silent, nothing half-done (issue 19, section 2): failed videos and missing splits are
said up front, truncated files are a warning or a failure, `eval --checkpoint last` never
overwrites the best checkpoint's outputs, values are range-checked, sweeps are validated whole."""
import csv
import hashlib

import numpy as np
import pytest
import yaml
from conftest import TINY_CLI, VIDEO_SIZE, write_manifest
from typer.testing import CliRunner

from featcache.cli import app
from featcache.data.synthetic import make_dataset, motion_clip, write_video

runner = CliRunner()


def error_line(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("featcache: error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def noval(tmp_path_factory):
    """A cache whose manifest has train and test but no val, and one video that fails to decode."""
    root = tmp_path_factory.mktemp("noval")
    manifest = make_dataset(str(root), "motion", per_class=5, num_frames=12, size=VIDEO_SIZE)
    rows = list(csv.DictReader(open(manifest)))
    rows = [{**r, "split": "train" if r["split"] == "val" else r["split"]} for r in rows]
    rows.append({"video_id": "ghost", "path": "videos/ghost.mp4", "label": "left", "split": "train"})
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cache = str(root / "c.zarr")
    r = runner.invoke(app, ["extract", manifest, "--out", cache, "--frames", "uniform:4", *TINY_CLI,
                            "--decode-workers", "0", "-q"])
    assert r.exit_code == 1 and "failed: ghost: file not found" in r.output, r.output
    return {"root": root, "cache": cache, "manifest": manifest, "rows": rows}


TRAIN = ["--head", "linear", "--view", "uniform:4", "--set", "epochs=2", "--set", "batch_size=8", "-q"]


def test_no_val_split_is_refused_up_front_with_counts_and_failed_ids(noval, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--out", str(out)])
    line = error_line(r)
    assert "no videos in the val split (the store's annotations) for select: val" in line
    assert "--set val_fraction=0.1" in line and "--set select=last" in line
    assert "labels and splits: the store's own (its extraction manifest); videos: train 16, val 0, test 4" in r.output
    assert "1 video(s) failed at extraction, left out: ghost" in r.output
    assert not out.exists()


def test_val_fraction_carves_a_stable_val_split_that_eval_reuses(noval, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", "val_fraction=0.3", "--out", str(out)])
    assert r.exit_code == 0, r.output

    def unit(video_id):  # the carve, recomputed: sha256("val:" + id) as a fraction of 2**64
        return int.from_bytes(hashlib.sha256(f"val:{video_id}".encode()).digest()[:8], "big") / 2**64

    train_ids = [x["video_id"] for x in noval["rows"] if x["split"] == "train" and x["video_id"] != "ghost"]
    expected = sorted(v for v in train_ids if unit(v) < 0.3)
    assert expected and len(expected) < len(train_ids)
    assert sorted(p["video_id"] for p in csv.DictReader(open(out / "predictions_val.csv"))) == expected
    meta = yaml.safe_load(open(out / "config.yaml"))["manifest"]
    assert meta["videos"] == {"train": 16 - len(expected), "val": len(expected), "test": 4}
    r = runner.invoke(app, ["eval", str(out), "--split", "val"])
    assert r.exit_code == 0, r.output
    assert sorted(p["video_id"] for p in csv.DictReader(open(out / "predictions_val.csv"))) == expected


def test_select_last_trains_without_val(noval, tmp_path):
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", "select=last", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0 and "kept the last epoch (1, select: last); test/macro_f1" in r.output, r.output


def test_empty_val_and_test_splits_say_nothing_was_evaluated(noval, tmp_path):
    """Issue 34 item 10: a run whose val and test splits are empty printed "best epoch 0;" and
    exited 0 as if all were well."""
    rows = [{"video_id": x["video_id"], "label": x["label"], "split": "train"} for x in noval["rows"]
            if x["video_id"] != "ghost"]
    manifest = write_manifest(tmp_path / "alltrain.csv", rows)
    out = str(tmp_path / "r")
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", "select=last", "--manifest", str(manifest),
                            "--out", out])
    assert r.exit_code == 0, r.output
    assert "best epoch 0;" not in r.output and "kept the last epoch (1, select: last)\n" in r.output
    assert (f"warning: no val or test videos in the splits, so the head was not evaluated on val or test: "
            f"nothing measures how well it does; give a manifest with val and test splits (--manifest M.csv), "
            f"or evaluate later with featcache eval {out} --manifest M.csv") in r.output


@pytest.mark.parametrize("pair,message", [
    ("batch_size=0", "batch_size: must be >= 1, got 0"),
    ("batch_size=-4", "batch_size: must be >= 1, got -4"),
    ("epochs=0", "epochs: must be >= 1, got 0"),
    ("lr=0", "lr: must be > 0, got 0.0"),
    ("lr=-0.1", "lr: must be > 0, got -0.1"),
    ("weight_decay=-1", "weight_decay: must be >= 0, got -1.0"),
    ("label_smoothing=1.5", "label_smoothing: must be >= 0 and < 1, got 1.5"),
    ("val_fraction=1", "val_fraction: must be >= 0 and < 1, got 1.0"),
    ("momentum=1", "momentum: must be >= 0 and < 1, got 1.0"),
    ("select=best", "select: 'best' is not one of val, last"),
])
def test_values_are_range_checked_at_parse_time(noval, tmp_path, pair, message):
    out = tmp_path / "run"
    line = error_line(runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", pair, "--out", str(out)]))
    assert line == f"featcache: error: --set {message}"
    assert not out.exists()  # nothing left behind to block --out


def test_eval_last_never_overwrites_the_best_checkpoints_outputs(noval, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", "select=last", "--set", "keep_last=true",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    best = (out / "predictions_test.csv").read_bytes()
    r = runner.invoke(app, ["eval", str(out), "--checkpoint", "last"])
    assert r.exit_code == 0, r.output
    assert '"test/top1@last"' in r.output
    assert (out / "predictions_test@last.csv").exists() and (out / "eval_test@last.json").exists()
    assert (out / "per_class_test@last.csv").exists()
    assert (out / "predictions_test.csv").read_bytes() == best
    plain = tmp_path / "plain"
    r = runner.invoke(app, ["train", noval["cache"], *TRAIN, "--set", "select=last", "--out", str(plain)])
    assert r.exit_code == 0
    assert "has no last.pt" in error_line(runner.invoke(app, ["eval", str(plain), "--checkpoint", "last"]))


def test_a_wrong_sweep_metric_fails_before_any_cell_trains(noval, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"cache": noval["cache"], "base": {"head": "linear", "view": "uniform:4",
                                                                      "epochs": 1, "select": "last"},
                                     "parameters": {"lr": {"values": [1e-3, 1e-2]}},
                                     "metric": {"name": "test/acc"}}))
    out = tmp_path / "out"
    line = error_line(runner.invoke(app, ["ablate", str(sweep), "--out", str(out), "-q"]))
    assert "metric.name: 'test/acc' is not a metric these cells report; expected one of" in line
    assert "test/top1" in line
    assert not (out / "cells").exists()
    sweep.write_text(sweep.read_text().replace("test/acc", "val/top1"))  # no val: said before training too
    line = error_line(runner.invoke(app, ["ablate", str(sweep), "--out", str(out), "-q"]))
    assert "no videos in the val split" in line and "the sweep metric val/top1" in line
    assert not (out / "cells").exists()


def test_truncated_files_warn_or_fail(tmp_path):
    full = str(tmp_path / "full.mkv")
    write_video(full, motion_clip("left", np.random.default_rng(0), num_frames=200, size=(160, 120)))
    data = open(full, "rb").read()
    (tmp_path / "cut.mkv").write_bytes(data[:len(data) // 2])
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\ncut,{tmp_path / 'cut.mkv'}\nfull,{full}\n")
    base = ["extract", str(manifest), "--frames", "uniform:4", *TINY_CLI, "--decode-workers", "0", "-q"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "warn.zarr")])
    assert r.exit_code == 0 and "warning: cut: decoded" in r.output and "source.truncated" in r.output, r.output
    from featcache import open_cache

    assert open_cache(str(tmp_path / "warn.zarr")).video("cut").record["source"]["truncated"] is True
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "fail.zarr"), "--truncated", "fail"])
    assert r.exit_code == 1 and "extracted 1 videos, 1 failed" in r.output
    assert "failed: cut: truncated: decoded" in r.output and "(--truncated fail)" in r.output
    assert open_cache(str(tmp_path / "fail.zarr")).failures()["cut"].startswith("truncated: decoded")
    assert "--truncated: unknown 'maybe'" in error_line(runner.invoke(app, [*base, "--out", str(tmp_path / "x.zarr"),
                                                                             "--truncated", "maybe"]))


def test_the_default_view_comes_from_the_cache(noval, tmp_path):
    """Issue 34 item 12: `train clips.zarr --head pool` defaulted to uniform:8, which a cache of
    uniform:4 (or of clips) cannot serve; the default now comes from the cache, and --help says so."""
    from featcache.cache.facts import StoreAttrs
    from featcache.cli.train import default_view as view_of

    def default_view(attrs):  # the store's root attributes, as the cache parses them
        return view_of(StoreAttrs.from_json(attrs))

    args = [a for a in TRAIN if a not in ("--view", "uniform:4")]
    r = runner.invoke(app, ["train", noval["cache"], *args, "--set", "select=last", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0 and "trained linear on uniform:4;" in r.output, r.output
    clip = {"frames": {"policies": ["windows:4/4@fps:8"]}, "tokens": {"unit": "clip"}}
    assert default_view(clip) == "clips:8"
    assert default_view({"frames": {"policies": ["clips:3"]}, "tokens": {"unit": "clip"}}) == "clips:3"
    assert default_view({"frames": {"policies": ["keyframes:8", "uniform:16", "uniform:8"]}, "tokens": {}}) == "uniform:16"
    assert default_view({"frames": {"policies": ["stride:1"]}, "tokens": {}}) == "uniform:8"
    help_text = runner.invoke(app, ["train", "--help"], terminal_width=300).output
    assert "Default: from the cache" in help_text
