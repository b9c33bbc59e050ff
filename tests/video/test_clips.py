"""Clip policies (featcache/video/clips.py): parsing, and the index maths against torchvision's
own sampling code (an independent computation) and hand-worked short videos."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featcache.spec.policy import ClipsPolicy, WindowsPolicy
from featcache.video.clips import (
    _linspace_f32,
    clips_indices,
    resample_indices,
    unique_clips,
    windows_indices,
)
from featcache.video.select import fps_indices, parse_policies


def test_parse_clip_policies():
    assert parse_policies("clips:4") == (ClipsPolicy(4),)
    (w,) = parse_policies("fps:4,windows:8/4")
    assert (w.kind, w.width, w.stride, w.fps, str(w)) == ("windows", 8, 4, 4, "windows:8/4@fps:4")
    assert parse_policies(str(w)) == (w,)  # the stored name parses back (resume, views)
    assert parse_policies("windows:8/8, fps:2") == (WindowsPolicy(8, 8, 2),)
    assert not w.fixed and w.length(100) is None and ClipsPolicy(3).length(7) == 3
    assert (w.unit, w.served_from, ClipsPolicy(3).served_from, w.needs_scores) == ("clip", "itself", "clips", False)
    assert w.clip_shape(16, 30.0) == (8, 4) and ClipsPolicy(3).clip_shape(16, 30.0) == (16, 30.0)


@pytest.mark.parametrize("text, message", [
    ("windows:8/4", "needs one fps:F pool"),
    ("clips:4,uniform:8", "one clip policy"),
    ("clips:2,fps:4,windows:8/4", "one clip policy"),
    ("clips:0", "at least 1"),
    ("windows:8", "unknown clip policy"),
    ("fps:0,windows:8/8", "at least 1"),
])
def test_bad_clip_policies(text, message):
    with pytest.raises(ValueError, match=message):
        parse_policies(text)


def test_linspace_floors_are_torchs():
    """UniformClipSampler floors torch.linspace in float32, which is one below the exact
    ``end * i // (steps - 1)`` for some sizes: the float32 port must give torch's floors."""
    exact_differs = 0
    for end in range(0, 1500, 7):
        for steps in range(1, 33):
            ref = torch.linspace(0, end, steps).floor().numpy()
            np.testing.assert_array_equal(np.floor(_linspace_f32(0, end, steps)), ref)
            if steps > 1:
                exact_differs += not np.array_equal([end * i // (steps - 1) for i in range(steps)], ref)
    assert exact_differs  # the rounding quirk is real: an exact computation would not match torchvision


def _torchvision_clips(n: int, fps: float, frames: int, rate: float, count: int) -> np.ndarray:
    """torchvision's own: VideoClips.compute_clips_for_video over pts = frame indices, then
    UniformClipSampler's linspace(...).floor() choice (datasets/samplers/clip_sampler.py)."""
    from torchvision.datasets.video_utils import VideoClips

    clips, _ = VideoClips.compute_clips_for_video(torch.arange(n), frames, 1, fps, rate)
    chosen = torch.linspace(0, len(clips) - 1, steps=count).floor().to(torch.int64)
    return clips[chosen].numpy()


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97, 24.0, 10.0])
@pytest.mark.parametrize("rate", [15.0, 7.5])
def test_clips_match_torchvision(fps, rate):
    for n in (40, 64, 97, 300):
        for frames, count in ((8, 1), (8, 5), (16, 3), (16, 10)):
            if int(np.floor(n * rate / fps)) < frames + 1:
                continue
            ours, short = clips_indices(n, fps, frames, rate, count)
            assert not short
            np.testing.assert_array_equal(ours, _torchvision_clips(n, fps, frames, rate, count))


def test_resample_integer_step_is_every_kth_frame():
    np.testing.assert_array_equal(resample_indices(41, 30.0, 15.0), np.arange(0, 41, 2))  # video_pts[::2]
    np.testing.assert_array_equal(resample_indices(10, 25.0, 25.0), np.arange(10))


def test_short_video_is_one_clip_of_repeated_last_frame():
    # 10 frames at 30 fps resampled to 15 fps: frames 0, 2, 4, 6, 8 (5 frames), a clip needs 8
    clips, short = clips_indices(10, 30.0, 8, 15.0, 3)
    assert short
    np.testing.assert_array_equal(clips, [[0, 2, 4, 6, 8, 8, 8, 8]] * 3)
    rows, positions = unique_clips(clips)
    np.testing.assert_array_equal(rows, [[0, 2, 4, 6, 8, 8, 8, 8]])
    assert positions == [0, 0, 0]
    single, short = clips_indices(1, 25.0, 4, 15.0, 2)  # one frame
    assert short and single.tolist() == [[0, 0, 0, 0]] * 2


def test_exactly_one_clip_long():
    clips, short = clips_indices(16, 15.0, 16, 15.0, 4)  # one candidate: every clip is it
    assert not short and clips.tolist() == [list(range(16))] * 4


def test_windows_over_an_fps_pool():
    stamps = np.arange(100) / 25.0  # 4 s at 25 fps
    pool = fps_indices(stamps, 4)  # 0, 0.25, ... 3.75 s -> frames 0, 6 (6.25 rounds down), 12, 19, ...
    ref_pool = [int(np.argmin(np.abs(stamps - k / 4))) for k in range(16)]
    assert pool.tolist() == ref_pool
    wins, short = windows_indices(pool, 4, 3)
    assert not short
    assert wins.tolist() == [ref_pool[s:s + 4] for s in (0, 3, 6, 9, 12)]  # 12 + 4 = 16: the last that fits
    wins, _ = windows_indices(pool, 4, 4)
    assert wins.tolist() == [ref_pool[s:s + 4] for s in (0, 4, 8, 12)]


def test_windows_short_pool_is_uniform_over_it():
    wins, short = windows_indices(np.array([0, 5, 10]), 4, 2)
    assert short and wins.tolist() == [[0, 5, 5, 10]]  # uniform:4 of 3: floor((i + .5) * 3 / 4) = 0, 1, 1, 2


def test_unique_clips_sorted_with_positions():
    clips = np.array([[4, 5], [0, 1], [4, 5], [2, 3]])
    rows, positions = unique_clips(clips)
    assert rows.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert positions == [2, 0, 2, 1]
    assert (rows[positions] == clips).all()
