import os

import pytest

from featcache.cache.schema import differing_facts, fingerprint, video_key


@pytest.mark.parametrize("vid", ["v_ApplyEyeMakeup_g01_c01", "abc.def-1", "0001"])
def test_plain_ids_are_kept(vid):
    assert video_key(vid) == vid


@pytest.mark.parametrize("vid", ["../../etc/passwd", "a/b", "..", ".hidden", "a b", "naïve", "x" * 300, "/abs", "a\\b", "~x"])
def test_odd_ids_cannot_escape(vid):
    key = video_key(vid)
    assert "/" not in key and "\\" not in key and key not in (".", "..") and not key.startswith(".")
    assert os.path.basename(key) == key and len(key) <= 128 and "~" in key


def test_keys_are_unique():
    ids = ["a/b", "a_b", "a b", "a\\b", "a?b"]
    assert len({video_key(i) for i in ids}) == len(ids)


def test_fingerprint_ignores_volatile_facts():
    a = {"model": {"name": "m", "num_params": 1}, "compute": {"precision": "bf16", "device_type": "cpu"}}
    b = {"model": {"name": "m", "num_params": 2}, "compute": {"precision": "bf16", "device_type": "cuda"}}
    assert fingerprint(a) == fingerprint(b)
    c = {"model": {"name": "other"}, "compute": {"precision": "fp32"}}
    assert differing_facts(a, c) == ["model.name", "compute.precision"]
