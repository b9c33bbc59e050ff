"""Clip caches of video encoders through the rest of featcache: estimate, cache info/verify,
int8, shards, resume, stage-2 views and heads, probe, and a Charades-style multi-label fixture
trained and evaluated with sliding windows over its clips (through the CLI, a subprocess for the
main path)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli, write_manifest

from featcache.cache.store import open_cache
from featcache.data.synthetic import appearance_clip, motion_clip, write_video

# r3d_18 at a 32x32 crop of a 40x53 resize, 4-frame clips: a few ms per clip on a CPU
TV = ["--model", "tv:r3d_18", "--weights", "random", "--precision", "fp32", "--model-arg", "crop_size=32",
      "--model-arg", "resize_size=[40,53]", "--model-arg", "clip_len=4"]
COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def charades(tmp_path_factory):
    """A Charades-style multi-label set: each video shows one coloured square, then another
    (labels ``A;B``); 8 train, 4 val, 4 test. Returns the manifest path."""
    root = tmp_path_factory.mktemp("charades")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        a, b = rng.choice(4, 2, replace=False)
        frames = np.concatenate([appearance_clip(COLOURS[a], rng, 20, (64, 48)), appearance_clip(COLOURS[b], rng, 20, (64, 48))])
        write_video(str(root / f"v{i:02d}.mp4"), frames)
        rows.append({"video_id": f"v{i:02d}", "path": f"v{i:02d}.mp4", "label": f"{COLOURS[a]};{COLOURS[b]}",
                     "split": ("train", "train", "val", "test")[i % 4]})
    return write_manifest(root / "m.csv", rows)


@pytest.fixture(scope="module")
def windows_cache(charades, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wc") / "c.zarr")
    cli("extract", charades, "--out", out, *TV, "--frames", "fps:8,windows:4/4", "-q")
    return out


def _run(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "featcache.cli", *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_charades_windows_from_a_clip_cache(charades, tmp_path):
    """extract (windows of 4 frames every 4 of an 8 fps pool) -> train an MLP on one clip's pooled
    token -> eval with sliding windows, max over the windows (the Charades video transformers study): the scores and mAP are
    recomputed here from the checkpoint and the cached tokens."""
    from sklearn.metrics import average_precision_score

    from featcache.train.checkpoint import build_head, load

    cache = str(tmp_path / "c.zarr")
    _run("extract", charades, "--out", cache, *TV, "--frames", "fps:8,windows:4/4", "-q")
    run = str(tmp_path / "run")
    _run("train", cache, "--head", "pool", "--view", "clips:1", "--out", run, "--set", "task=multi",
         "--set", "epochs=15", "--set", "lr=3e-3", "--set", "pos_weight=2.0", "--set", "head.frame_feature=cls",
         "--set", "head.mlp_layers=1", "--set", "head.frame_norm=false")
    _run("eval", run, "--window", "1", "--stride", "1", "--aggregate", "max")
    with open(os.path.join(run, "eval_test@w1s1max.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run, "predictions_test@w1s1max.csv")) as f:
        rows = list(csv.DictReader(f))
    head = build_head(load(os.path.join(run, "best.pt")))
    c = open_cache(cache)
    classes = [k for k in rows[0] if k not in ("video_id", "labels")]
    scores, targets = [], []
    for row in rows:
        entry = c.video(row["video_id"])
        positions = entry.policies["windows:4/4@fps:8"]
        assert positions == [0, 1, 2]  # 40 frames at 25 fps: 1.56 s = 13 frames of the 8 fps pool, windows at 0, 4, 8
        x = torch.from_numpy(entry.tokens[positions, 0].astype(np.float32))[:, None]  # (windows, 1 clip, N, C)
        with torch.no_grad():
            probs = torch.sigmoid(head(x)).numpy()  # (windows, classes)
        np.testing.assert_allclose([float(row[k]) for k in classes], probs.max(axis=0), rtol=1e-4, atol=1e-6)
        scores.append(probs.max(axis=0))
        targets.append([k in row["labels"].split(";") for k in classes])
    mAP = average_precision_score(np.array(targets), np.array(scores), average="macro")  # every video labelled
    assert abs(metrics["test/mAP@w1s1max"] - mAP) < 1e-6
    assert metrics["test/mAP@w1s1max"] > 0.5  # chance is 0.5 (two of four labels); colours are easy


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--frames", "clips:3"], ["--frames", "fps:8,windows:4/2", "--dtype", "int8"]])
def test_estimate_matches_what_extract_writes(charades, tmp_path, extra):
    est = json.loads(cli("estimate", charades, *TV, *extra, "--json").output)
    out = str(tmp_path / "c.zarr")
    cli("extract", charades, "--out", out, *TV, *extra, "-q")
    cache = open_cache(out)
    assert est["videos"] == 16 and est["frames"] == sum(len(r["frame_indices"]) for r in cache.records().values())
    assert est["files"] == sum(len(f) for _, _, f in os.walk(out))
    assert abs(est["bytes"] / cache.size_on_disk() - 1) <= 1e-4, (est["bytes"], cache.size_on_disk())
    assert "model time is not measured for video encoders" in " ".join(est["notes"]) and est["unit"] == "clip"
    text = cli("estimate", charades, *TV, *extra).output
    assert f"16 videos, {est['frames']} cached clips" in text and "of arrays per clip" in text


@pytest.mark.slow
def test_info_verify_and_int8(charades, windows_cache, tmp_path):
    text = cli("cache", "info", windows_cache).output
    assert "tv:r3d_18" in text and "clips of 4 frames at 8 fps" in text and "1 pooled + 1x2x2 (T'xH'xW') tokens" in text
    assert "windows:4/4@fps:8" in text and "48 clips" in text
    facts = json.loads(cli("cache", "info", windows_cache, "--json").output)
    assert facts["tokens"]["unit"] == "clip" and facts["storage"]["tokens_dims"][0] == "clip"
    assert facts["preprocess"]["resize_size"] == [40, 53] and facts["preprocess"]["antialias"] is False
    assert "verify ok: 16 videos done" in cli("cache", "verify", windows_cache).output
    q = str(tmp_path / "q.zarr")
    cli("extract", charades, "--out", q, *TV, "--frames", "fps:8,windows:4/4", "--dtype", "int8", "-q")
    a, b = open_cache(windows_cache), open_cache(q)
    assert "verify ok" in cli("cache", "verify", q).output
    for vid in ("v00", "v07"):
        x, y = a.video(vid).tokens.astype(np.float64), b.video(vid).tokens.astype(np.float64)
        cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))
        assert cos.min() > 0.999 and b.video(vid).record["clips"] == a.video(vid).record["clips"]


@pytest.mark.slow
def test_shards_and_resume(charades, windows_cache, tmp_path):
    out = str(tmp_path / "s.zarr")
    cli("extract", charades, "--out", out, *TV, "--frames", "fps:8,windows:4/4", "--init-only")
    for shard, workers in (("0/2", "0"), ("1/2", "1")):  # the second decodes in a worker process
        cli("extract", charades, "--out", out, *TV, "--frames", "fps:8,windows:4/4", "--shard", shard, "-q",
            "--decode-workers", workers)
    again = cli("extract", charades, "--out", out, *TV, "--frames", "fps:8,windows:4/4", "-q").output
    assert "extracted 0 videos, 0 failed, 16 already cached" in again
    one, two = open_cache(windows_cache), open_cache(out)
    assert sorted(two.video_ids()) == sorted(one.video_ids()) and len(two.segments()) == 2  # one per shard; the resumed run wrote nothing
    for vid in one.video_ids():
        np.testing.assert_allclose(two.video(vid).tokens.astype(np.float32), one.video(vid).tokens.astype(np.float32),
                                   rtol=2e-3, atol=1e-4)
        assert two.video(vid).record["clips"] == one.video(vid).record["clips"]
    other = cli("extract", charades, "--out", out, *TV, "--frames", "clips:2", "-q", code=2).output
    assert "made with different settings" in other and "frames.clip_policy" in other


@pytest.mark.parametrize("head, sets", [("pool", ["head.frame_feature=weighted"]), ("pool", ["head.frame_feature=cls"]),
                                        ("linear", []), ("attentive", []), ("transformer", []), ("lstm", []),
                                        ("tcn", [])])
def test_heads_train_on_clip_tokens(windows_cache, tmp_path, head, sets):
    args = [f"--set={s}" for s in ["task=multi", "epochs=1", *sets]]
    out = cli("train", windows_cache, "--head", head, "--view", "clips:3", "--out", tmp_path / "r", *args).output
    assert "test/mAP" in out
    with open(tmp_path / "r" / "metrics.json") as f:
        assert 0 <= json.load(f)["test/mAP"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--head", "r3d"], "head r3d: needs frame tokens"),
    (["--head", "stadapter_posthoc"], "head stadapter_posthoc: needs frame tokens"),
    (["--head", "pool", "--view", "uniform:4"], "the cache holds clips of a video encoder"),
    (["--head", "pool", "--set", "spatial=1"], "spatial: clip tokens are a flattened"),
    (["--head", "pool", "--view", "windows:4/4@fps:8"], "a dense pool has a different number"),
    (["--head", "pool", "--set", "augment=flip"], "augment=flip: flips and crops of a frame's patch grid"),
])
def test_frame_only_options_say_so_on_a_clip_cache(windows_cache, tmp_path, args, message):
    full = ["--view", "clips:2", *args] if "--view" not in args else args
    out = cli("train", windows_cache, *full, "--out", tmp_path / "r", "--set", "epochs=1", code=2).output
    assert message in out and len([ln for ln in out.splitlines() if ln.startswith("featcache: error")]) == 1, out


def test_clip_view_on_a_frame_cache_is_refused(tmp_path):
    from featcache.cache.facts import StoreAttrs
    from featcache.errors import FeatcacheError
    from featcache.spec.view import View

    attrs = {"frames": {"policies": ["uniform:8"]}, "tokens": {"num_prefix_tokens": 1, "grid": [4, 4], "dim": 8},
             "layers": [1]}
    with pytest.raises(FeatcacheError, match="clip views are for caches of video encoders"):
        View(frames="clips:2").check(StoreAttrs.from_json(attrs).shape)


def test_views_pick_cached_clips(windows_cache):
    from featcache.cache.dataset import frame_positions
    from featcache.spec.view import parse_policy
    from featcache.video.select import uniform_indices

    entry = open_cache(windows_cache).video("v03")
    cached = entry.policies["windows:4/4@fps:8"]
    for k in (1, 2, 3, 5):
        assert frame_positions(entry, parse_policy(f"clips:{k}")) == [cached[i] for i in uniform_indices(len(cached), k)]


def test_probe_and_windows_on_a_clips_cache(tmp_path):
    """A single-label set of moving squares as clips:3; probe (logreg) and eval --window over
    the 3 clips run from it."""
    rng = np.random.default_rng(5)
    rows = []
    for i in range(16):
        label = ("left", "right")[i % 2]
        write_video(str(tmp_path / f"m{i}.mp4"), motion_clip(label, rng, num_frames=30, size=(64, 48)))
        rows.append({"video_id": f"m{i}", "path": f"m{i}.mp4", "label": label,
                     "split": ("train", "train", "val", "test")[(i // 2) % 4]})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = str(tmp_path / "c.zarr")
    cli("extract", manifest, "--out", out, *TV, "--frames", "clips:3", "-q")
    probe = cli("probe", out, "--method", "logreg", "--view", "clips:3", "--feature", "cls", "--out", tmp_path / "p").output
    assert "test/top1" in probe
    cli("train", out, "--head", "pool", "--view", "clips:1", "--out", tmp_path / "r", "--set", "epochs=2")
    ev = cli("eval", tmp_path / "r", "--window", "1", "--stride", "1", "--aggregate", "mean").output
    assert "test/top1@w1s1mean" in ev


def test_published_clip_sweep_parses_and_runs_at_tiny_size(windows_cache, tmp_path):
    """pipelines/charades_video_transformers_clips.yaml: the Charades video transformers study's head, CLS vs all tokens, on a clip cache;
    run by `featcache ablate` (1 epoch, a small MLP) and each cell evaluated with windows."""
    from featcache.spec.sweep import load_sweep

    path = os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "charades_video_transformers_clips.yaml")
    s = load_sweep(path, cache="any")
    assert [c.config.head_options["frame_feature"] for c in s.cells] == ["cls", "weighted"]
    for cell in s.cells:
        c = cell.config
        assert (str(c.view.frames), c.lr, c.pos_weight, c.optimizer) == ("clips:1", 1e-5, 2.0, "adamw")
        o = c.head_options
        assert (o["mlp_layers"], o["mlp_hidden"], o["dropout"], o["frame_norm"]) == (2, 1024, 0.7, False)
    with open(path) as f:
        text = f.read()
    assert "29.38" in text and "24.57" in text and "What still differs" in text and "windows:16/2" in text
    out = tmp_path / "sweep"
    cli("ablate", path, "--cache", windows_cache, "--out", out, "--set", "epochs=1", "--set", "head.mlp_hidden=16", "-q")
    with open(out / "leaderboard.csv") as f:
        board = list(csv.DictReader(f))
    assert sorted(r["head.frame_feature"] for r in board) == ["cls", "weighted"]
    cells = sorted(os.listdir(out / "cells"))
    ev = cli("eval", out / "cells" / cells[0], "--window", "1", "--stride", "2", "--aggregate", "max").output
    assert "test/mAP@w1s2max" in ev
