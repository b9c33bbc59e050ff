"""Labels and splits at training time (issue 19, section 1): one extraction without annotations,
three official-style split manifests, three trainings, each on its manifest's lists."""
import csv
import json
import os

import numpy as np
import pytest
import yaml
from conftest import TINY_CLI, VIDEO_SIZE
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cli import app
from featcache.data.annotations import annotate, file_sha256
from featcache.data.synthetic import motion_clip, write_video

runner = CliRunner()
CLASSES = {"MoveLeft": "left", "MoveRight": "right", "MoveUp": "up"}
GROUPS, CLIPS = 3, 2  # performer groups g01..g03, clips c01..c02 of each: 18 videos


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """A UCF101-layout dataset (Class/v_Class_gXX_cYY.avi, classInd.txt, trainlist0N/testlist0N
    with split N testing on group N), its three manifests written by `featcache manifest ucf101
    --split-id 1,2,3`, and one cache extracted from a plain list of the video paths."""
    root = tmp_path_factory.mktemp("ucf")
    rng = np.random.default_rng(0)
    videos = []
    for cls, direction in CLASSES.items():
        os.makedirs(root / "UCF-101" / cls)
        for g in range(1, GROUPS + 1):
            for c in range(1, CLIPS + 1):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                write_video(str(root / "UCF-101" / rel), motion_clip(direction, rng, num_frames=12, size=VIDEO_SIZE))
                videos.append(rel)
    lists = root / "ucfTrainTestlist"
    os.makedirs(lists)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, 1)))
    for split in range(1, 4):
        train = [v for v in videos if f"_g{split:02d}_" not in v]
        test = [v for v in videos if f"_g{split:02d}_" in v]
        (lists / f"trainlist0{split}.txt").write_text(
            "".join(f"{v} {list(CLASSES).index(v.split('/')[0]) + 1}\n" for v in train))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{v}\n" for v in test))
    ok(runner.invoke(app, ["manifest", "ucf101", str(root / "UCF-101"), "--splits", str(lists),
                           "--split-id", "1,2,3", "--out", str(root / "ucf.csv"), "--val-fraction", "0"]))
    paths = root / "videos.txt"  # extraction needs no labels or splits: a plain list of paths
    paths.write_text("".join(f"UCF-101/{v}\n" for v in videos))
    cache = str(root / "ucf.zarr")
    r = ok(runner.invoke(app, ["extract", str(paths), "--out", cache, "--frames", "uniform:4", *TINY_CLI,
                               "--decode-workers", "0", "-q"]))
    assert "extracted 18 videos, 0 failed" in r.output
    return {"root": root, "cache": cache, "manifests": [str(root / f"ucf_s{i}.csv") for i in (1, 2, 3)],
            "lists": lists}


def split_ids(manifest, split):
    return sorted(r["video_id"] for r in read_csv(manifest) if r["split"] == split)


def train(cache, out, *args):
    return runner.invoke(app, ["train", cache, "--head", "linear", "--view", "uniform:4", "--set", "epochs=2",
                               "--set", "batch_size=4", "--set", "select=last", "--out", str(out), "-q", *args])


def test_three_splits_from_one_extraction_train_on_their_own_lists(ucf, tmp_path):
    records = open_cache(ucf["cache"]).records().values()
    assert all(r["labels"] == [] and r["split"] == "" for r in records)  # the store holds no annotations
    for i, manifest in enumerate(ucf["manifests"], 1):
        tests = split_ids(manifest, "test")
        assert tests == sorted(f"v_{c}_g{i:02d}_c{k:02d}" for c in CLASSES for k in (1, 2))  # the official lists
        out = tmp_path / f"s{i}"
        r = ok(train(ucf["cache"], out, "--manifest", manifest))
        assert f"labels and splits: {os.path.abspath(manifest)}" in r.output and "train 12, val 0, test 6" in r.output
        assert sorted(p["video_id"] for p in read_csv(out / "predictions_test.csv")) == tests
        ok(runner.invoke(app, ["eval", str(out), "--split", "train"]))  # the run's manifest by default
        assert sorted(p["video_id"] for p in read_csv(out / "predictions_train.csv")) == split_ids(manifest, "train")
        meta = yaml.safe_load(open(out / "config.yaml"))
        assert meta["manifest"]["path"] == os.path.abspath(manifest)
        assert meta["manifest"]["sha256"] == file_sha256(manifest)
        assert meta["config"]["manifest"] == manifest and meta["classes"] == sorted(CLASSES)


def test_without_a_manifest_a_cache_without_splits_says_what_to_give(ucf, tmp_path):
    r = train(ucf["cache"], tmp_path / "run")
    assert r.exit_code == 2
    assert "no videos in the train split" in r.output and "--manifest" in r.output
    assert "Traceback" not in r.output


def test_missing_and_unlisted_videos_are_counted_and_named(ucf, tmp_path):
    rows = read_csv(ucf["manifests"][0])
    dropped = rows[0]["video_id"]
    rows = rows[1:] + [{**rows[1], "video_id": "v_Ghost_g01_c01", "path": "Ghost/v_Ghost_g01_c01.avi"}]
    manifest = tmp_path / "partial.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = ok(train(ucf["cache"], tmp_path / "run", "--manifest", str(manifest)))
    assert "1 video(s) of the manifest are not in the cache (not extracted or failed), left out: v_Ghost_g01_c01" in r.output
    assert f"1 cached video(s) are not in the manifest, left out: {dropped}" in r.output
    meta = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))["manifest"]
    assert (meta["missing"], meta["unlisted"]) == (1, 1)
    ann = annotate(open_cache(ucf["cache"]), str(manifest)).annotations
    assert ann.missing == ["v_Ghost_g01_c01"] and ann.unlisted == [dropped]
    assert sum(ann.counts().values()) == 17


def test_a_training_manifest_needs_only_video_id_label_split(ucf, tmp_path):
    """Relabelling after extraction: a manifest without paths, labels remapped (two classes merged)."""
    rows = read_csv(ucf["manifests"][1])
    merged = tmp_path / "merged.csv"
    merged.write_text("video_id,label,split\n" + "".join(
        f"{r['video_id']},{'Horizontal' if r['label'] != 'MoveUp' else 'Vertical'},{r['split']}\n" for r in rows))
    out = tmp_path / "run"
    ok(train(ucf["cache"], out, "--manifest", str(merged)))
    assert yaml.safe_load(open(out / "config.yaml"))["classes"] == ["Horizontal", "Vertical"]
    preds = read_csv(out / "predictions_test.csv")
    assert {p["labels"] for p in preds} == {"Horizontal", "Vertical"}


def test_eval_refuses_another_class_list_and_a_changed_manifest(ucf, tmp_path):
    out = tmp_path / "run"
    ok(train(ucf["cache"], out, "--manifest", ucf["manifests"][0]))
    ok(runner.invoke(app, ["eval", str(out), "--manifest", ucf["manifests"][2]]))  # same classes, split 3's test list
    assert sorted(p["video_id"] for p in read_csv(out / "predictions_test.csv")) == split_ids(ucf["manifests"][2], "test")
    rows = read_csv(ucf["manifests"][0])
    other = tmp_path / "other.csv"
    other.write_text("video_id,label,split\n" + "".join(
        f"{r['video_id']},{'Sideways' if r['label'] == 'MoveLeft' else r['label']},{r['split']}\n" for r in rows))
    r = runner.invoke(app, ["eval", str(out), "--manifest", str(other)])
    assert r.exit_code == 2 and "its class list differs from the run's" in r.output and "Sideways" in r.output
    copy = tmp_path / "copy.csv"  # a run whose manifest changes on disk after training
    copy.write_bytes(open(ucf["manifests"][0], "rb").read())
    out2 = tmp_path / "run2"
    ok(train(ucf["cache"], out2, "--manifest", str(copy)))
    copy.write_text(copy.read_text().replace(",train\n", ",test\n", 1))
    r = runner.invoke(app, ["eval", str(out2)])
    assert r.exit_code == 2 and "has changed since" in r.output


def test_resume_refuses_another_manifest_or_a_changed_one(ucf, tmp_path):
    copy = tmp_path / "s1.csv"
    copy.write_bytes(open(ucf["manifests"][0], "rb").read())
    out = tmp_path / "run"
    ok(train(ucf["cache"], out, "--manifest", str(copy), "--set", "keep_last=true"))
    os.remove(out / "metrics.json")  # as if interrupted after its last epoch
    r = train(ucf["cache"], out, "--manifest", ucf["manifests"][1], "--set", "keep_last=true", "--resume")
    assert r.exit_code == 2 and "another config or cache" in r.output
    copy.write_text(copy.read_text().replace(",train\n", ",test\n", 1))
    r = train(ucf["cache"], out, "--manifest", str(copy), "--set", "keep_last=true", "--resume")
    assert r.exit_code == 2 and "other labels and splits" in r.output


def test_sweep_over_three_manifests_and_the_mean_over_splits(ucf, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "cache": ucf["cache"], "base": {"head": "linear", "view": "uniform:4", "epochs": 2, "batch_size": 4, "select": "last"},
        "parameters": {"manifest": {"values": ucf["manifests"]}, "lr": {"values": [1e-3, 1e-2]}},
        "metric": {"name": "test/top1"}}))
    out = tmp_path / "sweep"
    r = ok(runner.invoke(app, ["ablate", str(sweep), "--out", str(out), "-q"]))
    assert sum(line.startswith("labels and splits: ") for line in r.output.splitlines()) == 3  # before training
    cells = {}
    for name in os.listdir(out / "cells"):
        meta = yaml.safe_load(open(out / "cells" / name / "config.yaml"))
        manifest = meta["config"]["manifest"]
        tests = sorted(p["video_id"] for p in read_csv(out / "cells" / name / "predictions_test.csv"))
        assert tests == split_ids(manifest, "test")
        cells[(manifest, meta["config"]["lr"])] = json.load(open(out / "cells" / name / "metrics.json"))["test/top1"]
    assert len(cells) == 6
    means = read_csv(out / "leaderboard.csv")  # the manifest axis is a replicate axis: the mean over splits
    assert len(means) == 2 and len(read_csv(out / "leaderboard_runs.csv")) == 6
    for row in means:
        values = [cells[(m, float(row["lr"]))] for m in ucf["manifests"]]
        assert float(row["test/top1"]) == pytest.approx(np.mean(values), abs=1e-4)
        assert float(row["test/top1_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)
        assert row["n"] == "3"


def test_manifest_split_ids_one_file_each(ucf):
    for i, manifest in enumerate(ucf["manifests"], 1):
        prov = json.load(open(f"{manifest}.json"))
        assert prov["arguments"][1] == i
    r = runner.invoke(app, ["manifest", "ucf101", str(ucf["root"] / "UCF-101"), "--splits", str(ucf["lists"]),
                            "--split-id", "1,x", "--out", str(ucf["root"] / "bad.csv")])
    assert r.exit_code == 2 and "--split-id: expected 1, 2, 3 or a list such as 1,2,3" in r.output


def test_re_extracting_with_a_relabelled_manifest_says_the_store_keeps_its_own(ucf, tmp_path):
    r = ok(runner.invoke(app, ["extract", ucf["manifests"][0], "--out", ucf["cache"], "--frames", "uniform:4",
                               *TINY_CLI, "--decode-workers", "0", "-q"]))
    assert "18 already cached" in r.output
    assert f"warning: 18 cached video(s) have other labels or splits in {ucf['manifests'][0]}" in r.output
    assert f"train with --manifest {ucf['manifests'][0]}" in r.output


def test_probe_takes_labels_and_splits_from_the_manifest(ucf, tmp_path):
    out = tmp_path / "knn"
    manifest = ucf["manifests"][1]
    r = ok(runner.invoke(app, ["probe", ucf["cache"], "--method", "knn", "--view", "uniform:4", "--feature", "mean",
                               "--manifest", manifest, "--set", "val_fraction=0.3", "--out", str(out)]))
    assert f"labels and splits: {os.path.abspath(manifest)}" in r.output
    assert sorted(p["video_id"] for p in read_csv(out / "predictions_test.csv")) == split_ids(manifest, "test")
    val = {p["video_id"] for p in read_csv(out / "predictions_val.csv")}
    assert val and val <= set(split_ids(manifest, "train"))  # carved from this manifest's train list
    assert yaml.safe_load(open(out / "config.yaml"))["manifest"]["sha256"] == file_sha256(manifest)


def test_pretrain_takes_its_splits_from_the_manifest(tmp_path):
    """PRP uses no labels, but its train/val videos are the manifest's."""
    from featcache.data.synthetic import make_dataset

    src = make_dataset(str(tmp_path), "motion", per_class=3, num_frames=12, size=VIDEO_SIZE)
    cache = str(tmp_path / "dense.zarr")
    ok(runner.invoke(app, ["extract", src, "--out", cache, "--frames", "stride:1", *TINY_CLI, "--decode-workers", "0",
                           "-q"]))
    rows = read_csv(src)
    manifest = tmp_path / "splits.csv"
    manifest.write_text("video_id,label,split\n" + "".join(
        f"{r['video_id']},,{'train' if i < 4 else 'val'}\n" for i, r in enumerate(rows)))
    out = tmp_path / "prp"
    r = ok(runner.invoke(app, ["pretrain", cache, "--set", "head.hidden=8", "--set", "head.out_dim=8",
                               "--set", "head.mlp_hidden=8", "--set", "epochs=1", "--manifest", str(manifest),
                               "--out", str(out), "-q"]))
    assert f"videos: train 4, val {len(rows) - 4}, test 0" in r.output
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["prp/train_clips"] == 4 * 4 and metrics["prp/val_clips"] == (len(rows) - 4) * 4
    assert f"--manifest {manifest}" in r.output  # the fine-tune command keeps the labels' source


def test_a_cache_extracted_with_split_1_trains_on_split_2_when_told(ucf, tmp_path):
    s1, s2 = ucf["manifests"][:2]
    cache = str(tmp_path / "s1.zarr")
    ok(runner.invoke(app, ["extract", s1, "--out", cache, "--frames", "uniform:4", *TINY_CLI, "--decode-workers", "0",
                           "-q"]))
    ok(train(cache, tmp_path / "default"))  # the store's own annotations: split 1
    assert sorted(p["video_id"] for p in read_csv(tmp_path / "default" / "predictions_test.csv")) == split_ids(s1, "test")
    ok(train(cache, tmp_path / "two", "--manifest", s2))
    assert sorted(p["video_id"] for p in read_csv(tmp_path / "two" / "predictions_test.csv")) == split_ids(s2, "test")
    ok(runner.invoke(app, ["eval", str(tmp_path / "two"), "--split", "train"]))
    assert sorted(p["video_id"] for p in read_csv(tmp_path / "two" / "predictions_train.csv")) == split_ids(s2, "train")
    assert split_ids(s1, "test") != split_ids(s2, "test")
