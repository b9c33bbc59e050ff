"""Run metadata, checkpoints and metrics as frozen types (featcache/train/meta.py): parsed once,
written back exactly (unknown keys and key order kept), built in one place for train, pretrain
and probe, and byte for byte what the hand-built dicts wrote."""
import os
import shutil
from dataclasses import FrozenInstanceError, asdict

import pytest
import torch
import yaml

from featcache.cache.store import open_cache
from featcache.data.annotations import annotate
from featcache.errors import FeatcacheError
from featcache.heads.registry import head_source
from featcache.spec.config import build_config, to_dict
from featcache.train import checkpoint, rundir
from featcache.train.fit import run_training
from featcache.train.meta import Checkpoint, HeadSource, Metrics, Pretext, ProbeChoice, RunMeta, run_meta
from featcache.train.pretrain import PRP

ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets")


def same(a: dict, b: dict) -> bool:
    """Equal, and in the same key order at every level (what YAML and pickle bytes depend on)."""
    if list(a) != list(b):
        return False
    return all(same(a[k], b[k]) if isinstance(a[k], dict) and isinstance(b[k], dict) else
               (a[k] is b[k] or _eq(a[k], b[k])) for k in a)


def _eq(x, y) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
    return type(x) is type(y) and x == y


# ------------------------------------------------------------------ files of the current code
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run of the pool head on the stored round-2 store, last.pt kept."""
    tmp = tmp_path_factory.mktemp("meta")
    cache = str(tmp / "round2_fp16.zarr")
    shutil.copytree(os.path.join(ASSETS, "round2_fp16.zarr"), cache)
    cfg = build_config({"head": "pool", "view": "uniform:4", "epochs": 2, "keep_last": True})
    run_training(cache, cfg, str(tmp / "run"), show_progress=False)
    return cache, cfg, str(tmp / "run")


def test_a_new_run_directory_round_trips_and_matches_the_hand_built_dict(run):
    cache_path, cfg, out = run
    stored = rundir.read_config(out)
    meta = rundir.read_meta(out)
    assert same(meta.to_json(), stored)
    # what fit.py built by hand before (fit.py:84-90 of commit 17f47fd), re-typed here
    cache = annotate(open_cache(cache_path), cfg.manifest, cfg.val_fraction)
    old = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": ["down", "left", "right", "up"],
           "multi_label": False, "config": to_dict(cfg), "head_source": head_source(cfg.head),
           "manifest": cache.annotations.meta(), "streamed": []}
    assert same(stored, old)
    with open(os.path.join(out, "config.yaml")) as f:
        assert f.read() == yaml.safe_dump(old, sort_keys=False)
    assert meta.cache.fingerprint == cache.fingerprint == meta.fingerprint
    assert meta.classes == ("down", "left", "right", "up") and meta.multi_label is False and meta.streamed == ()
    assert meta.source().builtin and meta.manifest.path is None and meta.manifest.videos == stored["manifest"]["videos"]
    with pytest.raises(FrozenInstanceError):
        meta.classes = ("x",)


@pytest.mark.parametrize("which", ["best", "last"])
def test_new_checkpoints_round_trip(run, which):
    _, _, out = run
    stored = checkpoint.load(rundir.checkpoint_path(out, which))
    ckpt = checkpoint.read(rundir.checkpoint_path(out, which))
    assert same(ckpt.to_json(), stored)
    assert ckpt.head == "pool" and ckpt.meta == rundir.read_meta(out)
    assert (ckpt.resume is not None) == (which == "last")
    if which == "last":
        assert set(ckpt.resume) == {"optimizer", "scheduler", "best", "best_epoch", "stale", "rng", "cuda_rng",
                                    "active", "batches"}
    head = checkpoint.build_head(ckpt)  # the typed and the stored form build the same head
    again = checkpoint.build_head(stored)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))


def test_metrics_round_trip(run):
    _, _, out = run
    stored = rundir.read_metrics(out)
    metrics = rundir.read_results(out)
    assert metrics.to_json() == stored and metrics.best_epoch == stored["best_epoch"]
    assert metrics.params == stored["params"] and metrics.get("test/top1") == stored["test/top1"]
    assert "best_epoch" not in metrics.scores and metrics.scores["val/top1"] == stored["val/top1"]
    os.makedirs(out + "_copy")
    rundir.write_metrics(out + "_copy", metrics)
    assert open(os.path.join(out + "_copy", "metrics.json")).read() == open(os.path.join(out, "metrics.json")).read()


# ------------------------------------------------------------------ files written the older way
OLD_CONFIG = """\
cache:
  path: /data/c.zarr
  fingerprint: 9f2c
classes:
- down
- up
config:
  head: r3d
  epochs: 10
  layers: -1
task: single
"""  # before head provenance, manifests and multi_label were recorded; "task" a key no longer written


def test_an_old_config_yaml_round_trips_byte_for_byte(tmp_path):
    (tmp_path / "config.yaml").write_text(OLD_CONFIG)
    meta = rundir.read_meta(str(tmp_path))
    assert meta.extra == {"task": "single"} and meta.head_source is None and meta.manifest is None
    assert meta.source() == HeadSource.BUILTIN and meta.multi_label is None
    assert yaml.safe_dump(meta.to_json(), sort_keys=False) == OLD_CONFIG
    rundir.write_config(str(tmp_path), meta)
    assert (tmp_path / "config.yaml").read_text() == OLD_CONFIG


def test_an_old_checkpoint_and_unknown_keys_round_trip():
    """A checkpoint without head provenance or manifest, with a key from a newer featcache, and a
    file head's provenance with a field this version does not know."""
    old = {"head": "linear", "head_args": {"in_dim": 8, "num_classes": 2, "num_frames": 4, "grid": (2, 2),
                                           "num_prefix_tokens": 1},
           "state_dict": {"fc.weight": torch.ones(2, 8)}, "epoch": 3,
           "cache": {"path": "c.zarr", "fingerprint": "ab", "schema": 2}, "classes": ["a", "b"],
           "multi_label": False, "config": {"head": "linear"}, "future": {"x": 1}}
    ckpt = Checkpoint.from_json(old)
    assert same(ckpt.to_json(), old) and ckpt.meta.extra == {"future": {"x": 1}}
    assert ckpt.meta.cache.extra == {"schema": 2} and ckpt.resume is None and not ckpt.is_pretraining
    assert ckpt.head_args["grid"] == (2, 2)  # tuples inside stay tuples (pickled as they were)
    source = {"kind": "file", "path": "/h/my.py", "class": "Head", "sha256": "00", "signed": "yes"}
    parsed = HeadSource.from_json(source)
    assert parsed.cls == "Head" and parsed.where == "/h/my.py" and not parsed.builtin
    assert same(parsed.to_json(), source)


def test_records_refuse_what_is_not_a_mapping():
    with pytest.raises(FeatcacheError, match="RunMeta: expected a mapping, got list"):
        RunMeta.from_json(["a"])


# ------------------------------------------------------------------ one builder for train, pretrain, probe
class _Annotations:
    def meta(self):
        return {"path": None, "sha256": "e3", "videos": {"train": 3}, "missing": 0, "unlisted": 0, "failed": 1}


class _Cache:
    path, fingerprint, annotations = "/c.zarr", "f00d", _Annotations()


@pytest.mark.parametrize("kind", ["pretrain", "probe", "file head"])
def test_run_meta_writes_what_pretrain_and_probe_built_by_hand(kind, tmp_path):
    cache = _Cache()
    cfg = build_config({"head": "r3d", "view": "stride:1"})
    if kind == "pretrain":  # pretrain.py:200-203 of commit 17f47fd, re-typed
        task = PRP()
        old = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": task.classes,
               "multi_label": False, "config": to_dict(cfg), "head_source": head_source(cfg.head),
               "manifest": cache.annotations.meta(), "pretext": {"task": "prp", **asdict(task)}}
        new = run_meta(cache, task.classes, False, cfg, pretext=Pretext(name="prp", extra=asdict(task)))
        assert new.pretext.name == "prp"
    elif kind == "probe":  # probe.py:94-96 of commit 17f47fd, re-typed
        choice = {"knn/k": 10, "knn/T": 0.07}
        old = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": ["a", "b"],
               "multi_label": False, "probe": {"method": "knn", "feature": "cls", **choice},
               "config": to_dict(cfg), "manifest": cache.annotations.meta()}
        new = run_meta(cache, ["a", "b"], False, cfg, head=False,
                       probe=ProbeChoice(method="knn", feature="cls", extra=choice))
        assert new.probe.choice == choice
    else:
        head = tmp_path / "my_heads.py"
        head.write_text("import torch\nclass Head(torch.nn.Module):\n"
                        "    def __init__(self, in_dim, num_classes, num_frames, grid, num_prefix_tokens):\n"
                        "        super().__init__()\n        self.fc = torch.nn.Linear(in_dim, num_classes)\n")
        cfg = build_config({"head": f"{head}:Head"})
        old = {"cache": {"path": cache.path, "fingerprint": cache.fingerprint}, "classes": ["a", "b"],
               "multi_label": True, "config": to_dict(cfg), "head_source": head_source(cfg.head),
               "manifest": cache.annotations.meta(), "streamed": ["train"]}
        new = run_meta(cache, ["a", "b"], True, cfg, streamed=("train",))
        assert new.head_source.kind == "file" and new.head_source.cls == "Head" and len(new.head_source.sha256) == 64
    assert same(new.to_json(), old)
    rundir.write_config(str(tmp_path), new)
    assert (tmp_path / "config.yaml").read_text() == yaml.safe_dump(old, sort_keys=False)
    assert same(RunMeta.from_json(new.to_json()).to_json(), old)


def test_metrics_of_a_probe_keep_their_hyper_parameters():
    stored = {"knn/T": 0.07, "knn/k": 10, "val/top1": 0.5}
    metrics = Metrics.from_json(stored)
    assert metrics.best_epoch is None and metrics.to_json() == stored and metrics.get("knn/k") == 10
    assert metrics.get("best_epoch", -1) == -1


def test_a_probe_run_and_its_log_round_trip(run, tmp_path):
    from featcache.train.probe import run_probe

    cache_path, cfg, out = run
    results = run_probe(cache_path, build_config({"view": "uniform:4"}), str(tmp_path / "knn"), "knn", "mean")
    meta = rundir.read_meta(str(tmp_path / "knn"))
    assert same(meta.to_json(), rundir.read_config(str(tmp_path / "knn")))
    assert meta.probe.method == "knn" and meta.probe.feature == "mean" and meta.head_source is None
    assert meta.probe.choice == {"knn/k": results["knn/k"], "knn/T": 0.07}
    assert list(rundir.read_config(str(tmp_path / "knn"))) == ["cache", "classes", "multi_label", "probe", "config",
                                                               "manifest"]
    epochs = rundir.read_epochs(out)  # the training run's log.jsonl
    assert [e.epoch for e in epochs] == [0, 1] and all(e.seconds > 0 and "train/loss" in e.values for e in epochs)
    assert [e.to_json() for e in epochs] == rundir.read_log(out)
    assert "epoch" not in epochs[0].numbers() and "lr" in epochs[0].numbers()
