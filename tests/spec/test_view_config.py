"""The one View type and the training config it is parsed into (pure: no cache, no model)."""
import dataclasses

import pytest

from featcache.errors import FeatcacheError
from featcache.spec.config import TrainConfig, build_config, from_dict, parse_assignments, to_dict
from featcache.spec.policy import KeyFramePolicy
from featcache.spec.view import CacheShape, Layout, View

ATTRS = CacheShape(policies=("uniform:16", "keyframes:8"), layers=(10, 11), grid=(16, 16), num_prefix_tokens=1,
                   dim=384)


def test_view_parses_once_and_is_hashable():
    v = View("keyframes:4", layers=[0, 1], tokens="patch", spatial=4)
    assert v.frames == KeyFramePolicy(4) and v.layers == (0, 1)
    assert v == View(KeyFramePolicy(4), (0, 1), "patch", 4) and len({v, View("keyframes:4", (0, 1), "patch", 4)}) == 1
    assert str(v) == "keyframes:4 layers=0,1 tokens=patch spatial=4" and str(View()) == "uniform:8"
    assert v.as_dict() == {"view": "keyframes:4", "layers": [0, 1], "tokens": "patch", "spatial": 4, "channels": 0,
                           "source": "tokens"}


@pytest.mark.parametrize("kwargs,message", [
    ({"frames": "uniform:8,keyframes:4"}, "expected one frame policy"),
    ({"frames": "every:3"}, "unknown policy 'every:3'"),
    ({"tokens": "both"}, "tokens: 'both' is not one of all, cls, patch"),
    ({"spatial": -1}, "spatial: expected a grid side >= 0"),
    ({"layers": ["last"]}, "layers: expected integers"),
    ({"channels": -3}, "channels: expected a channel count >= 0"),
])
def test_view_refuses_bad_parts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        View(**kwargs)


def test_view_layout_against_cache_attributes():
    assert View("uniform:8").layout(ATTRS) == Layout(8, 257, 384, 1, (16, 16))
    assert View("uniform:8", layers=(0, 1), spatial=3).layout(ATTRS) == Layout(8, 10, 768, 1, (3, 3))
    assert View("keyframes:2", tokens="cls").layout(ATTRS).shape == (2, 1, 384)
    assert View("uniform:4", tokens="patch", spatial=2).layout(ATTRS) == Layout(4, 4, 384, 0, (2, 2))
    assert View("uniform:8", channels=48).layout(ATTRS) == Layout(8, 257, 48, 1, (16, 16))


@pytest.mark.parametrize("view,message", [
    (View("uniform:8", layers=(2,)), "layers: 2 is out of range; the cache holds 2 layer"),
    (View("uniform:8", spatial=17), "spatial: 17 must be between 0 and the cached grid 16x16"),
    (View("uniform:8", channels=385), "channels: 385 must be between 0 and the view's 384 channels"),
])
def test_view_check_refuses_what_the_cache_cannot_serve(view, message):
    with pytest.raises(FeatcacheError, match=message):
        view.check(ATTRS)
    with pytest.raises(FeatcacheError, match="the cache has no key frames"):
        View("keyframes:4").check(dataclasses.replace(ATTRS, policies=("uniform:16",)))
    with pytest.raises(FeatcacheError, match="no prefix"):
        View(tokens="cls").check(dataclasses.replace(ATTRS, num_prefix_tokens=0))


def test_config_builds_the_view_and_round_trips():
    cfg = build_config(parse_assignments(["view=keyframes:4", "layers=[-2, -1]", "spatial=4", "head=r3d",
                                          "head.blocks=2"]))
    assert cfg.view == View("keyframes:4", (-2, -1), "all", 4)
    flat = to_dict(cfg)
    assert {k: flat[k] for k in ("view", "layers", "tokens", "spatial", "channels", "source")} == cfg.view.as_dict()
    assert from_dict(flat) == cfg
    with pytest.raises(ValueError, match="--set tokens: 'both' is not one of"):
        build_config({"tokens": "both"}, where="--set ")
    with pytest.raises(ValueError, match="view: expected str, got 8"):
        build_config({"view": 8})


def test_the_source_follows_the_head_unless_given():
    assert build_config({"head": "adapter"}).view.source == "cut"
    assert build_config({"head": "pool"}, base=build_config({"head": "adapter"})).view.source == "tokens"
    with pytest.raises(ValueError, match="source: cut is the whole residual stream"):
        build_config({"head": "adapter", "spatial": 2})
    with pytest.raises(FeatcacheError, match="holds no cut"):
        View(source="cut").check(ATTRS)


def test_fusion_key_is_the_view_and_the_batch_settings():
    a, b = build_config({"head": "pool"}), build_config({"head": "r3d", "lr": 0.1, "head.blocks": 2})
    assert a.batch == b.batch  # head and optimiser settings do not decide the batches (tests/spec/test_train_config.py)
    assert a.batch != build_config({"spatial": 2}).batch
    assert a.batch != build_config({"seed": 1}).batch


def test_changing_the_head_drops_the_previous_heads_options():
    # `--config pool.yaml --head r3d --set head.blocks=2`: the pool options must not reach r3d
    file_cfg = build_config({"head": "pool", "head.temporal": "concat", "head.mlp_layers": 2})
    cfg = build_config({"head": "r3d", "head.blocks": 2}, base=file_cfg, where="--set ")
    assert cfg.head == "r3d" and cfg.head_options == {"blocks": 2}
    same = build_config({"head.mlp_layers": 0}, base=file_cfg)  # the same head keeps its options
    assert same.head_options == {"temporal": "concat", "mlp_layers": 0}
    assert build_config({"head": "tcn"}, base=file_cfg).head_options == {}
    assert TrainConfig().view == View("uniform:8")
