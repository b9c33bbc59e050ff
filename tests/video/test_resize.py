"""``extract --resize pil`` (featcache/video/resize.py): the frames torchvision's transforms give.

The reference is torchvision itself on PIL images of frames decoded independently, in order, by
PyAV (``frame.to_image()``): ``transforms.Compose([Resize(side), CenterCrop(crop)])``, the resize
and crop of the ``ImageClassification`` preset (torchvision 0.29.1 ``transforms/_presets.py``
L58-60) and of timm's eval transform (``data/transforms_factory.py`` L350-360).
"""
from __future__ import annotations

import numpy as np
import pytest

from featcache.data.manifest import VideoItem
from featcache.data.synthetic import texture_clip, write_video
from featcache.spec.policy import parse_policies
from featcache.video.prepare import DecodeSpec, prepare
from featcache.video.resize import pil_resize

SIZE = (100, 72)  # (w, h): short side 64 -> 88x64, a 56 crop margin of 32 (left 16); 56 -> 77x56, margin 21 (left 10)


@pytest.fixture(scope="module")
def texture_video(tmp_path_factory):
    """12 frames of a scrolling colour texture (sharp block edges: resizers differ there)."""
    path = str(tmp_path_factory.mktemp("pil") / "texture.mp4")
    write_video(path, texture_clip("left", np.random.default_rng(3), num_frames=12, size=SIZE))
    return path


def pyav_images(path):
    """Every frame as a PIL image, decoded in order by PyAV (the independent path)."""
    import av

    with av.open(path) as c:
        return [f.to_image() for f in c.decode(video=0)]


def torchvision_frames(images, side: int, crop: int, interpolation: str, crop_left=None) -> np.ndarray:
    """torchvision's Resize(side) + CenterCrop(crop) on PIL images (``crop_left``: a crop at that
    column instead, centred vertically, the --crops 3 side views)."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as F

    mode = T.InterpolationMode(interpolation)
    if crop_left is None:
        tf = T.Compose([T.Resize(side, interpolation=mode), T.CenterCrop(crop)])
        return np.stack([np.asarray(tf(im)) for im in images])
    out = []
    for im in images:
        r = F.resize(im, [side], interpolation=mode)
        top = int(round((r.height - crop) / 2.0))
        out.append(np.asarray(F.crop(r, top, crop_left(r.width), crop, crop)))
    return np.stack(out)


def spec(resizer: str, interpolation: str = "bilinear", short_side: int = 64, crops: int = 1,
         decoder: str = "auto", policies: str = "uniform:4,keyframes:2", img_size: int = 56) -> DecodeSpec:
    return DecodeSpec(parse_policies(policies), "repeat", (64, 48), decoder, short_side, interpolation, img_size,
                      crops, resizer=resizer)


@pytest.mark.parametrize("interpolation,short_side,decoder", [("bilinear", 64, "auto"), ("bicubic", 56, "auto"),
                                                              ("bilinear", 64, "decord")])
def test_pil_frames_equal_torchvision_resize_and_center_crop_of_pyav_images(texture_video, interpolation, short_side,
                                                                             decoder):
    """Byte for byte, for the torchvision preset's bilinear and timm's bicubic, through the
    in-order decoder and decord's random access; key frames still scored (on swscale's small frames)."""
    if decoder == "decord":
        pytest.importorskip("decord")
    out = prepare(VideoItem("v", texture_video, (), "train"), spec("pil", interpolation, short_side, decoder=decoder))
    assert not out.reason, out.reason
    images = pyav_images(texture_video)
    picked = [images[i] for i in out.record["frame_indices"]]
    np.testing.assert_array_equal(out.frames, torchvision_frames(picked, short_side, 56, interpolation))
    # LUV scoring is the decoder's own pass at --luv-size: the same scores as with swscale frames
    ref = prepare(VideoItem("v", texture_video, (), "train"), spec("swscale", interpolation, short_side, decoder=decoder))
    np.testing.assert_array_equal(out.scores, ref.scores)
    assert out.record["frame_indices"].tolist() == ref.record["frame_indices"].tolist()


def test_pil_with_three_crops_crops_torchvision_resized_frames(texture_video):
    """--crops 3: first (left), centre and last (right) crops of the PIL-resized frames."""
    out = prepare(VideoItem("v", texture_video, (), "train"), spec("pil", crops=3))
    assert not out.reason, out.reason
    picked = [pyav_images(texture_video)[i] for i in out.record["frame_indices"]]
    k = len(picked)
    assert out.frames.shape == (3 * k, 56, 56, 3)
    np.testing.assert_array_equal(out.frames[:k], torchvision_frames(picked, 64, 56, "bilinear", lambda w: 0))
    np.testing.assert_array_equal(out.frames[k:2 * k], torchvision_frames(picked, 64, 56, "bilinear"))
    np.testing.assert_array_equal(out.frames[2 * k:], torchvision_frames(picked, 64, 56, "bilinear",
                                                                         lambda w: w - 56))


def test_pil_resize_sizes_follow_torchvision_and_unknown_filters_are_named():
    """Portrait and landscape long sides as torchvision's _compute_resized_output_size (int of
    size * long / short); a frame already at the size comes back as it is."""
    import torchvision.transforms.functional as F
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w in ((72, 100), (101, 67), (64, 90)):
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        got = pil_resize(frames, 64, "bilinear")
        ref = np.stack([np.asarray(F.resize(Image.fromarray(f), [64])) for f in frames])
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="interpolation 'area' has no PIL filter"):
        pil_resize(frames, 32, "area")


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_swscale_frames_differ_from_torchvision_frames_measurably(city_clip, tmp_path):
    """Why --resize pil exists: swscale's bilinear scaling is not PIL's antialiased one. Measured
    (not timed) on the real MPEG-2 clip (720x405 -> short side 256, crop 224) and a 320x240
    generated texture; printed beside the change between neighbouring frames for scale."""
    texture = str(tmp_path / "t320.mp4")
    write_video(texture, texture_clip("left", np.random.default_rng(5), num_frames=16, size=(320, 240)))
    for path, stride in ((city_clip, 5), (texture, 1)):
        item = VideoItem("v", path, (), "train")
        sw = prepare(item, spec("swscale", short_side=256, policies=f"stride:{stride}", img_size=224))
        pil = prepare(item, spec("pil", short_side=256, policies=f"stride:{stride}", img_size=224))
        assert not sw.reason and not pil.reason
        between = relative_l2(sw.frames, pil.frames)
        neighbours = np.median([relative_l2(pil.frames[i + 1], pil.frames[i]) for i in range(len(pil.frames) - 1)])
        print(f"{path}: relative L2 swscale vs PIL {between:.2e}; PIL frames {stride} apart (median) {neighbours:.2e}")
        assert between > 1e-3, between
