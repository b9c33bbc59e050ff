"""The store's facts as types (featcache/cache/facts.py): every stored document round-trips exactly,
key order included; unknown keys are kept; readers take the types."""
import glob
import json
import os

import pytest
from conftest import extract_motion

from featcache.cache.facts import AttrsDict, StoreAttrs, VideoRecord
from featcache.cache.store import open_cache
from featcache.spec.view import CacheShape, View

ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets")
FIXTURES = sorted(glob.glob(os.path.join(ASSETS, "round2_*.zarr")))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _round_trips(cls, doc):
    back = cls.from_json(doc).to_json()
    assert back == doc
    assert json.dumps(back) == json.dumps(doc)  # the same key order, at every depth


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A store written by today's writer (two policies, key frames, a failure-free run)."""
    return extract_motion(tmp_path_factory, per_class=1, frames="uniform:4,keyframes:2")


@pytest.mark.parametrize("store", FIXTURES, ids=os.path.basename)
def test_round2_fixtures_round_trip_exactly(store):
    _round_trips(StoreAttrs, _read(os.path.join(store, "zarr.json"))["attributes"])
    records = [_read(p)["attributes"] for p in sorted(glob.glob(os.path.join(store, "videos", "*", "zarr.json")))]
    assert records
    for record in records:
        _round_trips(VideoRecord, record)


def test_fresh_store_round_trips_exactly(fresh):
    _round_trips(StoreAttrs, _read(os.path.join(fresh, "zarr.json"))["attributes"])
    lines = [json.loads(line) for path in glob.glob(os.path.join(fresh, "segments", "*", "index", "0"))
             for line in open(path, encoding="utf-8") if line.strip()]
    assert lines
    for line in lines:
        _round_trips(VideoRecord, line["record"])


def test_unknown_keys_are_kept_in_place():
    doc = {"zz_new": {"b": [1, {"c": 2}], "a": None}, "schema_version": 9, "frames": {"policies": ["uniform:2"],
           "later": [3]}, "model": {"name": "m", "future": True}, "tokens": None}
    facts = StoreAttrs.from_json(doc)
    assert facts.unknown["zz_new"]["b"][1]["c"] == 2 and facts.frames.unknown["later"] == (3,)
    assert facts.model.unknown == {"future": True} and facts.tokens is None
    assert list(facts.to_json()) == ["zz_new", "schema_version", "frames", "model", "tokens"]
    _round_trips(StoreAttrs, doc)
    record = {"video_id": "v", "status": "failed", "reason": "no stream", "new_field": [1.5]}
    typed = VideoRecord.from_json(record)
    assert typed.failed and not typed.done and typed.unknown == {"new_field": (1.5,)}
    _round_trips(VideoRecord, record)


def test_facts_are_frozen():
    facts = StoreAttrs.from_json({"layers": [1, 2], "frames": {"policies": ["uniform:4"]}})
    with pytest.raises(AttributeError):
        facts.layers = (3,)
    with pytest.raises(TypeError):
        facts.frames.unknown["x"] = 1
    assert facts.layers == (1, 2) and facts.policies == ("uniform:4",)


def test_types_built_in_code_write_every_field_in_declared_order():
    doc = VideoRecord(video_id="a", labels=["x"], status="done").to_json()
    assert list(doc)[:4] == ["video_id", "path", "split", "labels"] and doc["labels"] == ["x"]
    assert doc["status"] == "done" and doc["reason"] is None


def test_cache_reads_its_facts_once_typed(fresh):
    cache = open_cache(fresh)
    assert isinstance(cache.attrs, AttrsDict) and cache.facts is cache.facts
    assert cache.facts.to_json() == _read(os.path.join(fresh, "zarr.json"))["attributes"] == dict(cache.attrs)
    # independent of the type: the values as the JSON holds them
    raw = _read(os.path.join(fresh, "zarr.json"))["attributes"]
    assert cache.facts.policies == tuple(raw["frames"]["policies"]) == ("uniform:4", "keyframes:2")
    assert cache.facts.shape == CacheShape(policies=("uniform:4", "keyframes:2"), layers=tuple(raw["layers"]),
                                           grid=tuple(raw["tokens"]["grid"]), num_prefix_tokens=1,
                                           dim=raw["tokens"]["dim"])
    records = cache.video_records()
    assert sorted(records) == sorted(cache.records()) and all(isinstance(r, VideoRecord) for r in records.values())
    vid = cache.video_ids()[0]
    typed = cache.video_record(vid)
    assert typed is cache.video_record(vid) and typed.done and typed.to_json() == cache.record(vid)
    assert list(typed.frame_indices) == cache.video(vid).frame_indices.tolist()
    assert cache.video_record("no such video") is None


def test_a_view_checked_against_the_attrs_dict_reads_the_shape(fresh):
    cache = open_cache(fresh)
    view = View("keyframes:2")
    view.check(cache.attrs)  # the compatibility dict answers CacheShape's attributes
    assert view.layout(cache.attrs) == view.layout(cache.facts.shape)
    assert cache.attrs.policies == ("uniform:4", "keyframes:2")
    with pytest.raises(AttributeError):
        assert cache.attrs.nothing is None  # never reached: AttributeError


def test_facts_and_the_attrs_dict_pickle(fresh):
    import pickle

    cache = open_cache(fresh)
    cache.facts.shape  # noqa: B018 -- cached on the instance
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.facts == cache.facts and copy.attrs == cache.attrs and isinstance(copy.attrs, AttrsDict)
    record = cache.video_record(cache.video_ids()[0])
    assert pickle.loads(pickle.dumps(record)).to_json() == record.to_json()


def test_rewritten_roots_round_trip_exactly(fresh, tmp_path):
    """The root attributes are rewritten when policies are added (writer._add_policies) and when
    a store is packed (a ``packed`` section StoreAttrs does not know): both read back exactly."""
    import shutil

    from featcache.cache.pack import pack
    from featcache.cache.writer import CacheWriter

    grown = str(tmp_path / "grown.zarr")
    shutil.copytree(fresh, grown)
    attrs = {k: v for k, v in open_cache(grown).attrs.items() if k not in ("fingerprint", "schema_version", "layout")}
    attrs["frames"] = dict(attrs["frames"], policies=[*attrs["frames"]["policies"], "uniform:2"])
    with CacheWriter.open(grown, attrs):
        pass
    root = _read(os.path.join(grown, "zarr.json"))["attributes"]
    assert root["frames"]["policies"][-1] == "uniform:2" and "added" in root["frames"]
    _round_trips(StoreAttrs, root)
    assert open_cache(grown).facts.frames.added["uniform:2"] == root["frames"]["added"]["uniform:2"]

    out = str(tmp_path / "packed.zarr")
    pack(FIXTURES[0], out)
    root = _read(os.path.join(out, "zarr.json"))["attributes"]
    assert StoreAttrs.from_json(root).unknown["packed"]["from_schema"] == 1
    _round_trips(StoreAttrs, root)
    old, new = open_cache(FIXTURES[0]), open_cache(out)
    assert new.records() == old.records()  # every record copied through its type, unchanged
    assert {k: r.to_json() for k, r in new.video_records().items()} == old.records()


@pytest.mark.slow
def test_cut_int8_crops_and_clip_stores_round_trip_exactly(tmp_path):
    """The optional sections (cut, crops; int8 storage) and a video encoder's clip store (clip
    preprocess, clip_grid, clip records) as today's writer writes them."""
    from conftest import cli, tiny_encoder_config

    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    manifest = make_dataset(str(tmp_path / "d"), "motion", per_class=1, num_frames=16)
    stores = {name: str(tmp_path / f"{name}.zarr") for name in ("cut", "crops", "int8", "clip")}
    for name, kw in (("cut", {"encoder": tiny_encoder_config(cut_block=1)}), ("crops", {"crops": 3}),
                     ("int8", {"dtype": "int8"})):
        run_extract(ExtractConfig(manifest=manifest, out=stores[name], frames="uniform:4",
                                  **{"encoder": tiny_encoder_config(), **kw}), show_progress=False)
    cli("extract", manifest, "--out", stores["clip"], "--model", "tv:r3d_18", "--weights", "random", "--precision", "fp32",
        "--model-arg", "crop_size=32", "--model-arg", "resize_size=[40,53]", "--model-arg", "clip_len=4",
        "--frames", "fps:8,windows:4/4", "-q")
    for store in stores.values():
        root = _read(os.path.join(store, "zarr.json"))["attributes"]
        _round_trips(StoreAttrs, root)
        for record in open_cache(store).records().values():
            _round_trips(VideoRecord, record)
    cut, crops = open_cache(stores["cut"]).facts, open_cache(stores["crops"]).facts
    assert cut.cut.block == 1 and cut.shape.cut and not cut.shape.crops and crops.crops.count == 3 and crops.shape.crops
    assert open_cache(stores["int8"]).facts.dtype == "int8"
    facts = open_cache(stores["clip"]).facts
    assert facts.clip_rows and facts.tokens.clip_grid == (1, 2, 2) and facts.frames.clip_policy


def test_views_section_is_typed_and_round_trips_exactly():
    from featcache.cache import index
    from featcache.cache.views import views_attrs

    doc = {"schema_version": 2, "frames": {"policies": ["uniform:4"]},
           "storage": {"dtype": "int8", "table_arrays": list(index.VIEW_ARRAYS), "later": 1},
           "views": dict(views_attrs(4, "crop_flip", 7, "frame"), future=[1])}
    facts = StoreAttrs.from_json(doc)
    assert facts.views.count == 4 and facts.views.seed == 7 and facts.views.unknown == {"future": (1,)}
    assert facts.storage.table_arrays == index.VIEW_ARRAYS and index.table_of(doc) == index.TABLE_VIEWS
    assert index.table_of(AttrsDict(doc)).itemsize == 180 and index.table_of({"storage": {}}).itemsize == 156
    _round_trips(StoreAttrs, doc)
