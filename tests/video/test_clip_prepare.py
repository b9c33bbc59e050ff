"""Video encoders' clip preparation keeps memory bounded by frames at crop size, not by the video
at source size (issue 34 item 5: a 30 s 720p clip with windows:16/16 asked for 9.9 GB at once)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from featcache.data.manifest import VideoItem
from featcache.video.clip_prepare import crop_resized
from featcache.video.prepare import DecodeSpec, prepare

CLIP = {"policy": "windows:16/16@fps:25", "frames": 16, "rate": 25.0, "resize_size": [128, 171],
        "crop_size": [112, 112], "interpolation": "bilinear", "resizer": "torchvision", "source": None}

PEAK = """
import json, resource, sys
import numpy as np
from featcache.data.manifest import VideoItem
from featcache.video.prepare import DecodeSpec, prepare
from featcache.video.clip_prepare import crop_resized
crop_resized(np.zeros((1, 720, 1280, 3), np.uint8), [128, 171], [112, 112], "bilinear")  # torch's own buffers
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
spec = DecodeSpec((), "repeat", None, sys.argv[2], 0, "bilinear", 112, 1, json.loads(sys.argv[3]))
out = prepare(VideoItem("v", sys.argv[1], (), ""), spec)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": out.reason, "shape": list(out.frames.shape), "peak_mb": (after - before) / 1024}))
"""


@pytest.fixture(scope="module")
def long_720p(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command line is not installed")
    path = tmp_path_factory.mktemp("long") / "long720.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=8",
                    "-c:v", "mpeg4", "-q:v", "8", str(path)], check=True)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["auto"])
def test_clip_memory_is_bounded_by_crops_not_the_video(long_720p, decoder):
    """200 frames of 720p are 553 MB as uint8 and 2.2 GB as float32: preparing every window's
    frames must stay far below either (measured: peak RSS growth of the preparing process; 2026-12-04
    63 MB, 2890 MB before frames were resized as decoded). decord is left out: its own buffers
    grow with the video until its reader is released (see the decord tests below)."""
    out = subprocess.run([sys.executable, "-c", PEAK, long_720p, decoder, json.dumps(CLIP)],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["reason"] == "" and got["shape"] == [12, 16, 112, 112, 3]
    assert got["peak_mb"] < 150, got  # one source frame (2.8 MB) per step, 192 crops (7 MB)


def test_frames_resized_one_by_one_equal_the_whole_video_resized(long_720p):
    """The per-frame resize of the bounded path is the one-call resize of before, bit for bit."""
    spec = DecodeSpec((), "repeat", None, "auto", 0, "bilinear", 112, 1, {**CLIP, "policy": "clips:2"})
    out = prepare(VideoItem("v", long_720p, (), ""), spec)
    from featcache.video.decode import decode_video

    idx = np.asarray(out.record["clips"]["frame_indices"])  # (K, T)
    full = decode_video(long_720p, lambda n, s, t: np.unique(idx), 0, interpolation="bilinear")
    whole = crop_resized(full.frames, CLIP["resize_size"], CLIP["crop_size"], "bilinear")
    np.testing.assert_array_equal(out.frames, whole[np.searchsorted(full.indices, idx)])


GROWTH = """
import json, resource, sys
import numpy as np
from featcache.data.manifest import VideoItem
from featcache.video.prepare import DecodeSpec, prepare
from featcache.video.clip_prepare import crop_resized, processed
clip = json.loads(sys.argv[4])
warm = np.zeros((1, 720, 1280, 3), np.uint8)
processed(warm, clip["source"]) if clip["resizer"] == "hf" else crop_resized(warm, [128, 171], [112, 112], "bilinear")
spec = DecodeSpec((), "repeat", None, sys.argv[3], 0, "bilinear", 112, 1, clip)
peaks = []
for path in sys.argv[1:3]:
    out = prepare(VideoItem("v", path, (), ""), spec)
    assert out.reason == "" and out.record["source"]["decoder"] == sys.argv[3].replace("auto", "pyav"), out.reason
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({"peaks_mb": peaks}))
"""


def _peaks(paths, decoder: str, clip: dict) -> list[float]:
    """Peak RSS (MB) of one process after preparing each video in turn."""
    out = subprocess.run([sys.executable, "-c", GROWTH, *paths, decoder, json.dumps(clip)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peaks_mb"]


@pytest.fixture(scope="module")
def four_and_twelve(tmp_path_factory):
    """4 s and 12 s of 720p: 100 and 300 frames."""
    root = tmp_path_factory.mktemp("lengths")
    return _encode(root / "a.mp4", 4), _encode(root / "b.mp4", 12)


def _encode(path, seconds, size="1280x720", gop=None):
    if shutil.which("ffmpeg") is None:
        pytest.skip("the ffmpeg command line is not installed")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
                    "-c:v", "mpeg4", "-q:v", "8", *(["-g", str(gop)] if gop else []), str(path)], check=True)
    return str(path)


@pytest.mark.slow
def test_decord_memory_does_not_grow_with_the_video(four_and_twelve):
    """decord's VideoReader keeps memory for as long as it lives, growing with what it decoded:
    4 s then 12 s of 720p in one process (``windows:16/16``, every frame) must peak about alike.
    Measured 2026-12-04 with 8 s / 16 s: 552 / 928 MB over the baseline with one reader per video,
    463 / 466 MB with a fresh reader every ``RELEASE_CHUNKS`` chunks; this test's pair grew 290 MB
    with one reader."""
    first, second = _peaks(four_and_twelve, "decord", CLIP)
    assert second - first < 150, (first, second)  # one reader for all 300 frames: about 1.9 MB a frame more


def test_decord_fresh_readers_return_the_same_frames(tmp_path, monkeypatch):
    """Reading through a fresh reader every few chunks (each seeking into the middle of a
    100-frame GOP) returns decord's frames bit for bit as one reader for the whole video did."""
    pytest.importorskip("decord")
    from featcache.video import decode

    path = _encode(tmp_path / "gop.mp4", 6, size="160x120", gop=100)
    every = lambda n, s, t: np.arange(n)  # noqa: E731 -- every frame: one reader decodes straight through
    fresh = decode.decode_video(path, every, 0, decoder="decord", interpolation="bilinear")
    monkeypatch.setattr(decode, "RELEASE_CHUNKS", 10**9)
    one = decode.decode_video(path, every, 0, decoder="decord", interpolation="bilinear")
    assert fresh.decoder == one.decoder == "decord" and len(fresh.indices) == 150
    np.testing.assert_array_equal(fresh.frames, one.frames)
    np.testing.assert_array_equal(fresh.timestamps, one.timestamps)


def _tiny_hf(root) -> str:
    """A tiny random VideoMAE saved with VideoMAE-base's video processor (shortest edge 224, crop 224)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(image_size=224, patch_size=32, num_frames=16, tubelet_size=8, hidden_size=16,
                                         num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    folder = str(root / "tiny-videomae")
    transformers.VideoMAEModel(config).save_pretrained(folder)
    transformers.VideoMAEVideoProcessor().save_pretrained(folder)
    return folder


def _hf_clip(folder: str) -> dict:
    return {**CLIP, "resize_size": [224], "crop_size": [224, 224], "resizer": "hf", "source": folder}


def test_hf_processor_frame_by_frame_equals_the_whole_video_call(long_720p, tmp_path):
    """The hf processor run on each frame as it is decoded gives the frames, and so the tokens, of
    one processor call on the whole video's frames (what ran before), bit for bit."""
    import torch
    import transformers

    from featcache.video.clip_prepare import processed
    from featcache.video.decode import decode_video

    folder = _tiny_hf(tmp_path)
    spec = DecodeSpec((), "repeat", None, "auto", 0, "bilinear", 224, 1, {**_hf_clip(folder), "policy": "clips:2"})
    out = prepare(VideoItem("v", long_720p, (), ""), spec)
    idx = np.asarray(out.record["clips"]["frame_indices"])  # (K, T)
    full = decode_video(long_720p, lambda n, s, t: np.unique(idx), 0, interpolation="bilinear")
    whole = processed(full.frames, folder)[np.searchsorted(full.indices, idx)]  # (K, T, 224, 224, 3)
    np.testing.assert_array_equal(out.frames, whole)
    model = transformers.VideoMAEModel.from_pretrained(folder).eval()

    def tokens(clips):
        x = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 255  # (K, T, 3, S, S)
        with torch.no_grad():
            return model(pixel_values=x).last_hidden_state.numpy()

    np.testing.assert_array_equal(tokens(out.frames), tokens(whole))


@pytest.mark.slow
def test_hf_memory_does_not_grow_with_the_video(four_and_twelve, tmp_path):
    """``hf:`` with ``windows:16/16``: 4 s then 12 s of 720p in one process. Measured 2026-12-04
    over the baseline, 8 s / 16 s: 1425 / 3031 MB with the whole video's frames in one processor
    call, 198 / 321 MB frame by frame (the rest is the clips kept at 224x224)."""
    first, second = _peaks(four_and_twelve, "auto", _hf_clip(_tiny_hf(tmp_path)))
    assert second - first < 300, (first, second)  # 200 frames more: 30 MB each copy of the crops
