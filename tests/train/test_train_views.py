"""train --set train_views=random|all and dataset(train_views=...): cached training views."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from conftest import cli, tiny_encoder_config

from featcache.cache.store import open_cache
from featcache.cache.stream import epoch_order
from featcache.cache.train_views import materialise_views, view_choices
from featcache.spec.config import BatchConfig, TrainConfig
from featcache.spec.view import View

K = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("tv")
    manifest = make_dataset(str(root), "motion", per_class=3, num_frames=12)
    s = run_extract(ExtractConfig(manifest=manifest, out=str(root / "c.zarr"), frames="uniform:4",
                                  encoder=tiny_encoder_config(), batch_size=16, train_views=K), show_progress=False)
    assert s.done == 12 and not s.failed
    return str(root / "c.zarr")


def test_random_views_differ_by_epoch_and_repeat_by_seed(store):
    cache = open_cache(store)
    data = materialise_views(cache, View("uniform:4"), "train", "random", seed=1)
    x = data.x
    assert x.shape[0] == 8 and x.shape[1] == 4  # 2 train videos per class (60%), 4 frames
    drawn = {}
    for epoch in range(4):
        x.set_epoch(epoch, 1)
        drawn[epoch] = x.choice.clone()
        assert torch.equal(x.choice, view_choices(8, K, 1, epoch))
        for i, vid in enumerate(data.video_ids):  # each item is that video's drawn cached view
            entry = cache.video(vid)
            want = entry.views[int(x.choice[i]), entry.policies["uniform:4"], -1]  # (T, N, C)
            assert torch.equal(x[i], torch.from_numpy(want))
        assert torch.equal(x[2:5], torch.stack([x[2], x[3], x[4]]))
    assert not all(torch.equal(drawn[0], drawn[e]) for e in (1, 2, 3))  # a different view per epoch
    x.set_epoch(2, 1)
    assert torch.equal(x.choice, drawn[2])  # deterministic per seed and epoch
    x.set_epoch(2, 2)
    assert not torch.equal(x.choice, drawn[2])


def test_all_views_are_k_times_the_data(store):
    cache = open_cache(store)
    data = materialise_views(cache, View("uniform:4"), "train", "all")
    assert len(data.x) == 8 * K and data.video_ids[:K] == [data.video_ids[0]] * K
    entry = cache.video(data.video_ids[0])
    for j in range(K):
        np.testing.assert_array_equal(data.x[j].numpy(), entry.views[j, entry.policies["uniform:4"], -1])


def test_train_views_is_a_fusion_key_and_a_checked_choice():
    from featcache.spec.config import build_config

    assert "train_views" in {f.name for f in dataclasses.fields(BatchConfig)}
    assert TrainConfig(train_views="random").batch != TrainConfig().batch
    assert build_config({"train_views": "all"}).train_views == "all"
    with pytest.raises(ValueError, match="train_views"):
        build_config({"train_views": "sometimes"})


def test_dataset_api_set_epoch(store):
    cache = open_cache(store)
    ds = cache.dataset(view="uniform:4", split="train", train_views="random", seed=0)
    ds.set_epoch(0)
    a = torch.stack([ds[i][0] for i in range(len(ds))])
    ds.set_epoch(1)
    b = torch.stack([ds[i][0] for i in range(len(ds))])
    assert len(ds) == 8 and not torch.equal(a, b)
    assert len(cache.dataset(view="uniform:4", split="train", train_views="all")) == 8 * K
    centre = cache.dataset(view="uniform:4", split="train")
    assert not hasattr(centre.data.x, "set_epoch")


@pytest.mark.slow
def test_train_cli_random_views_and_errors(store, tmp_path):
    out = tmp_path / "run"
    cli("train", store, "--head", "pool", "--view", "uniform:4", "--set", "train_views=random", "--set", "epochs=3",
        "--out", out, "-q")
    from featcache.train.rundir import read_config

    assert read_config(str(out))["config"]["train_views"] == "random"
    assert os.path.exists(out / "metrics.json")
    r = cli("train", store, "--head", "pool", "--set", "train_views=sometimes", "--out", tmp_path / "x", code=2)
    assert "train_views" in r.output and "random" in r.output


def test_the_training_source_draws_per_epoch_and_evaluates_on_the_centre(store):
    """fit.ViewBatches (what a fused group shares): epoch e's batches hold the views of
    view_choices(seed, e); val keeps the centre crop."""
    from featcache.cache.dataset import Task
    from featcache.cache.train_views import with_train_views
    from featcache.train.evaluate import read_splits
    from featcache.train.fit import ViewBatches

    cache, view = open_cache(store), View("uniform:4")
    centre = read_splits(cache, view)
    data = with_train_views(cache, view, centre, "random", seed=4)
    assert data["val"] is centre["val"] and data["train"] is not centre["train"]
    cfg = TrainConfig(view=view, train_views="random", seed=4, batch_size=64)
    src = ViewBatches(cfg, data, Task(sorted({ls[0] for ls in data["train"].labels}), False))
    views = data["train"].x.views  # (V, K, T, N, C)
    for epoch in (0, 1):
        (x, _), = list(src.epoch(epoch))
        order = epoch_order(len(views), 4, epoch)
        choice = view_choices(len(views), K, 4, epoch)
        assert torch.equal(x, views[order, choice[order]])


# ------------------------------------------------------------------ temporal jitter
@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("jit")
    manifest = make_dataset(str(root), "motion", per_class=3, num_frames=14)
    s = run_extract(ExtractConfig(manifest=manifest, out=str(root / "c.zarr"), frames="uniform:4,stride:2",
                                  encoder=tiny_encoder_config(), batch_size=16), show_progress=False)
    assert s.done == 12 and not s.failed
    return str(root / "c.zarr")


def test_jitter_starts_cover_every_fitting_start():
    from featcache.cache.train_views import jitter_starts

    sizes = np.array([7, 12, 3, 40])
    seen = [set() for _ in sizes]
    for epoch in range(300):
        starts, steps = jitter_starts(sizes, 4, 0, epoch)
        assert steps.tolist() == [1, 3, 1, 10]
        room = np.maximum(0, sizes - 3 * steps - 1)  # the clip's last frame stays in the pool
        assert np.all((starts >= 0) & (starts <= room))
        for s, st in zip(seen, starts.tolist()):
            s.add(st)
    assert [len(s) for s in seen] == [4, 3, 1, 10]  # every start that fits, drawn
    a = jitter_starts(sizes, 4, 5, 2)[0]
    assert np.array_equal(a, jitter_starts(sizes, 4, 5, 2)[0])


def test_jittered_clips_are_pool_frames_drawn_per_epoch(pooled):
    from featcache.cache.train_views import materialise_jittered

    cache = open_cache(pooled)
    data = materialise_jittered(cache, View("uniform:4"), "train", "stride:2", seed=3)
    x = data.x
    assert x.shape[1] == 4 and len(x) == 8
    got = {}
    for epoch in range(3):
        x.set_epoch(epoch, 3)
        got[epoch] = x.starts.copy()
        for i, vid in enumerate(data.video_ids):
            entry = cache.video(vid)
            pool = np.asarray(entry.policies["stride:2"])  # the positions of the 7 pool frames
            want = entry.tokens[pool[x.starts[i] + x.steps[i] * np.arange(4)], -1]
            assert torch.equal(x[i], torch.from_numpy(want))
    assert not all(np.array_equal(got[0], got[e]) for e in (1, 2))
    from featcache.errors import FeatcacheError

    with pytest.raises(FeatcacheError, match="dense pool"):
        materialise_jittered(cache, View("uniform:4"), "train", "stride:3")


@pytest.mark.slow
def test_train_cli_temporal_jitter(pooled, tmp_path):
    from featcache.train.rundir import read_config

    out = tmp_path / "run"
    cli("train", pooled, "--head", "pool", "--view", "uniform:4", "--set", "temporal_jitter=stride:2",
        "--set", "epochs=2", "--out", out, "-q")
    assert read_config(str(out))["config"]["temporal_jitter"] == "stride:2"
    r = cli("train", pooled, "--head", "pool", "--view", "uniform:4", "--set", "temporal_jitter=stride:5",
            "--out", tmp_path / "x", code=2)
    assert "temporal_jitter=stride:5" in r.output


@pytest.mark.slow
def test_a_fused_group_shares_the_view_draws(store, tmp_path):
    """Two heads fused on train_views=random read the same draws: each head's result equals its
    run alone (the loop's fusion guarantee, now with per-epoch view draws in the batches)."""
    from featcache.spec.config import build_config
    from featcache.train.fit import run_training, train_group

    cfgs = [build_config({"head": h, "view": "uniform:4", "epochs": 3, "batch_size": 4, "train_views": "random",
                          "seed": 1}) for h in ("pool", "linear")]
    fused = train_group(store, cfgs[0].batch, [c.head_config for c in cfgs], [str(tmp_path / "f0"), str(tmp_path / "f1")],
                        show_progress=False)
    for i, cfg in enumerate(cfgs):
        alone = run_training(store, cfg, str(tmp_path / f"a{i}"), show_progress=False)
        val = {k: v for k, v in fused[i].items() if k.startswith("val/")}
        assert val and val == pytest.approx({k: alone[k] for k in val}, abs=1e-6)  # (this store has no test split)
