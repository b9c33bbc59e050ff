import numpy as np
import pytest

from featcache.spec.policy import KeyFramePolicy, UniformPolicy
from featcache.video.select import keyframe_indices, luv_scores, parse_policies, rgb_to_luv, select_frames, uniform_indices


def test_parse_policies():
    assert parse_policies("uniform:16, keyframes:8") == (UniformPolicy(16), KeyFramePolicy(8))
    assert str(KeyFramePolicy(8)) == "keyframes:8"


@pytest.mark.parametrize("text,bad", [("uniform", "uniform"), ("random:8", "random:8"), ("uniform:0", "uniform:0"),
                                      ("uniform:8,uniform:8", "uniform:8"), ("keyframes:-1", "keyframes:-1"), ("", "")])
def test_parse_policies_rejects(text, bad):
    """The error names the bad part, not an option: the caller (extract's --frames, a view's
    view:) names its own option."""
    with pytest.raises(ValueError) as info:
        parse_policies(text)
    assert repr(bad) in str(info.value) and "--" not in str(info.value)


def test_uniform_segment_centres():
    assert uniform_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert uniform_indices(8, 8).tolist() == list(range(8))
    # shorter than requested: frames repeat, still N positions, in order
    assert uniform_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_rgb_to_luv_known_values():
    # reference values of CIE L*u*v* (D65) for sRGB primaries and white
    luv = rgb_to_luv(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8))
    expected = [[100, 0, 0], [0, 0, 0], [53.24, 175.01, 37.76], [87.73, -83.07, 107.42], [32.30, -9.40, -130.34]]
    np.testing.assert_allclose(luv, expected, atol=0.1)


def test_luv_scores_mean_abs_difference():
    a = np.zeros((4, 2, 2, 3), np.uint8)
    a[2:] = 255  # a cut from black to white at frame 2
    scores = luv_scores(a)
    np.testing.assert_allclose(scores, [0, 0, 100.0 / 3, 0], atol=1e-3)  # |dL|=100 over L,u,v channels


def test_keyframes_top_k_in_temporal_order():
    scores = np.array([0, 5, 1, 9, 3, 9, 2], np.float32)
    assert keyframe_indices(scores, 3).tolist() == [1, 3, 5]
    # ties go to the earlier frame
    assert keyframe_indices(np.array([0, 2, 2, 2, 1], np.float32), 2).tolist() == [1, 2]


def test_keyframes_static_video_spreads_uniformly():
    assert keyframe_indices(np.zeros(100, np.float32), 4).tolist() == [12, 37, 62, 87]
    # one change, the rest filled uniformly from the remaining frames, deterministic
    scores = np.zeros(10, np.float32)
    scores[7] = 1.0
    out = keyframe_indices(scores, 3)
    assert 7 in out and len(set(out.tolist())) == 3 and out.tolist() == sorted(out.tolist())
    assert keyframe_indices(scores, 3).tolist() == out.tolist()


def test_keyframes_short_video_repeats():
    assert keyframe_indices(np.array([0, 1, 2], np.float32), 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_select_frames_union_and_positions():
    scores = np.zeros(20, np.float32)
    scores[[3, 11]] = 5
    pool, positions = select_frames(parse_policies("uniform:4,keyframes:2"), 20, scores)
    assert pool.tolist() == [2, 3, 7, 11, 12, 17]
    assert pool[positions["uniform:4"]].tolist() == [2, 7, 12, 17]
    assert pool[positions["keyframes:2"]].tolist() == [3, 11]


def test_fps_policy_picks_the_frame_nearest_each_time():
    from featcache.video.select import fps_indices

    stamps = np.arange(50) / 25.0  # 25 fps, 2 s
    # 0, .25, .5, ... 1.75 s = frames 0, 6.25, 12.5, 18.75, 25, 31.25, 37.5, 43.75; ties go to the earlier frame
    assert fps_indices(stamps, 4).tolist() == [0, 6, 12, 19, 25, 31, 37, 44]
    # timestamps with a gap: the nearest existing frame (0.5 s -> 0.2 s), never past the last one
    gappy = np.array([0.0, 0.1, 0.2, 1.0, 1.1])
    assert fps_indices(gappy, 2).tolist() == [0, 2, 3]
    pool, positions = select_frames(parse_policies("fps:4,uniform:2"), 50, None, stamps)
    assert pool[positions["fps:4"]].tolist() == [0, 6, 12, 19, 25, 31, 37, 44]


def _rgb_to_luv_before_the_lookup(rgb):
    """rgb_to_luv as it was written before the sRGB lookup table (the formula per pixel)."""
    from featcache.video.select import _RGB_TO_XYZ, _UN, _VN, _WHITE

    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    y_rel = y / _WHITE[1]
    lum = np.where(y_rel > (6 / 29) ** 3, 116 * np.cbrt(y_rel) - 16, (29 / 3) ** 3 * y_rel)
    denom = x + 15 * y + 3 * z
    safe = np.where(denom > 0, denom, 1.0)
    u = 13 * lum * (np.where(denom > 0, 4 * x / safe, _UN) - _UN)
    v = 13 * lum * (np.where(denom > 0, 9 * y / safe, _VN) - _VN)
    return np.stack([lum, u, v], axis=-1).astype(np.float32)


def test_rgb_to_luv_lookup_gives_the_formula_values():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 17, 23, 3), dtype=np.uint8)
    rgb[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [10, 10, 10]]  # both branches of the sRGB curve
    np.testing.assert_array_equal(rgb_to_luv(rgb), _rgb_to_luv_before_the_lookup(rgb))


def test_streaming_best_frames_hold_every_key_frame_pick():
    """Offering frames one by one and keeping k of them always keeps what keyframe_indices picks
    when at least k frames changed (scores with many exact ties and zeros)."""
    from featcache.video.select import BestFrames

    rng = np.random.default_rng(0)
    for _ in range(500):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 9))
        scores = rng.integers(0, 4, n).astype(np.float32)  # 0 = unchanged; few levels: ties everywhere
        scores[0] = 0
        best = BestFrames(k)
        for i, s in enumerate(scores):
            best.offer(i, s, payload=f"frame {i}")
        kept = best.kept()
        assert all(kept[i] == f"frame {i}" for i in kept) and len(kept) == min(k, int((scores > 0).sum()))
        if (scores > 0).sum() >= k and n >= k:
            assert sorted(kept) == keyframe_indices(scores, k).tolist()
