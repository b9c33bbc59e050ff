"""Evaluation protocols as objects: eval's options parse into one protocol, which names the keys and
files (names pinned as featcache has written them: tests/train/test_protocols.py, test_dense_views.py
and docs/protocols.md read them back)."""
import dataclasses

import pytest

from featcache.errors import FeatcacheError, OptionError
from featcache.train.evaluate import PROTOCOLS, parse_protocol
from featcache.train.protocols import DenseClips, MultiView, SingleView
from featcache.train.protocols_release import SlowFastClips, STAdapterClips, VJEPAClips
from featcache.train.protocols_windows import Windows


@pytest.mark.parametrize("options,kind,name", [
    ({}, SingleView, ""),
    ({"combine": "sum"}, SingleView, ""),
    ({"temporal_views": 2}, MultiView, "2x1"),
    ({"spatial_views": 3}, MultiView, "1x3"),
    ({"temporal_views": 2, "spatial_views": 3, "combine": "max"}, MultiView, "2x3"),
    ({"temporal_views": 10, "spatial_views": 3, "clip_rate": 2}, DenseClips, "10x3r2"),
    ({"pool": "stride:2"}, DenseClips, None),  # a pool alone asks for dense clips (rate then refused)
    ({"protocol": "slowfast", "temporal_views": 10, "spatial_views": 3, "clip_rate": 8}, SlowFastClips,
     "slowfast10x3r8"),
    ({"protocol": "stadapter", "temporal_views": 3, "clip_rate": 2}, STAdapterClips, "stadapter3x1r2"),
    ({"protocol": "vjepa", "temporal_views": 8, "spatial_views": 3, "clip_rate": 4}, VJEPAClips, "vjepa8x3r4"),
    ({"window": 16, "stride": 8}, Windows, "w16s8max"),
    ({"window": 4, "stride": 2, "aggregate": "mean"}, Windows, "w4s2mean"),
])
def test_eval_options_parse_into_one_protocol_that_names_itself(options, kind, name):
    if name is None:
        with pytest.raises(OptionError, match="clip_rate: must be at least 1, got 0"):
            parse_protocol(**options)
        return
    p = parse_protocol(**options)
    assert type(p) is kind and p.name == name and p.suffix == (f"@{name}" if name else "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pool = "x"  # a protocol is a value: resolve() returns another one


def test_a_resolved_pool_joins_the_name_and_every_release_is_registered():
    assert DenseClips(2, 1, 2, pool="stride:2", pool_key="-stride2").name == "2x1r2-stride2"
    assert Windows(4, 3, "mean", "stride:2", "-stride2").name == "w4s3mean-stride2"
    assert list(PROTOCOLS) == ["featcache", "slowfast", "slowfast-pyav", "slowfast-whole", "stadapter", "vjepa"]
    assert all(cls.release == name for name, cls in PROTOCOLS.items() if name != "featcache")


@pytest.mark.parametrize("options,message", [
    ({"combine": "median"}, "combine: unknown 'median'; expected one of mean, sum, max"),
    ({"spatial_views": 2}, "spatial_views: expected 1 or 3, got 2"),
    ({"temporal_views": 0}, "temporal_views: must be at least 1, got 0"),
    ({"clip_rate": -1}, "clip_rate: must be at least 1, got -1"),
    ({"protocol": "nope", "clip_rate": 2}, "protocol: unknown 'nope'; expected one of featcache, slowfast, slowfast-pyav, slowfast-whole, stadapter, vjepa"),
    ({"protocol": "slowfast"}, "protocol: slowfast places dense clips: give --clip-rate R"),
    ({"window": 4, "clip_rate": 2}, "are two protocols; give one of them"),
    ({"window": 4, "aggregate": "median"}, "aggregate: expected max or mean, got 'median'"),
    ({"protocol": "vjepa", "clip_rate": 4, "combine": "sum"}, "averages the softmax of its views"),
])
def test_bad_options_are_refused_before_any_run_is_read(options, message):
    with pytest.raises(FeatcacheError, match=message.replace("(", r"\(")):
        parse_protocol(**options)
