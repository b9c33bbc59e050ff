"""`featcache cache export --format actionformer|opentad`: the export read back the way each
loader reads it, its seconds-to-position maths re-typed here from the releases (not vendored):

- ActionFormer, happyharrycn/actionformer_release libs/datasets/thumos14.py: `_load_json_db` reads
  ``json_data['database']`` and the per-video ``fps`` when ``default_fps`` is None;
  `__getitem__` loads ``os.path.join(feat_folder, file_prefix + id + file_ext)`` with ``np.load``,
  transposes T x C -> C x T and maps ``(segments * fps - 0.5 * num_frames) / feat_stride``.
- OpenTAD, sming256/OpenTAD opentad/datasets/thumos.py: `get_gt` takes
  ``int(segment / duration * frame)``; `ThumosPaddingDataset.__getitem__` subtracts
  ``offset_frames`` and divides by ``snippet_stride = feature_stride * sample_stride``
  (opentad/datasets/base/padding_dataset.py); `LoadFeats` (transforms/loading.py) reads
  ``{data_path}/{prefix}{video_name}{suffix}.npy``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import cli, tiny_encoder_config

FPS = 25  # featcache.data.synthetic.write_video's rate
STRIDE = 4


@pytest.fixture(scope="module")
def stride_store(tmp_path_factory):
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    root = tmp_path_factory.mktemp("tal")
    manifest = make_dataset(str(root), "motion", per_class=1, num_frames=30)
    out = str(root / "c.zarr")
    s = run_extract(ExtractConfig(manifest=manifest, out=out, frames=f"uniform:4,stride:{STRIDE}",
                                  encoder=tiny_encoder_config()), show_progress=False)
    assert s.done and not s.failed
    return out


def _annotations(tmp_path, vid: str, frame: int) -> str:
    """A segment that starts on the source frame ``frame`` and lasts 8 frames."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"database": {
        vid: {"subset": "validation", "annotations": [{"segment": [frame / FPS, (frame + 8) / FPS],
                                                      "label": "push", "label_id": 0}]},
        "not_cached": {"subset": "validation", "annotations": []}}}))
    return str(path)


def _cached_cls(store: str, vid: str, frames: list[int]) -> np.ndarray:
    """The last layer's CLS token of the given source frames, straight from the store."""
    from featcache import open_cache

    entry = open_cache(store).video(vid)
    at = [list(entry.record["frame_indices"]).index(f) for f in frames]
    return entry.tokens[at, -1, 0].astype(np.float32)


def test_actionformer_export_reads_back_as_its_loader_reads_it(stride_store, tmp_path):
    from featcache import open_cache

    vid = open_cache(stride_store).video_ids()[0]
    out = tmp_path / "af"
    r = cli("cache", "export", stride_store, out, "--format", "actionformer", "--annotations",
            _annotations(tmp_path, vid, 8))
    assert "actionformer: stride 4, 1 frame(s) per feature, 1 action labels" in r.output
    assert "1 annotated videos are not in the store: not_cached" in r.output
    settings = json.loads((out / "featcache_export.json").read_text())
    cfg = settings["dataset"]
    assert (cfg["feat_stride"], cfg["num_frames"], cfg["default_fps"], cfg["file_ext"]) == (STRIDE, 1, None, ".npy")
    # the loader: database entry, fps from the entry (default_fps is None), features C x T
    db = json.loads((out / cfg["json_file"]).read_text())["database"]
    item = db[vid]
    assert item["subset"] == "validation" and item["fps"] == FPS and item["duration"] == pytest.approx(30 / FPS)
    feats = np.load(os.path.join(out, cfg["feat_folder"], cfg["file_prefix"] + vid + cfg["file_ext"]))
    feats = feats.astype(np.float32).transpose()
    assert feats.shape == (cfg["input_dim"], len(range(0, 30, STRIDE)))
    seg = (np.asarray(item["annotations"][0]["segment"]) * item["fps"] - 0.5 * cfg["num_frames"]) / cfg["feat_stride"]
    # frame 8 is feature 2; ActionFormer puts a one-frame feature at its frame's centre (half a frame later)
    assert seg[0] == pytest.approx(2 - 0.5 / STRIDE) and seg[1] == pytest.approx(4 - 0.5 / STRIDE)
    assert np.allclose(feats[:, 2], _cached_cls(stride_store, vid, [8])[0])
    assert np.allclose(feats.T, _cached_cls(stride_store, vid, list(range(0, 30, STRIDE))))
    assert settings["videos_without_annotations"] == sorted(set(db) - {vid})


def test_opentad_export_reads_back_as_its_loader_reads_it(stride_store, tmp_path):
    from featcache import open_cache

    vid = open_cache(stride_store).video_ids()[-1]
    out = tmp_path / "ot"
    cli("cache", "export", stride_store, out, "--format", "opentad", "--tokens", "mean", "--annotations",
        _annotations(tmp_path, vid, 12))
    settings = json.loads((out / "featcache_export.json").read_text())
    cfg, load = settings["dataset"], settings["load_feats"]
    info = json.loads((out / cfg["ann_file"]).read_text())["database"][vid]
    class_map = (out / cfg["class_map"]).read_text().splitlines()
    anno = info["annotations"][0]
    gt = np.array([int(anno["segment"][0] / info["duration"] * info["frame"]),
                   int(anno["segment"][1] / info["duration"] * info["frame"])], dtype=np.float32)
    snippet_stride = int(cfg["feature_stride"] * cfg["sample_stride"])
    grid = (gt - cfg["offset_frames"]) / snippet_stride
    assert grid.tolist() == [3.0, 5.0] and class_map.index(anno["label"]) == 0
    feats = np.load(os.path.join(out, cfg["data_path"], f"{load['prefix']}{vid}{load['suffix']}.{load['feat_format']}"))
    cache = open_cache(stride_store)
    entry, prefix = cache.video(vid), cache.attrs["tokens"]["num_prefix_tokens"]
    at = [list(entry.record["frame_indices"]).index(f) for f in range(0, 30, STRIDE)]
    want = entry.tokens[at, -1, prefix:].astype(np.float32).mean(axis=1)
    assert np.allclose(feats[3], want[3], atol=1e-6) and feats.shape == want.shape


def test_export_refuses_what_the_loaders_cannot_place(stride_store, tmp_path):
    r = cli("cache", "export", stride_store, tmp_path / "u", "--format", "actionformer", "--pool", "uniform:4", code=2)
    assert "uniform:4 is not evenly spaced in time" in r.output and "--frames stride:S" in r.output
    r = cli("cache", "export", stride_store, tmp_path / "h.h5", "--pool", "stride:4", code=2)
    assert "--pool: applies to --format actionformer or opentad, not hdf5" in r.output
    r = cli("cache", "export", stride_store, tmp_path / "l", "--format", "opentad", "--layer", "5", code=2)
    assert "--layer: 5 is not one of the store's" in r.output
    os.makedirs(tmp_path / "taken")
    r = cli("cache", "export", stride_store, tmp_path / "taken", "--format", "opentad", code=2)
    assert "exists" in r.output and not os.listdir(tmp_path / "taken")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".export-")]  # nothing left behind


def test_variable_frame_rate_is_refused_with_its_drift():
    from featcache.cache.export_tal import _check_spacing, _timeline
    from featcache.cache.facts import VideoRecord
    from featcache.errors import FeatcacheError
    from featcache.spec.policy import parse_policy

    times = np.arange(5) * 4 / 25.0
    _check_spacing("v", times, 25.0, 4, 25.0)  # constant rate: fine
    times[3] += 0.05  # more than half a frame (0.02 s) late
    with pytest.raises(FeatcacheError, match=r"v: feature 3 starts at 0.530 s, not 0.480 s"):
        _check_spacing("v", times, 25.0, 4, 25.0)
    source = VideoRecord.from_json({"source": {"fps": 30.0}})
    assert _timeline(parse_policy("windows:16/4@fps:8"), source) == (8.0, 4, 16)
    assert _timeline(parse_policy("stride:4"), source) == (30.0, 4, 1)
    assert _timeline(parse_policy("fps:2"), source) == (2.0, 1, 1)
    assert parse_policy("uniform:8").clock(30.0) is None and parse_policy("clips:2").clock(30.0) is None
