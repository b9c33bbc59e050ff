"""What FFmpeg shows a person: display rotation, the default stream, the player's clock and the
random-access decoders' cross-checks, on generated files and on torchcodec's shared cases.

The reference is always FFmpeg itself: the ``ffmpeg`` command line's rgb24 output (``-vf
format=rgb24``, autorotation on), torchcodec's reference ``.pt`` frames (made by ``ffmpeg -vf
"select=eq(n\\,N),format=rgb24"``) and their ffprobe ``all_frames_info.json`` timestamps.
"""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from featcache.spec.pts import decode_pts
from featcache.video.decode import DecodeError, Orientation, decode_video, orientation

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "media" / "torchcodec"
FFMPEG = shutil.which("ffmpeg")
DECODERS = ["auto"] + [d for d in ("decord", "torchcodec") if importlib.util.find_spec(d)]
every = lambda n, s, t: np.arange(n)  # noqa: E731


def _shared(name: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"torchcodec's shared test media not found at {SHARED} (CI has it at ../shared)")
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{name} is not in {SHARED}")
    return path


def _ffmpeg_rgb(path, count: int, vf: str = "format=rgb24") -> np.ndarray:
    """The first ``count`` frames as the ffmpeg command line shows them, (count, H, W, 3)."""
    probe = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-vf", vf, "-frames:v",
                            str(count), "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(probe, np.uint8).reshape(count, -1, 3)


# ---------------------------------------------------------------- the display matrix, ported
def display_rotation_set(angle: float) -> list[int]:
    """libavutil/display.c av_display_rotation_set (FFmpeg 5.1, L50-L64), re-typed: the 16.16
    matrix of a counterclockwise rotation by ``angle`` degrees."""
    radians = -angle * math.pi / 180.0
    c, s = math.cos(radians), math.sin(radians)
    conv = lambda x: int(x * (1 << 16))  # noqa: E731  CONV_DB: (int32_t) ((x) * (1 << 16)), truncating
    return [conv(c), conv(-s), 0, conv(s), conv(c), 0, 0, 0, 1 << 30]


@pytest.mark.parametrize("angle, rotation, transform", [
    (0, 0, ""), (90, 270, "clock"), (-90, 90, "cclock"), (180, 180, "hflip,vflip"), (270, 90, "cclock"),
])
def test_orientation_follows_ffmpeg_autorotate(angle, rotation, transform):
    """fftools/ffmpeg_filter.c (5.1) configure_input_video_filter: theta = -rotation_get; 90 ->
    transpose=clock, 180 -> hflip+vflip, 270 -> transpose=cclock. ``rotation`` is what
    av_display_rotation_get reads back (counterclockwise), which for a matrix made by
    av_display_rotation_set(angle) is -angle."""
    o = orientation(display_rotation_set(angle))
    assert (o.rotation, o.transform) == (rotation, transform)


def test_orientation_flips_and_odd_angles():
    hflip = display_rotation_set(0)
    hflip[0], hflip[3] = -hflip[0], -hflip[3]  # av_display_matrix_flip(m, 1, 0): column 0 negated
    assert orientation(hflip) == Orientation(180, "hflip")  # FFmpeg: theta 180, matrix[0] < 0 -> hflip only
    vflip = display_rotation_set(0)
    vflip[1], vflip[4] = -vflip[1], -vflip[4]  # av_display_matrix_flip(m, 0, 1): column 1 negated
    assert orientation(vflip) == Orientation(0, "vflip")
    odd = orientation(display_rotation_set(30))
    assert odd.transform == "" and "not a multiple of 90" in odd.note
    x = np.arange(2 * 3 * 3).reshape(1, 2, 3, 3).astype(np.uint8)
    assert Orientation(90, "cclock").apply(x).shape == (1, 3, 2, 3)
    assert np.array_equal(Orientation(90, "cclock").apply(x)[0], np.rot90(x[0]))
    assert np.array_equal(Orientation(0, "cclock_flip").apply(x)[0], x[0].transpose(1, 0, 2))


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """A 96x64 H.264 clip remuxed with rotate=90/180/270 metadata (FFmpeg writes a display matrix)."""
    if FFMPEG is None:
        pytest.skip("the ffmpeg command line is not installed (.ci/install installs Debian's ffmpeg)")
    root = tmp_path_factory.mktemp("rotated")
    base = root / "base.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=10:duration=1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "0", str(base)], check=True)
    out = {}
    for angle in (90, 180, 270):
        out[angle] = root / f"r{angle}.mp4"
        subprocess.run([FFMPEG, "-v", "error", "-i", str(base), "-c", "copy", "-metadata:s:v", f"rotate={angle}",
                        str(out[angle])], check=True)
    return out


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("angle", [90, 180, 270])
def test_rotated_frames_equal_ffmpegs(rotated, angle, decoder):
    v = decode_video(str(rotated[angle]), every, 0, decoder=decoder)
    ref = _ffmpeg_rgb(rotated[angle], v.num_frames)
    assert v.frames.reshape(v.num_frames, -1, 3).shape == ref.shape
    assert np.array_equal(v.frames.reshape(ref.shape), ref)
    assert v.frames.shape[1:3] == ((96, 64) if angle in (90, 270) else (64, 96))  # (H, W) as shown
    fields = v.source_fields()
    assert (v.width, v.height) == (96, 64)  # the coded size stays in the record
    assert (fields["display_width"], fields["display_height"]) == (v.frames.shape[2], v.frames.shape[1])


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotation_comes_before_resize(rotated, decoder):
    """The short side is the displayed one: a portrait video at short side 32 is 32 wide."""
    v = decode_video(str(rotated[90]), lambda n, s, t: np.array([0, 5]), 32, decoder=decoder)
    assert v.frames.shape[1:3] == (48, 32)
    full = decode_video(str(rotated[90]), lambda n, s, t: np.array([0, 5]), 0)
    small = full.frames[:, ::2, ::2].astype(int)  # 2x down by point sampling: close, not equal
    assert np.abs(v.frames.astype(int) - small).mean() < 20


# ---------------------------------------------------------------- torchcodec's shared cases
SHARED_VIDEOS = sorted(p.name for p in SHARED.glob("*") if p.suffix in (".mp4", ".mkv", ".webm", ".avi")) \
    if SHARED.is_dir() else ["(shared media absent)"]
TEN_BIT = {"h264_10bits.mp4", "h265_10bits.mp4"}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", SHARED_VIDEOS)
def test_shared_case_frames_and_times(name, decoder):
    """Every shared video, every decoder: the reference .pt frames exactly, every frame's pts as
    ffprobe gives it; decord's AV1 failure is a one-line reason."""
    path = _shared(name)
    try:
        v = decode_video(str(path), every, 0, decoder=decoder)
    except DecodeError as exc:
        assert decoder == "decord" and path.suffix == ".mkv" and "decord cannot decode" in str(exc)
        return
    import torch

    same = np.array_equal  # every decoder, every case: FFmpeg's conversion byte for byte
    refs = sorted(SHARED.glob(f"{name}.stream{v.stream}.frame*.pt"))
    for ref in refs:
        i = int(ref.name[-9:-3])
        assert same(v.frames[i], torch.load(ref, weights_only=True).numpy()), (name, i)
    info = SHARED / f"{name}.stream{v.stream}.all_frames_info.json"
    if info.exists():
        pts = np.array([float(f["pts_time"]) for f in json.loads(info.read_text())])
        assert v.num_frames == len(pts)
        np.testing.assert_allclose(v.pts, pts, atol=1e-5)
        # the stream clock the slowfast protocols replay: every frame's pts in the time base, as ffprobe's
        clock_pts = decode_pts(v.clock["pts"])
        np.testing.assert_allclose([float(p * Fraction(v.clock["time_base"])) for p in clock_pts], pts, atol=1e-5)
    if FFMPEG and name not in TEN_BIT:  # the first frames as the ffmpeg command line shows them
        ref = _ffmpeg_rgb(path, 2)
        assert same(v.frames[:2].reshape(ref.shape), ref)


def test_default_stream_is_ffmpegs_and_stream_flag_picks_another():
    path = str(_shared("nasa_13013.mp4"))
    v = decode_video(path, every, 0)
    assert (v.stream, v.num_frames, v.frames.shape[1:3]) == (3, 390, (270, 480))
    s0 = decode_video(path, every, 0, stream=0)
    assert (s0.stream, s0.num_frames, s0.frames.shape[1:3], s0.fps) == (0, 325, (180, 320), 25.0)
    with pytest.raises(DecodeError, match="no video stream 1"):
        decode_video(path, every, 0, stream=1)


@pytest.mark.skipif("decord" not in DECODERS, reason="decord is not installed")
def test_decord_never_mixes_streams_or_miscounts():
    nasa = decode_video(str(_shared("nasa_13013.mp4")), every, 0, decoder="decord", stream=0)
    assert (nasa.decoder, nasa.num_frames) == ("pyav", 325) and "2 video streams" in nasa.note
    discard = decode_video(str(_shared("discard_first_keyframe.mp4")), every, 0, decoder="decord")
    assert (discard.decoder, discard.num_frames) == ("pyav", 25) and "counts 30" in discard.note
    hevc = decode_video(str(_shared("h265_video.mp4")), every, 0, decoder="decord")
    assert hevc.decoder == "pyav" and "B-frames" in hevc.note


def test_non_zero_start_keeps_the_players_clock():
    name = "test_non_zero_start.mp4"
    v = decode_video(str(_shared(name)), lambda n, s, t: np.array([0, 5]), 0)
    pts = [float(f["pts_time"]) for f in json.loads((SHARED / f"{name}.stream0.all_frames_info.json").read_text())]
    assert v.start == pytest.approx(pts[0], abs=1e-5) and v.timestamps[0] == 0.0
    np.testing.assert_allclose(v.pts, [pts[0], pts[5]], atol=1e-5)
    assert v.source_fields()["start_seconds"] == pytest.approx(8.333, abs=1e-3)


@pytest.mark.parametrize("name", sorted(TEN_BIT))
def test_ten_bit_conversion_difference_is_bounded(name):
    """10-bit sources are converted through FFmpeg's scale filter, as the command line does:
    exact at the coded size (PyAV's bare swscale ``reformat`` was off by mean 2.3/255, max 99);
    resized, within a scaler's rounding of the command line's ``scale=W:H:flags=bicubic``."""
    if FFMPEG is None:
        pytest.skip("the ffmpeg command line is not installed")
    path = _shared(name)
    for decoder in DECODERS:
        v = decode_video(str(path), lambda n, s, t: np.arange(3), 0, decoder=decoder)
        assert np.array_equal(v.frames, _ffmpeg_rgb(path, 3).reshape(v.frames.shape)), decoder
    v = decode_video(str(path), lambda n, s, t: np.arange(3), 64, interpolation="bicubic")
    ref = _ffmpeg_rgb(path, 3, "scale=64:64:flags=bicubic,format=rgb24").reshape(v.frames.shape)
    assert np.abs(v.frames.astype(int) - ref).mean() < 1.0


# ---------------------------------------------------------------- cut and damaged files (issue 34 item 4)
@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """An 8 s MPEG-4 AVI cut to half its bytes, and an H.264 MP4 with 20 KB zeroed in the middle."""
    if FFMPEG is None:
        pytest.skip("the ffmpeg command line is not installed")
    root = tmp_path_factory.mktemp("damaged")
    src = "testsrc2=size=320x240:rate=25:duration=8"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", src, "-c:v", "mpeg4", "-q:v", "5",
                    str(root / "full.avi")], check=True)
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", src, "-c:v", "libx264", "-g", "25", "-pix_fmt",
                    "yuv420p", str(root / "full.mp4")], check=True)
    data = (root / "full.avi").read_bytes()
    (root / "half.avi").write_bytes(data[: len(data) // 2])
    data = bytearray((root / "full.mp4").read_bytes())
    data[len(data) // 2: len(data) // 2 + 20000] = bytes(20000)
    (root / "zeroed.mp4").write_bytes(bytes(data))
    return root


def test_half_an_avi_is_noticed(damaged):
    """The AVI header promises 200 frames; half the bytes decode to about 100: truncated."""
    v = decode_video(str(damaged / "half.avi"), lambda n, s, t: np.arange(0, n, 10), 56)
    assert v.expected_frames == 200 and v.num_frames < 120 and v.looks_truncated
    whole = decode_video(str(damaged / "full.avi"), lambda n, s, t: np.arange(0, n, 10), 56)
    assert (whole.num_frames, whole.expected_frames, whole.looks_truncated) == (200, 200, False)


def test_zeroed_bytes_are_decoded_past_as_ffmpeg_does(damaged):
    """ffprobe -count_frames counts the frames FFmpeg decodes past the damage; so does featcache."""
    path = str(damaged / "zeroed.mp4")
    out = subprocess.run([shutil.which("ffprobe") or "ffprobe", "-v", "quiet", "-count_frames", "-select_streams",
                          "v:0", "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", path],
                         capture_output=True, text=True, check=True).stdout
    v = decode_video(path, lambda n, s, t: np.arange(0, n, 10), 56)
    assert v.num_frames == int(out.strip().rstrip(",")) < 200
    assert v.damaged > 0 and "damaged packet" in v.note and v.source_fields()["damaged_packets"] == v.damaged


@pytest.mark.slow
def test_stream_flag_reaches_the_record(tmp_path):
    """``extract --stream 0`` caches stream 0 of the two-stream file and names it in the record;
    a negative index is one line, exit status 2."""
    from conftest import TINY_CLI, cli

    from featcache.cache.store import Cache

    path = _shared("nasa_13013.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path\nnasa,{path}\n")
    bad = cli("extract", manifest, "--out", tmp_path / "bad.zarr", *TINY_CLI, "--stream", "-1", code=2)
    assert "--stream -1" in bad.output
    for stream, size in ((None, (480, 270)), (0, (320, 180))):
        out = tmp_path / f"s{stream}.zarr"
        cli("extract", manifest, "--out", out, *TINY_CLI, "--frames", "uniform:2", "-q",
            *(() if stream is None else ("--stream", stream)))
        source = Cache(str(out)).video("nasa").record["source"]
        assert (source["stream"], source["width"], source["height"]) == ((3 if stream is None else 0), *size)
        assert Cache(str(out)).attrs["frames"].get("stream") == stream  # a fact of the store when given
    # resuming the default-stream store with --stream 0 would mix pictures of two streams: refused
    mixed = cli("extract", manifest, "--out", tmp_path / "sNone.zarr", *TINY_CLI, "--frames", "uniform:2", "-q",
                "--stream", "0", code=2)
    assert "frames.stream" in mixed.output


@pytest.mark.parametrize("decoder", DECODERS)
def test_generated_two_streams_with_an_offset(tmp_path, decoder):
    """Two video streams, only the first marked default, both starting at 2.5 s: the ffmpeg
    command line shows stream 0 (the default disposition outweighs the larger picture), as
    featcache does; ``--stream 1`` reads the other; pts on the player's clock."""
    if FFMPEG is None:
        pytest.skip("the ffmpeg command line is not installed")
    path = tmp_path / "two.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=2", "-f",
                    "lavfi", "-i", "testsrc=size=96x64:rate=15:duration=2", "-map", "0", "-map", "1", "-c:v",
                    "libx264", "-pix_fmt", "yuv420p", "-output_ts_offset", "2.5", str(path)], check=True)
    v = decode_video(str(path), every, 0, decoder=decoder)
    assert (v.stream, v.num_frames) == (0, 20)
    np.testing.assert_array_equal(v.frames.reshape(20, -1, 3), _ffmpeg_rgb(path, 20))
    np.testing.assert_allclose(v.pts, 2.5 + np.arange(20) / 10, atol=1e-6)
    other = decode_video(str(path), every, 0, decoder=decoder, stream=1)
    assert (other.stream, other.num_frames, other.frames.shape[1:3]) == (1, 30, (64, 96))
    np.testing.assert_allclose(other.pts, 2.5 + np.arange(30) / 15, atol=1e-6)



# ---------------------------------------------------------------- generated cases (issue 31's done-when)
GENERATED = {  # name: (ffmpeg output arguments, lavfi size, file extension)
    "hevc_bframes": (["-c:v", "libx265", "-x265-params", "bframes=3:log-level=error", "-pix_fmt", "yuv420p"],
                     "64x48", ".mp4"),
    "vp9_odd_size": (["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-b:v", "200k"], "65x47", ".webm"),  # testsrc: testsrc2 rounds sizes to even
    "vp9_10bit": (["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p10le", "-profile:v", "2", "-b:v", "200k"], "64x48",
                  ".webm"),
    "vfr": (None, "64x48", ".mkv"),  # written with PyAV below: 10 frames at 10/s, then 10 at 5/s
}


def _write_vfr(path) -> None:
    import av

    from featcache.data.synthetic import motion_clip

    frames = motion_clip("right", np.random.default_rng(0), num_frames=20, size=(64, 48))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height = 64, 48
        s.pix_fmt, s.time_base, s.options = "yuv420p", Fraction(1, 10), {"bf": "0"}
        for n, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = (n if n < 10 else 2 * n - 10), Fraction(1, 10)
            c.mux(s.encode(f))
        c.mux(s.encode())


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    if FFMPEG is None or shutil.which("ffprobe") is None:
        pytest.skip("the ffmpeg command line is not installed (.ci/install installs Debian's ffmpeg)")
    root = tmp_path_factory.mktemp("generated")
    out = {}
    for name, (args, size, ext) in GENERATED.items():
        out[name] = root / f"{name}{ext}"
        if args is None:
            _write_vfr(out[name])
            continue
        source = "testsrc" if name == "vp9_odd_size" else "testsrc2"
        subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"{source}=size={size}:rate=10:duration=2",
                        *args, str(out[name])], check=True)
    return out


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_case_frames_and_times(generated, name, decoder):
    """HEVC with B-frames, an odd-sized VP9, a 10-bit VP9 and a variable-frame-rate Matroska: every
    frame as the ffmpeg command line shows it (rgb24, every pts passed through), every pts as
    ffprobe lists it; a decoder that cannot match falls back to PyAV and says why."""
    path = generated[name]
    v = decode_video(str(path), every, 0, decoder=decoder)
    pts = np.array([float(t.strip(",")) for t in subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0",
         str(path)], capture_output=True, text=True, check=True).stdout.split()])
    assert v.num_frames == len(pts) == 20
    np.testing.assert_allclose(v.pts, pts, atol=1e-5)
    ref = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-vf", "format=rgb24", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-"], capture_output=True, check=True).stdout
    ref = np.frombuffer(ref, np.uint8).reshape(v.frames.shape)
    assert np.array_equal(v.frames, ref), (name, v.decoder, np.abs(v.frames.astype(int) - ref).max())
    if name == "vp9_odd_size":
        assert v.frames.shape[1:3] == (47, 65)
    if name == "vfr":
        np.testing.assert_allclose(np.diff(v.timestamps), [0.1] * 10 + [0.2] * 9, atol=1e-6)
    if v.decoder != {"auto": "pyav"}.get(decoder, decoder):
        assert v.note, "a fallback names its reason"
