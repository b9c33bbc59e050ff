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
    if decoder == "decord" and ext == ".mpg":
        pytest.skip("decord's seeks land on wrong frames in MPEG program streams; auto avoids it")
    ref = pyav_frames(videos[ext])
    v = decode_video(videos[ext], some, short_side=VIDEO_SIZE[1], decoder=decoder)
    assert v.decoder == (decoder if decoder in ("pyav", "torchcodec") and ext != ".mpg" or decoder == "decord"
                         else v.decoder)
    assert v.num_frames == len(ref) == 40
    assert v.frames.shape == (5, VIDEO_SIZE[1], VIDEO_SIZE[0], 3)
    np.testing.assert_array_equal(v.frames, ref[v.indices])
    assert v.fps == pytest.approx(25.0)
    np.testing.assert_allclose(v.timestamps, v.indices / 25.0, atol=1e-3)


def test_mpeg_program_stream_goes_to_pyav(videos):
    v = decode_video(videos[".mpg"], some, short_side=VIDEO_SIZE[1])
    assert v.decoder == "pyav" and "seek index" in v.note


def test_real_clip_against_sequential_decoding(city_clip):
    """decord shifts this MPEG-2 clip by 12 frames; auto must return PyAV's frames."""
    ref = pyav_frames(city_clip, 224 * 720 // 405, 224)
    v = decode_video(city_clip, lambda n, s, t: uniform_indices(n, 8), short_side=224)
    assert (v.num_frames, v.width, v.height) == (190, 720, 405)
    assert v.fps == pytest.approx(25.0)
    assert v.frames.shape == (8, 224, 398, 3)
    np.testing.assert_array_equal(v.frames, ref[v.indices])
    np.testing.assert_allclose(v.timestamps, v.indices / 25.0, atol=1e-3)


def test_real_clip_keyframe_finds_the_hard_cut(city_clip):
    picked = {}

    def pick(n, small, stamps):
        picked["scores"] = luv_scores(small)
        return keyframe_indices(picked["scores"], 1)

    v = decode_video(city_clip, pick, short_side=64, small_size=(64, 48))
    assert v.indices.tolist() == [116]
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

    def pick(n, small, stamps):
        got.setdefault("scores", []).append(luv_scores(small))
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
    with pytest.raises(ValueError, match="--decoder"):
        decode_video(os.devnull, every, 56, decoder="opencv")
