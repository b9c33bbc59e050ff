"""Sharding, concurrent writers, Slurm through submitit's local executor, devices, status, export."""
import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import TINY_CLI, tiny_encoder_config
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cache.export import export_cache, import_hdf5
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.errors import FeatcacheError
from featcache.extract.pipeline import ExtractConfig, run_extract, shard_of
from featcache.launch.extract_array import parse_devices, run_on_devices, shard_configs
from featcache.spec.config import build_config
from featcache.train.fit import run_training

runner = CliRunner()
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "featcache")
FEATCACHE = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "featcache.cli"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("ds")), "appearance", per_class=6, num_frames=12)


def ids_of(manifest):
    import csv

    return [r["video_id"] for r in csv.DictReader(open(manifest))]


@pytest.mark.slow
def test_two_concurrent_shard_processes_share_one_store(dataset, tmp_path):
    out = str(tmp_path / "c.zarr")
    args = ["extract", dataset, "--out", out, "--frames", "uniform:4", *TINY_CLI, "-q", "--threads", "1"]
    procs = [subprocess.Popen([*FEATCACHE, *args, "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cache = open_cache(out)
    ids = cache.video_ids()
    assert sorted(ids) == sorted(ids_of(dataset)) and len(ids) == len(set(ids))
    assert cache.verify() == [] and cache.staged() == []
    done = [int(o[0].split("extracted ")[1].split()[0]) for o in outs]
    assert sum(done) == 24 and done == [sum(shard_of(v, 2) == i for v in ids) for i in range(2)]
    status = runner.invoke(app, ["cache", "status", out, "--shards", "2"])
    assert status.exit_code == 0 and "total: 24 done, 0 failed, 0 in progress, 0 pending" in status.output


@pytest.mark.slow
def test_slurm_array_through_submitit_local_executor(dataset, tmp_path):
    pytest.importorskip("submitit")
    out, logs = str(tmp_path / "c.zarr"), str(tmp_path / "logs")
    run_extract(ExtractConfig(manifest=dataset, out=out, frames="uniform:4", encoder=tiny_encoder_config(),
                              shard=(0, 3), dtype="float32"), show_progress=False)  # a store made with other settings
    r = runner.invoke(app, ["extract", dataset, "--out", out, "--frames", "uniform:4", *TINY_CLI, "--slurm", "--overwrite",
                            "--shards", "3", "--cluster", "local", "--gpus-per-task", "0", "--slurm-logs", logs, "--wait"])
    assert r.exit_code == 0, r.output
    assert r.output.count("shard ") == 3 and "submitted 3 task(s)" in r.output
    assert r.output.count("replaced the cache") == 1 and "Traceback" not in r.output
    assert sorted(open_cache(out).video_ids()) == sorted(ids_of(dataset))
    task_logs = [f for _, _, files in os.walk(logs) for f in files if f.endswith("_log.out")]
    assert len(task_logs) == 3
    # a requeued task (same shard) resumes: nothing left to do
    from featcache.launch.extract_array import ShardTask

    again = ShardTask()(ExtractConfig(manifest=dataset, out=out, frames="uniform:4", encoder=tiny_encoder_config(),
                                      shard=(1, 3)))
    assert again["done"] == 0 and again["skipped"] > 0
    r = runner.invoke(app, ["extract", dataset, "--out", out, "--slurm", "--shard", "0/2"])
    assert r.exit_code == 2 and "give --shards N, not --shard" in r.stderr


@pytest.mark.slow
def test_devices_fall_back_to_cpu_and_split_work(dataset, tmp_path):
    import torch

    assert parse_devices("all") == ([f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"])
    with pytest.raises(FeatcacheError, match="--devices"):
        parse_devices("tpu:0")
    out = str(tmp_path / "c.zarr")
    cfg = ExtractConfig(manifest=dataset, out=out, frames="uniform:2", encoder=tiny_encoder_config())
    summaries, replaced = run_on_devices(cfg, ["cpu", "cpu"])  # two worker processes, one shard each
    assert [s.done for s in summaries] == [sum(shard_of(v, 2) == i for v in ids_of(dataset)) for i in range(2)]
    assert len(open_cache(out).video_ids()) == 24 and replaced == []


@pytest.mark.slow
def test_overwrite_with_two_workers_never_loses_a_finished_video(dataset, tmp_path):
    out = tmp_path / "c.zarr"
    cfg = ExtractConfig(manifest=dataset, out=str(out), frames="uniform:2", encoder=tiny_encoder_config())
    first = run_extract(dataclasses.replace(cfg, shard=(0, 2)), show_progress=False)  # half the store done
    finished = {os.path.join(r, f): open(os.path.join(r, f), "rb").read() for r, _, fs in os.walk(out) for f in fs}
    # same settings: nothing is replaced, both workers resume around the finished videos
    summaries, replaced = run_on_devices(dataclasses.replace(cfg, overwrite=True), ["cpu", "cpu"])
    assert replaced == [] and first.done > 0
    assert all(open(p, "rb").read() == data for p, data in finished.items())  # every byte of them kept
    assert sum(s.skipped for s in summaries) == first.done and sum(s.done for s in summaries) == 24 - first.done
    cache = open_cache(str(out))
    assert sorted(cache.video_ids()) == sorted(ids_of(dataset)) and cache.verify() == []
    # other settings: the launcher replaces the store once, before the workers start
    other = dataclasses.replace(cfg, dtype="float32", overwrite=True)
    summaries, replaced = run_on_devices(other, ["cpu", "cpu"])
    assert replaced == ["storage.dtype"] and all(s.replaced == [] for s in summaries)
    assert sum(s.done for s in summaries) == 24 and not any(s.failed for s in summaries)
    cache = open_cache(str(out))
    assert len(cache.video_ids()) == 24 and cache.attrs["storage"]["dtype"] == "float32"
    assert not any(c.overwrite for c in shard_configs(other, 4))  # workers (and requeued tasks) never replace


def test_shard_with_overwrite_is_refused_and_init_only_prepares_the_store(dataset, tmp_path):
    out = str(tmp_path / "c.zarr")
    common = ["extract", dataset, "--out", out, "--frames", "uniform:2", *TINY_CLI, "-q"]
    run_extract(ExtractConfig(manifest=dataset, out=out, frames="uniform:2", encoder=tiny_encoder_config(),
                              shard=(0, 4), dtype="float32"), show_progress=False)
    r = runner.invoke(app, [*common, "--shard", "0/2", "--overwrite"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--overwrite --init-only" in r.stderr
    assert len(open_cache(out).video_ids()) > 0  # nothing was deleted
    r = runner.invoke(app, [*common, "--overwrite", "--init-only"])
    assert r.exit_code == 0 and "replaced the cache" in r.output and "storage.dtype" in r.output
    assert open_cache(out).video_ids() == [] and open_cache(out).attrs["storage"]["dtype"] == "float16"
    for i in range(2):
        assert runner.invoke(app, [*common, "--shard", f"{i}/2"]).exit_code == 0
    assert len(open_cache(out).video_ids()) == 24


def test_hdf5_and_npy_export_and_import_round_trip(dataset, tmp_path):
    out = str(tmp_path / "c.zarr")
    run_extract(ExtractConfig(manifest=dataset, out=out, frames="uniform:4,keyframes:2", encoder=tiny_encoder_config()),
                show_progress=False)
    cache = open_cache(out)
    r = runner.invoke(app, ["cache", "export", out, str(tmp_path / "c.h5")])
    assert r.exit_code == 0 and "exported 24 videos" in r.output
    with h5py.File(tmp_path / "c.h5") as f:
        assert json.loads(f.attrs["provenance"])["fingerprint"] == cache.fingerprint
        assert f["videos/red_000/tokens"].shape == cache.video("red_000").tokens.shape
    r = runner.invoke(app, ["cache", "import", str(tmp_path / "c.h5"), "--out", str(tmp_path / "back.zarr")])
    assert r.exit_code == 0, r.output
    back = open_cache(str(tmp_path / "back.zarr"))
    assert back.fingerprint == cache.fingerprint and back.verify() == []
    for vid in cache.video_ids():
        a, b = cache.video(vid), back.video(vid)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.luv_scores, b.luv_scores)
        assert a.record == b.record
    assert export_cache(out, "npy", str(tmp_path / "npy")) == 24
    tokens = np.load(tmp_path / "npy" / "videos" / "red_000.npy")
    np.testing.assert_array_equal(tokens, cache.video("red_000").tokens)
    assert json.load(open(tmp_path / "npy" / "provenance.json"))["fingerprint"] == cache.fingerprint
    with pytest.raises(FeatcacheError, match="exists"):
        export_cache(out, "hdf5", str(tmp_path / "c.h5"))


@pytest.mark.slow
def test_foreign_feature_dump_can_be_trained_on(dataset, tmp_path):
    ids = ids_of(dataset)
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        for vid in ids:
            centre = {"red": 0, "green": 1, "blue": 2, "yellow": 3}[vid.split("_")[0]]
            f[vid] = rng.normal(size=(10, 32)).astype(np.float32) + 3 * np.eye(32)[centre]  # (T, C) per video
    out = str(tmp_path / "f.zarr")
    n = import_hdf5(str(tmp_path / "feats.h5"), out, manifest=dataset, model_name="i3d", frames="uniform:8")
    cache = open_cache(out)
    assert n == 24 and cache.verify() == [] and cache.attrs["model"]["name"] == "i3d"
    assert cache.video(ids[0]).tokens.shape == (8, 1, 1, 32)
    results = run_training(out, build_config({"head": "pool", "view": "uniform:8", "epochs": 15, "batch_size": 4}),
                           str(tmp_path / "run"), show_progress=False)
    assert results["test/top1"] >= 0.75
    with pytest.raises(FeatcacheError, match="not a featcache export: give --manifest"):
        import_hdf5(str(tmp_path / "feats.h5"), str(tmp_path / "g.zarr"))
    with pytest.raises(FeatcacheError, match="give --frames uniform:K"):
        with h5py.File(tmp_path / "ragged.h5", "w") as f:
            for i, vid in enumerate(ids):
                f[vid] = np.zeros((5 + i % 2, 8), np.float32)
        import_hdf5(str(tmp_path / "ragged.h5"), str(tmp_path / "r.zarr"), manifest=dataset)
