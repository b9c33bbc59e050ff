import os

import numpy as np
import pytest
from conftest import CONTAINERS, VIDEO_SIZE, pyav_frames

from featcache.video.decode import DecodeError, decode_video, resize_to_short_side
from featcache.video.select import keyframe_indices, luv_scores, uniform_indices


def every(n, small, stamps=None):
    return np.arange(n)


def some(n, small, stamps=None):
    return np.array([0, 5, 13, 27, 39][: n])


def torchcodec_works() -> bool:
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


needs_torchcodec = pytest.mark.skipif(not torchcodec_works(), reason="torchcodec or FFmpeg's libraries missing "
                                      "(.ci/install installs both)")


@pytest.mark.parametrize("ext", CONTAINERS)
@pytest.mark.parametrize("decoder", ["auto", "decord", "pyav", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_random_access_matches_sequential_pyav(videos, ext, decoder):
    """The frame recorded as index i is the i-th frame of an in-order PyAV decode."""
    ref = pyav_frames(videos[ext])
    v = decode_video(videos[ext], some, short_side=VIDEO_SIZE[1], decoder=decoder)
    # auto is PyAV's in-order pass; random access never reads MPEG program streams (no seek index)
    assert v.decoder == ("pyav" if decoder == "auto" or ext == ".mpg" else decoder)
    assert v.num_frames == len(ref) == 40
    assert v.frames.shape == (5, VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    np.testing.assert_array_equal(v.frames, ref[v.indices])
    assert v.fps == pytest.approx(25.0)
    np.testing.assert_allclose(v.timestamps, v.indices / 25.0, atol=1e-3)


def test_mpeg_program_stream_goes_to_pyav(videos):
    v = decode_video(videos[".mpg"], some, short_side=VIDEO_SIZE[1], decoder="decord")
    assert v.decoder == "pyav" and "seek index" in v.note


@pytest.mark.parametrize("decoder", ["auto", "decord"])
def test_real_clip_against_sequential_decoding(city_clip, decoder):
    """decord shifts this MPEG-2 clip by 12 frames; auto and a forced decord must return PyAV's frames."""
    ref = pyav_frames(city_clip, 224 * 720 // 405, 224)
    v = decode_video(city_clip, lambda n, s, t: uniform_indices(n, 8), short_side=224, decoder=decoder)
    assert (v.num_frames, v.width, v.height) == (190, 720, 405)
    assert v.fps == pytest.approx(25.0)
    assert v.frames.shape == (8, 224, 398, 3)
    np.testing.assert_array_equal(v.frames, ref[v.indices])
    np.testing.assert_allclose(v.timestamps, v.indices / 25.0, atol=1e-3)


def test_real_clip_keyframe_finds_the_hard_cut(city_clip):
    picked = {}

    def pick(n, scores, stamps):
        picked["scores"] = scores
        return keyframe_indices(picked["scores"], 1)

    v = decode_video(city_clip, pick, short_side=64, small_size=(64, 48), keep_best=1)
    assert v.indices.tolist() == [116] and not v.second_pass
    assert len(picked["scores"]) == 190 and picked["scores"][0] == 0


def test_resize_keeps_aspect_like_torchvision():
    assert resize_to_short_side(720, 405, 224) == (398, 224)
    assert resize_to_short_side(405, 720, 224) == (224, 398)


@pytest.mark.parametrize("decoder", ["decord", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_decoders_agree_after_scaling(videos, decoder):
    a = decode_video(videos[".mp4"], every, short_side=40, decoder=decoder)
    b = decode_video(videos[".mp4"], every, short_side=40, decoder="pyav")
    assert a.decoder == decoder and a.frames.shape == b.frames.shape == (40, 40, 54, 3)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0  # two scalers, same frames


@needs_torchcodec
def test_torchcodec_is_trusted_where_it_agrees_and_handed_to_pyav_where_it_does_not(videos, city_clip):
    """On the real MPEG-2 clip torchcodec's exact seeks land late: it never decodes it; on seekable
    containers its key-frame pass gives PyAV's scores (two bilinear scalers: close, not equal, so
    near-tied key frames of a square moving at constant speed may rank differently) and the
    frames it returns are PyAV's frames at those indices."""
    ref = pyav_frames(city_clip, 224 * 720 // 405, 224)
    v = decode_video(city_clip, lambda n, s, t: uniform_indices(n, 8), short_side=224, decoder="torchcodec")
    assert v.decoder == "pyav" and "seek index" in v.note
    np.testing.assert_array_equal(v.frames, ref[v.indices])
    got = {}

    def pick(n, scores, stamps):
        got.setdefault("scores", []).append(scores)
        return keyframe_indices(got["scores"][-1], 4)

    for ext in (".mp4", ".mkv", ".avi"):
        t = decode_video(videos[ext], pick, short_side=56, small_size=(64, 48), decoder="torchcodec")
        p = decode_video(videos[ext], pick, short_side=56, small_size=(64, 48), decoder="pyav")
        assert t.decoder == "torchcodec" and p.decoder == "pyav"
        assert np.abs(got["scores"][-2] - got["scores"][-1]).mean() < 0.05 * got["scores"][-1].mean(), ext
        np.testing.assert_array_equal(t.frames, pyav_frames(videos[ext])[t.indices])  # native size: no scaler
        np.testing.assert_allclose(t.timestamps, t.indices / 25.0, atol=1e-3)


def test_torchcodec_missing_falls_back_to_pyav(videos, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if not installed
    v = decode_video(videos[".mp4"], some, short_side=VIDEO_SIZE[1], decoder="torchcodec")
    assert v.decoder == "pyav" and "torchcodec unavailable" in v.note


@pytest.mark.parametrize("decoder", ["auto", "pyav", "torchcodec"])
def test_bad_files_raise_one_line_reasons(tmp_path, videos, decoder):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 50)
    data = open(videos[".mp4"], "rb").read()
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(data[: len(data) // 2])
    cases = {str(tmp_path / "missing.mp4"): "file not found", str(empty): "empty file",
             str(text): "cannot open as video", str(trunc): "cannot open as video"}
    for path, reason in cases.items():
        with pytest.raises(DecodeError, match=reason) as info:
            decode_video(path, every, short_side=56, decoder=decoder)
        assert "\n" not in str(info.value)


def test_truncated_stream_is_flagged(tmp_path, videos):
    data = open(videos[".mkv"], "rb").read()
    trunc = tmp_path / "trunc.mkv"
    trunc.write_bytes(data[: len(data) // 2])
    v = decode_video(str(trunc), every, short_side=56)
    assert v.num_frames < 40 and v.expected_frames == 40 and v.looks_truncated
    full = decode_video(videos[".mkv"], every, short_side=56)
    assert not full.looks_truncated


def test_unknown_decoder():
    """The library names the option and the value; the CLI shows it under its flag."""
    from featcache.errors import OptionError

    with pytest.raises(OptionError, match="^decoder: unknown decoder 'opencv'") as info:
        decode_video(os.devnull, every, 56, decoder="opencv")
    assert info.value.flag == "--decoder"


# ------------------------------------------------------------------ one in-order pass
def two_pass_reference(path, policies, short_side, luv_size=(64, 48)):
    """Today's selection, computed independently: every frame small (PyAV in order, bilinear),
    scores, the policies' pool, then the pool's frames at the resize size from a second decode."""
    import av

    from featcache.video.select import parse_policies, select_frames

    with av.open(path) as c:
        small = np.stack([f.to_ndarray(format="rgb24", width=luv_size[0], height=luv_size[1],
                                       interpolation="BILINEAR") for f in c.decode(video=0)])
    scores = luv_scores(small)
    pool, positions = select_frames(parse_policies(policies), len(small), scores, np.arange(len(small)) / 25.0)
    with av.open(path) as c:
        w, h = c.streams.video[0].width, c.streams.video[0].height
    return pool, positions, scores, pyav_frames(path, *resize_to_short_side(w, h, short_side))[pool]


def lossless_clip(path, frames):
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv444p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def tie_clip(tmp_path_factory):
    """Lossless: frames alternate between two images, so every frame after the first scores the
    same (exact ties), then 10 identical frames (scores 0)."""
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    frames = np.stack([a if i % 2 == 0 else b for i in range(20)] + [b] * 10)
    return lossless_clip(str(tmp_path_factory.mktemp("tie") / "tie.mkv"), frames)


@pytest.mark.parametrize("policies", ["keyframes:4", "uniform:8,keyframes:3", "uniform:5,keyframes:8,stride:7"])
def test_one_pass_picks_and_frames_equal_two_pass_selection(videos, city_clip, tie_clip, policies, monkeypatch):
    """prepare's single in-order pass returns the same pool, policies, scores and frames as the
    two-pass selection, ties included, and reads no file twice where the header's count is right."""
    import featcache.video.decode as dec
    from featcache.data.manifest import VideoItem
    from featcache.spec.policy import parse_policies
    from featcache.video.prepare import DecodeSpec, prepare

    second = []
    real = dec._pyav_frames_at
    monkeypatch.setattr(dec, "_pyav_frames_at", lambda *a: second.append(a[0]) or real(*a))
    spec = DecodeSpec(parse_policies(policies), "repeat", (64, 48), "auto", 56, "bicubic", 56, 1)
    for path in [*videos.values(), city_clip, tie_clip]:
        out = prepare(VideoItem(video_id="v", path=path, labels=(), split="train"), spec)
        assert not out.reason, out.reason
        pool, positions, scores, frames = two_pass_reference(path, policies, 56)
        assert out.record["frame_indices"].tolist() == pool.tolist(), path
        assert out.record["policies"] == positions
        np.testing.assert_array_equal(out.scores, scores)
        left = int(round((frames.shape[2] - 56) / 2.0))  # torchvision's CenterCrop rounding (half to even)
        np.testing.assert_array_equal(out.frames, frames[:, :, left:left + 56], err_msg=path)
        assert out.record["source"]["decoder"] == "pyav"
    # the MPEG-2 program stream's header says 25 frames for 40: its uniform picks took a second pass
    assert second == ([videos[".mpg"]] if "uniform" in policies else [])


def test_ties_go_to_the_earlier_frame_while_streaming(tie_clip):
    got = {}

    def pick(n, scores, stamps):
        got["scores"] = scores
        return keyframe_indices(scores, 5)

    v = decode_video(tie_clip, pick, short_side=48, small_size=(64, 48), keep_best=5)
    assert len(set(got["scores"][1:20].tolist())) == 1 and got["scores"][1] > 0  # exact ties
    assert v.indices.tolist() == [1, 2, 3, 4, 5] and not v.second_pass
    static = decode_video(tie_clip, lambda n, s, t: keyframe_indices(s[20:], 3) + 20, 48, (64, 48), keep_best=3)
    assert static.second_pass  # nothing changed after frame 20: the uniform fill needs frames not kept
    np.testing.assert_array_equal(static.frames, pyav_frames(tie_clip)[static.indices])


@pytest.mark.slow
def test_luv_full_scores_at_the_source_size(city_clip):
    got = {}

    def pick(n, scores, stamps):
        got["scores"] = scores
        return keyframe_indices(scores, 1)

    v = decode_video(city_clip, pick, short_side=64, small_size="full", keep_best=1)
    assert v.indices.tolist() == [116]
    import av

    with av.open(city_clip) as c:  # full size, in order, swscale's default chroma upsampling
        ref = luv_scores(np.stack([f.to_ndarray(format="rgb24") for i, f in zip(range(120), c.decode(video=0))][110:]))
    np.testing.assert_array_equal(got["scores"][111:120], ref[1:])
    with pytest.raises(ValueError, match="--luv-size full"):
        decode_video(city_clip, pick, 64, "full", decoder="decord")


def test_wrong_seeks_are_caught_and_handed_to_pyav(videos, monkeypatch):
    """A decoder whose random access lands 12 frames late (decord's shift on the real MPEG-2 clip) is
    caught by the seek-vs-sequential check when key frames are scored; PyAV's frames come back."""
    import decord

    real = decord.VideoReader.get_batch

    def late(self, idx):
        idx = list(idx)
        return real(self, idx if idx == list(range(len(self))) else [(i + 12) % len(self) for i in idx])

    monkeypatch.setattr(decord.VideoReader, "get_batch", late)
    v = decode_video(videos[".mp4"], lambda n, s, t: keyframe_indices(s, 4), VIDEO_SIZE[1], (64, 48), decoder="decord")
    assert v.decoder == "pyav" and "seeks disagree" in v.note
    np.testing.assert_array_equal(v.frames, pyav_frames(videos[".mp4"])[v.indices])
