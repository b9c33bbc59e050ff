"""Evaluation protocols: predictions on disk, the official Charades mAP, multi-view testing."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_encoder_config
from typer.testing import CliRunner

from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.train.fit import run_training

runner = CliRunner()


def charades_map(scores: np.ndarray, gt: np.ndarray) -> tuple[float, int]:
    """Independent implementation of the official Charades definition (Charades_v1_classify.m;
    gsig/charades-algorithms pytorch/utils/map.py): drop videos without any label, then per class
    the mean of the precision at each positive in score order; classes without a positive are
    left out of the mean (NaN there). Returns (mAP, classes left out)."""
    keep = gt.sum(axis=1) > 0
    scores, gt = scores[keep], gt[keep]
    aps = []
    for c in range(gt.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        tp = gt[order, c] == 1
        if tp.sum() == 0:
            aps.append(np.nan)
            continue
        precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        aps.append(precision[tp].sum() / tp.sum())
    return float(np.nanmean(aps)), int(np.isnan(aps).sum())


def read_predictions(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = list(rows[0])[2:]
    scores = np.array([[float(r[c]) for c in classes] for r in rows])
    gt = np.array([[c in r["labels"].split(";") for c in classes] for r in rows], dtype=int)
    return rows, classes, scores, gt


def test_independent_map_matches_a_hand_computed_case():
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.6, 0.9], [0.5, 0.5, 0.5]])
    gt = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # video 3 unlabelled, class 2 empty
    # class 0 over videos 0-2: 0.9 (+), 0.8 (-), 0.1 (+) -> (1 + 2/3) / 2; class 1: 0.7 (+), 0.6 (+) -> 1
    assert charades_map(scores, gt) == (pytest.approx((5 / 6 + 1) / 2), 1)


@pytest.fixture(scope="module")
def multilabel_cache(tmp_path_factory):
    """Motion clips relabelled multi-label, with unlabelled test videos and a class absent from test."""
    root = tmp_path_factory.mktemp("ml")
    src = make_dataset(str(root), "motion", per_class=10, num_frames=16)
    rows = list(csv.DictReader(open(src)))
    for i, r in enumerate(rows):
        extra = "horizontal" if r["label"] in ("left", "right") else "vertical"
        if r["split"] == "test" and i % 3 == 0:
            r["label"] = ""  # unlabelled: excluded from mAP
        elif r["split"] != "test" or r["label"] != "up":
            r["label"] = f"{r['label']};{extra}"
        else:
            r["label"] = "vertical"  # 'up' never appears as a test label: an empty class
    manifest = root / "multi.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = str(root / "c.zarr")
    run_extract(ExtractConfig(manifest=str(manifest), out=out, frames="uniform:4,uniform:8",
                              encoder=tiny_encoder_config()), show_progress=False)
    return out


def test_test_map_equals_the_official_definition_from_the_predictions_file(multilabel_cache, tmp_path):
    cfg = build_config({"head": "pool", "view": "uniform:4", "epochs": 3, "batch_size": 8, "task": "multi"})
    results = run_training(multilabel_cache, cfg, str(tmp_path / "run"), show_progress=False)
    rows, classes, scores, gt = read_predictions(tmp_path / "run" / "predictions_test.csv")
    assert any(not r["labels"] for r in rows) and gt[:, classes.index("up")].sum() == 0
    expected, left_out = charades_map(scores, gt)
    assert results["test/mAP"] == pytest.approx(expected, abs=1e-6)
    assert results["test/mAP_excluded_classes"] == left_out == 1
    assert results["test/unlabelled_excluded"] == sum(not r["labels"] for r in rows)
    assert ((scores >= 0) & (scores <= 1)).all()  # sigmoid scores
    assert os.path.exists(tmp_path / "run" / "predictions_val.csv")


def test_eval_with_two_temporal_views_of_a_uniform16_pool(tmp_path):
    root = tmp_path / "ds"
    manifest = make_dataset(str(root), "appearance", per_class=5, num_frames=40)
    cache = str(tmp_path / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="uniform:8,uniform:16", encoder=tiny_encoder_config()),
                show_progress=False)
    run = str(tmp_path / "run")
    run_training(cache, build_config({"head": "pool", "view": "uniform:8", "epochs": 2, "batch_size": 8}), run,
                 show_progress=False)
    single = json.load(open(os.path.join(run, "metrics.json")))
    r = runner.invoke(app, ["eval", run, "--temporal-views", "2"])
    assert r.exit_code == 0, r.output
    two = json.loads(r.output)
    assert set(two) == {"test/top1@2x1", "test/top5@2x1", "test/mean_class_acc@2x1", "test/macro_f1@2x1"}
    assert os.path.exists(os.path.join(run, "eval_test@2x1.json"))
    rows, classes, scores, _ = read_predictions(os.path.join(run, "predictions_test@2x1.csv"))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)  # mean of two softmaxes
    truth = [classes.index(r["labels"]) for r in rows]
    assert two["test/top1@2x1"] == pytest.approx(np.mean(scores.argmax(1) == truth))
    assert "test/top1" in single  # the single-view numbers stay where train wrote them
    r = runner.invoke(app, ["eval", run, "--temporal-views", "3"])  # uniform:24 is not in a uniform:8,16 pool
    assert r.exit_code == 2 and "view uniform:24" in r.stderr and "re-extract" in r.stderr
    r = runner.invoke(app, ["eval", run, "--combine", "median"])
    assert r.exit_code == 2 and "--combine: unknown 'median'" in r.stderr


def test_sliding_windows_over_an_fps_pool(tmp_path):
    root = tmp_path / "ds"
    manifest = make_dataset(str(root), "appearance", per_class=5, num_frames=48)  # 48 frames at 25 fps
    cache = str(tmp_path / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="fps:10,uniform:4", encoder=tiny_encoder_config()),
                show_progress=False)
    from featcache import open_cache

    entry = open_cache(cache).video("red_000")
    assert len(entry.policies["fps:10"]) == 19  # 0, 0.1, ..., 1.8 s of a 1.88 s clip
    run = str(tmp_path / "run")
    run_training(cache, build_config({"head": "pool", "view": "uniform:4", "epochs": 2, "batch_size": 8}), run,
                 show_progress=False)
    r = runner.invoke(app, ["eval", run, "--window", "4", "--stride", "2", "--aggregate", "mean"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert "test/top1@w4s2mean" in res and os.path.exists(os.path.join(run, "predictions_test@w4s2mean.csv"))
    # by hand for one video: the mean of the softmax of windows [0:4], [2:6], ..., [14:18] of the pool
    import torch

    from featcache.cache.dataset import fill_view
    from featcache.spec.view import View
    from featcache.train import checkpoint as ck

    head = ck.build_head(ck.load(os.path.join(run, "best.pt")))
    test_id = sorted(r["video_id"] for r in csv.DictReader(open(manifest)) if r["split"] == "test")[0]
    entry = open_cache(cache).video(test_id)
    pos = entry.policies["fps:10"]
    wins = [pos[s:s + 4] for s in range(0, len(pos) - 3, 2)] + [pos[15:19]]  # + the tail: aligned to the end
    x = np.zeros((len(wins), 4, 17, 64), np.float16)
    for i, w in enumerate(wins):
        fill_view(x[i], entry, w, View("uniform:4"), open_cache(cache).attrs)
    with torch.no_grad():
        expected = torch.softmax(head(torch.from_numpy(x).float()), 1).mean(0).numpy()
    rows, classes, scores, _ = read_predictions(os.path.join(run, "predictions_test@w4s2mean.csv"))
    got = scores[[r["video_id"] for r in rows].index(test_id)]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    placed = {r["video_id"]: r for r in csv.DictReader(open(os.path.join(run, "windows_test@w4s2mean.csv")))}
    assert placed[test_id] == {"video_id": test_id, "pool": "fps:10", "pool_frames": "19", "window": "4",
                               "starts": "0 2 4 6 8 10 12 14 15", "tail_start": "15", "coverage": "1.000000"}
    assert res["test/window_coverage@w4s2mean"] == 1.0
    bad = runner.invoke(app, ["eval", run, "--window", "8"])
    assert bad.exit_code == 2 and "windows must have its length (--window 4)" in bad.stderr


def test_knn_is_dinov2s_weighted_vote():
    from featcache.train.probe import knn_scores

    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    y = np.array([0, 1, 1])
    q = np.array([[1.0, 0.1]])
    s = knn_scores(train, y, q, k=2, classes=2)
    # cosine to the query: 0.995 (class 0), 0.0995, 0.7739 (class 1); top-2: 0.995 and 0.774
    c = np.array([1.0, 0.1]) / np.linalg.norm([1.0, 0.1])
    w0, w1 = np.exp(c @ [1, 0] / 0.07), np.exp(c @ (np.array([0.7, 0.7]) / np.linalg.norm([0.7, 0.7])) / 0.07)
    np.testing.assert_allclose(s[0], [w0 / (w0 + w1), w1 / (w0 + w1)])


@pytest.mark.parametrize("method,key", [("knn", "knn/k"), ("logreg", "logreg/C")])
def test_probe_cli_writes_what_train_writes(tmp_path, method, key):
    root = tmp_path / "ds"
    manifest = make_dataset(str(root), "appearance", per_class=10, num_frames=16)
    cache = str(tmp_path / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="uniform:4", encoder=tiny_encoder_config()),
                show_progress=False)
    out = tmp_path / method
    r = runner.invoke(app, ["probe", cache, "--method", method, "--view", "uniform:4", "--feature", "mean",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    metrics = json.load(open(out / "metrics.json"))
    assert key in metrics and {"val/top1", "test/top1", "test/mean_class_acc"} <= set(metrics)
    rows, classes, scores, _ = read_predictions(out / "predictions_test.csv")
    truth = [classes.index(r["labels"]) for r in rows]
    assert metrics["test/top1"] == pytest.approx(np.mean(scores.argmax(1) == truth))
    if method == "logreg":  # colour classes from mean patch features: 1.0 here; k-NN on random-weight
        assert metrics["test/top1"] >= 0.75  # features (background-dominated cosine) measured 0.375-0.625
    assert (out / "per_class_test.csv").exists() and (out / "config.yaml").exists()
    bad = runner.invoke(app, ["probe", cache, "--method", "svm", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--method: unknown 'svm'" in bad.stderr


def test_three_crops_through_the_model_and_spatial_views(tmp_path):
    from featcache import open_cache
    from featcache.extract.encoder import FrozenEncoder

    root = tmp_path / "ds"
    manifest = make_dataset(str(root), "appearance", per_class=5, num_frames=16, size=(112, 56))  # wide: crops move
    cache = str(tmp_path / "c.zarr")
    s = run_extract(ExtractConfig(manifest=manifest, out=cache, frames="uniform:4", crops=3,
                                  encoder=tiny_encoder_config()), show_progress=False)
    assert not s.failed and s.frames == 3 * 4 * 20
    c = open_cache(cache)
    assert c.attrs["crops"]["count"] == 3 and c.verify() == []
    entry = c.video("red_000")
    assert entry.side_crops.shape == (2, *entry.tokens.shape)
    # independent: crop the decoded frames at offsets 0 and the margin, through the same model
    from featcache.video.decode import decode_video

    enc = FrozenEncoder(tiny_encoder_config())
    video = decode_video(entry.record["path"], lambda n, sm, st: entry.frame_indices, enc.short_side)
    h, w = video.frames.shape[1:3]
    top = int(round((h - 56) / 2))  # centred on the short side
    for side, left in ((0, 0), (1, w - 56)):  # offsets 0 and the margin along the long side
        crop = np.ascontiguousarray(video.frames[:, top:top + 56, left:left + 56])
        ref = enc(torch.from_numpy(crop)).numpy()
        np.testing.assert_allclose(entry.side_crops[side], ref.astype(np.float16), atol=2e-3)
    assert not np.allclose(entry.side_crops[0], entry.tokens, atol=1e-2)  # different crops
    run = str(tmp_path / "run")
    run_training(cache, build_config({"head": "pool", "view": "uniform:4", "epochs": 2, "batch_size": 8}), run,
                 show_progress=False)
    r = runner.invoke(app, ["eval", run, "--spatial-views", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert "test/top1@1x3" in res and os.path.exists(os.path.join(run, "predictions_test@1x3.csv"))
    rows, classes, scores, _ = read_predictions(os.path.join(run, "predictions_test@1x3.csv"))
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    no_crops = str(tmp_path / "n.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=no_crops, frames="uniform:4", encoder=tiny_encoder_config()),
                show_progress=False)
    run2 = str(tmp_path / "run2")
    run_training(no_crops, build_config({"head": "pool", "view": "uniform:4", "epochs": 1}), run2, show_progress=False)
    r = runner.invoke(app, ["eval", run2, "--spatial-views", "3"])
    assert r.exit_code == 2 and "re-extract with --crops 3" in r.stderr


def test_two_pools_evaluated_into_one_run_keep_their_own_files_and_a_refused_cache_names_its_facts(tmp_path):
    """Issue 34 items 2 and 14: `eval --window 4 --stride 2 --pool fps:10` then `--pool stride:2`
    used to write the same eval/predictions/per-class files; `eval --cache` of another cache said
    only "other model, preprocessing, layers or frames"."""
    manifest = make_dataset(str(tmp_path / "ds"), "motion", per_class=5, num_frames=24)
    cache = str(tmp_path / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="fps:10,stride:2,uniform:4",
                              encoder=tiny_encoder_config()), show_progress=False)
    run = str(tmp_path / "run")
    run_training(cache, build_config({"head": "pool", "view": "uniform:4", "epochs": 1, "batch_size": 8}), run,
                 show_progress=False)
    out = {}
    for pool in ("fps:10", "stride:2"):
        r = runner.invoke(app, ["eval", run, "--window", "4", "--stride", "2", "--pool", pool])
        assert r.exit_code == 0, r.output
        out[pool] = json.loads(r.output)
    # the cache's first pool (the default) keeps the earlier name; another pool's name joins the key
    assert out["fps:10"]["test/pool@w4s2max"] == "fps:10"
    assert out["stride:2"]["test/pool@w4s2max-stride2"] == "stride:2"
    assert "test/top1@w4s2max-stride2" in out["stride:2"] and "test/top1@w4s2max" in out["fps:10"]
    for key, pool in (("@w4s2max", "fps:10"), ("@w4s2max-stride2", "stride:2")):
        saved = json.load(open(os.path.join(run, f"eval_test{key}.json")))
        assert saved == out[pool] and saved[f"test/pool{key}"] == pool
        assert os.path.exists(os.path.join(run, f"predictions_test{key}.csv"))
    # the same pool named or defaulted writes the same file; the two pools' predictions differ
    a = read_predictions(os.path.join(run, "predictions_test@w4s2max.csv"))[2]
    b = read_predictions(os.path.join(run, "predictions_test@w4s2max-stride2.csv"))[2]
    assert a.shape == b.shape and np.abs(a - b).max() > 0, np.abs(a - b).max()
    default = runner.invoke(app, ["eval", run, "--window", "4", "--stride", "2"])
    assert json.loads(default.output) == out["fps:10"]
    # another cache: the refusal names the facts that differ, as extract does
    other = str(tmp_path / "o.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=other, frames="fps:10,stride:2,uniform:4",
                              encoder=tiny_encoder_config(precision="fp16")), show_progress=False)
    r = runner.invoke(app, ["eval", run, "--cache", other])
    assert r.exit_code == 2 and "is not the cache this head was trained on" in r.stderr
    assert r.stderr.strip().endswith(f"these facts differ from {cache}'s: compute.precision"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    import shutil

    shutil.rmtree(cache)  # the trained-on cache gone: said so, nothing named
    r = runner.invoke(app, ["eval", run, "--cache", other])
    assert r.exit_code == 2 and f"the cache it was trained on ({cache}) is not there to compare" in r.stderr


def test_windows_cover_a_30_1_s_video_to_its_end():
    """Issue 32 item 2: Charades' no-overlap stride 8 with 16-frame windows over a 30.1 s video
    (30 fps, 903 frames) at fps:1 scored frames 0-23 of the 31-frame pool (77%); the window
    aligned to the end covers it all. Independent count: the seconds each window spans."""
    from featcache.train.clips import coverage, window_starts
    from featcache.video.select import fps_indices

    stamps = np.arange(903) / 30.0  # 0 .. 30.0667 s
    pool = fps_indices(stamps, 1)
    assert len(pool) == 31 and pool[-1] == 900
    starts, tail = window_starts(len(pool), 16, 8)
    assert starts == [0, 8, 15] and tail == 15
    assert coverage(len(pool), 16, starts) == 1.0
    assert coverage(len(pool), 16, [0, 8]) == pytest.approx(24 / 31)  # the former rule: 77%
    seconds = set()  # independently: every pool second 0..30 falls in some window
    for s in starts:
        seconds |= set(range(s, s + 16))
    assert seconds == set(range(31))
    for width, stride in [(8, 8), (16, 3), (16, 16), (4, 1), (31, 5)]:  # a tail is added only when left
        starts, tail = window_starts(31, width, stride)
        assert coverage(31, width, starts) == 1.0 and starts[-1] == 31 - width
        assert (tail is None) == ((31 - width) % stride == 0)
    with pytest.raises(ValueError):
        window_starts(3, 4, 1)
