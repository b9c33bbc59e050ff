"""CONTRIBUTING.md's frame-policy recipe, done: a toy kind ``altkey:K`` (every other of a video's
2K key frames) is one class and one selection function, both defined and registered here and
nowhere in the package, and featcache extracts, verifies and trains with it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from conftest import cli, tiny_encoder_config

from featcache.spec import frame_policy
from featcache.spec.frame_policy import FramePolicy, register_policy
from featcache.video import select
from featcache.video.select import keyframe_indices, register_selection


@dataclass(frozen=True)
class AltKeyPolicy(FramePolicy):
    """``altkey:K``: every other frame of ``keyframes:2K``, in temporal order."""

    prefix = "altkey"
    form = "altkey:K"
    needs_scores = True
    frames: int

    @property
    def fixed_length(self) -> int:
        return self.frames

    @property
    def scored_frames(self) -> int:
        return 2 * self.frames  # the streaming decoder keeps the 2K best-scoring frames


def select_altkey(policy: AltKeyPolicy, num_frames: int, scores, stamps) -> np.ndarray:
    return keyframe_indices(scores, 2 * policy.frames)[::2]


@pytest.fixture(scope="module")
def altkey():
    """The toy kind registered for this module only (other tests see the built-in kinds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(frame_policy, "_REGISTRY", dict(frame_policy._REGISTRY))
        mp.setattr(select, "_SELECTIONS", dict(select._SELECTIONS))
        register_policy(AltKeyPolicy)
        register_selection(AltKeyPolicy)(select_altkey)
        yield


def every_other_key_frame(scores: np.ndarray, k: int) -> list[int]:
    """Independent of featcache's ranking: the 2k frames with the highest scores (ties to the
    earlier frame), in temporal order, every other one from the first."""
    ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:2 * k]
    assert all(scores[i] > 0 for i in ranked)  # moving footage: no static-frame fallback involved
    return sorted(ranked)[::2]


@pytest.mark.slow
def test_a_new_frame_policy_extracts_and_trains(altkey, tmp_path):
    from featcache.cache.store import open_cache
    from featcache.data.synthetic import make_dataset
    from featcache.extract.pipeline import ExtractConfig, run_extract

    manifest = make_dataset(str(tmp_path / "videos"), "motion", per_class=5, num_frames=16)
    out = str(tmp_path / "c.zarr")
    summary = run_extract(ExtractConfig(manifest=manifest, out=out, frames="uniform:4,altkey:3",
                                        encoder=tiny_encoder_config()), show_progress=False)
    assert summary.done == 20 and not summary.failed
    cache = open_cache(out)
    assert cache.attrs["frames"]["policies"] == ["uniform:4", "altkey:3"]
    for entry in cache.done_entries(None):
        scores = entry.luv_scores  # kept because the kind needs scores
        assert scores is not None and len(scores) == 16
        picked = entry.frame_indices[entry.policies["altkey:3"]].tolist()
        assert picked == every_other_key_frame(scores, 3), entry.video_id
        assert entry.frame_indices[entry.policies["uniform:4"]].tolist() == [2, 6, 10, 14]  # floor((i + .5) * 4)
    cli("cache", "verify", out)

    run = tmp_path / "run"
    cli("train", out, "--head", "pool", "--view", "altkey:3", "--set", "epochs=2", "--out", run)
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["view"] == "altkey:3"
    assert (run / "best.pt").exists() and (run / "metrics.json").exists()
    # the view reads the same frames back: 3 per video
    from featcache.cache.dataset import materialise
    from featcache.spec.view import View

    data = materialise(cache, View("altkey:3"), "train")
    assert data.x.shape[:2] == (12, 3)
