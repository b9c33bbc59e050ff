"""extract --train-views: recorded boxes and flips, their tokens, the versioned index table."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from conftest import TINY_CLI, pyav_frames, tiny_encoder_config, write_manifest

from featcache.cache import index, schema
from featcache.cache.store import open_cache
from featcache.data.synthetic import motion_clip, write_video
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.video.views import RECIPES, draw_views, video_seed

SIZE = (96, 72)  # decoded at the tiny model's short side 56: 74 x 56


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(3)
    rows = []
    for i, label in enumerate(["left", "right", "up"]):
        path = str(root / f"v{i}.mp4")
        write_video(path, motion_clip(label, rng, num_frames=20, size=SIZE))
        rows.append({"video_id": f"v{i}", "path": path, "label": label, "split": "train"})
    return root, write_manifest(root / "m.csv", rows)


def _extract(root, manifest, name, **kw):
    cfg = ExtractConfig(manifest=manifest, out=str(root / name), frames="uniform:4", encoder=tiny_encoder_config(),
                        batch_size=8, **kw)
    s = run_extract(cfg, show_progress=False)
    assert s.done == 3 and not s.failed, s.failed
    return open_cache(str(root / name)), s


def _cos(a, b):
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.slow
def test_cached_views_match_the_model_on_recropped_frames(clips):
    """Done-when: the source frames re-cropped with the recorded boxes and flips (PIL here; the
    pipeline crops with torch), through the frozen tiny model, give the cached view tokens."""
    from PIL import Image

    from featcache.extract.encoder import FrozenEncoder

    root, manifest = clips
    cache, summary = _extract(root, manifest, "v.zarr", train_views=3, view_aug="torchvision", dtype="float16")
    assert summary.frames == 3 * 4 * (1 + 3)  # every frame's centre crop and its 3 views went through the model
    assert cache.attrs["views"]["count"] == 3 and cache.attrs["views"]["recipe"] == "torchvision"
    enc = FrozenEncoder(tiny_encoder_config())
    import torch

    for vid in ("v0", "v2"):
        entry = cache.video(vid)
        record = entry.record
        w, h = record["views"][0]["frame_size"]
        assert (w, h) == (74, 56)  # the frame as decoded for the model (short side 56)
        frames = pyav_frames(record["path"], w, h)[record["frame_indices"]]  # (T, h, w, 3) independent decode
        views = entry.views
        assert views.shape == (3, 4, 1, entry.tokens.shape[2], entry.tokens.shape[3]) and views.dtype == np.float16
        for k, view in enumerate(record["views"]):
            left, top, bw, bh = view["box"]
            crops = []
            for f in frames:
                img = Image.fromarray(f).crop((left, top, left + bw, top + bh)).resize((56, 56), Image.BILINEAR)
                if view["flip"]:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                crops.append(np.asarray(img))
            want = enc(torch.from_numpy(np.stack(crops))).numpy()  # (T, L, N, C)
            assert _cos(views[k], want).min() >= 0.999, (vid, k, view)
            # the source box is the decoded box scaled to the source's display size
            sx, sy = SIZE[0] / w, SIZE[1] / h
            assert view["source_box"] == pytest.approx([left * sx, top * sy, (left + bw) * sx, (top + bh) * sy], abs=1e-3)
        # the centre tokens are those of a store without views (bit for bit)
    plain, _ = _extract(root, manifest, "plain.zarr")
    assert np.array_equal(plain.video("v0").tokens, cache.video("v0").tokens)
    assert "views" not in plain.attrs and plain.video("v0").views is None


def test_boxes_are_torchvisions_get_params_and_flip():
    """The torchvision recipe draws exactly what torchvision's own RandomResizedCrop.get_params
    and RandomHorizontalFlip draw from the global generator seeded with the video's seed
    (pytorch/vision torchvision/transforms/transforms.py RandomResizedCrop.get_params)."""
    import torch
    from torchvision.transforms import RandomResizedCrop

    for vid, (w, h) in [("a", (74, 56)), ("b/c d", (320, 240)), ("x", (56, 100))]:
        got = draw_views("torchvision", 5, 7, vid, w, h)
        torch.manual_seed(video_seed(7, vid))
        img = torch.zeros(3, h, w)
        for view in got:
            i, j, bh, bw = RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
            flip = bool(torch.rand(1) < 0.5)
            assert view["box"] == [j, i, bw, bh] and view["flip"] == flip
        assert draw_views("torchvision", 5, 7, vid, w, h) == got  # deterministic per seed and id
        assert draw_views("torchvision", 5, 8, vid, w, h) != got


def _jepa_get_param_spatial_crop(uniform, randint, scale, ratio, height, width):
    """facebookresearch/jepa src/datasets/utils/video/transforms.py _get_param_spatial_crop
    (lines 503-542, log_scale=True, switch_hw=False), re-typed with its draws passed in."""
    for _ in range(10):
        area = height * width
        target_area = uniform(*scale) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect_ratio = math.exp(uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = randint(0, height - h)
            j = randint(0, width - w)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def test_jepa_recipe_is_jepas_crop_with_our_draws():
    """The jepa recipe: jepa's sampling (ranges of evals/video_classification_frozen/eval.py
    lines 463-465: no flip, ratio (0.75, 4/3), scale (0.08, 1.0)) fed the same uniform draws."""
    import torch

    r = RECIPES["jepa"]
    assert (r.scale, r.ratio, r.flip) == ((0.08, 1.0), (0.75, 4 / 3), 0.0)
    for vid, (w, h) in [("a", (74, 56)), ("b", (320, 240))]:
        got = draw_views("jepa", 4, 0, vid, w, h)
        gen = torch.Generator().manual_seed(video_seed(0, vid))

        def uniform(lo, hi, gen=gen):
            return torch.empty(1).uniform_(lo, hi, generator=gen).item()

        def randint(lo, hi, gen=gen):  # inclusive, as python's random.randint
            return torch.randint(lo, hi + 1, size=(1,), generator=gen).item()

        for view in got:
            i, j, bh, bw = _jepa_get_param_spatial_crop(uniform, randint, r.scale, r.ratio, h, w)
            assert view["box"] == [j, i, bw, bh] and view["flip"] is False


@pytest.mark.slow
def test_views_table_is_versioned_and_int8_views(clips, tmp_path):
    """A store with views writes the wider table (storage.table_arrays); one without keeps the
    156-byte rows; both verify clean. int8 views dequantize close to the float16 ones."""
    root, manifest = clips
    f16, _ = _extract(root, manifest, "t16.zarr", train_views=2, view_seed=5)
    q8, _ = _extract(root, manifest, "t8.zarr", train_views=2, view_seed=5, dtype="int8")
    plain, _ = _extract(root, manifest, "tp.zarr")
    assert index.TABLE.itemsize == 156 and index.TABLE_VIEWS.itemsize == 180
    assert f16.attrs["storage"]["table_arrays"] == list(index.VIEW_ARRAYS)
    assert "table_arrays" not in plain.attrs["storage"]
    for cache, dtype in ((f16, index.TABLE_VIEWS), (q8, index.TABLE_VIEWS), (plain, index.TABLE)):
        folder = os.path.join(cache.path, schema.SEGMENTS)
        seg = os.path.join(folder, next(e.name for e in os.scandir(folder) if e.is_dir()))
        table = np.fromfile(os.path.join(seg, "table", "0"), dtype=dtype)  # what docs/cache-format.md shows
        assert os.path.getsize(os.path.join(seg, "table", "0")) == 3 * dtype.itemsize
        assert index.rows_intact(table).all() and cache.verify() == []
        ids = sorted(json.loads(line)["record"]["video_id"] for line in open(os.path.join(seg, "index", "0")))
        assert ids == ["v0", "v1", "v2"]
    assert f16.index.arrays == index.VIEW_ARRAYS and plain.index.arrays == index.ARRAYS
    a, b = f16.video("v1"), q8.video("v1")
    assert a.record["views"] == b.record["views"]  # the same seed: the same boxes
    assert _cos(a.views, b.views).min() > 0.99
    out = np.empty(b.views.shape[1:2] + b.views.shape[3:], np.float32)
    b.read_view_into(out, 1, [0, 1, 2, 3], -1)
    assert np.allclose(out, b.views[1, :, -1].astype(np.float32), atol=1e-2)
    assert f16.bytes_per_frame == plain.bytes_per_frame * 3  # tokens + 2 views per frame


def test_bad_view_options_are_one_line_errors(tmp_path):
    from conftest import cli

    m = write_manifest(tmp_path / "m.csv", [{"video_id": "a", "path": "a.mp4"}])
    r = cli("extract", m, "--out", tmp_path / "c.zarr", *TINY_CLI, "--train-views", "2", "--view-aug", "nope", code=2)
    assert "--view-aug" in r.output and "torchvision" in r.output and "Traceback" not in r.output
    r = cli("extract", m, "--out", tmp_path / "c.zarr", *TINY_CLI, "--train-views", "-1", code=2)
    assert "--train-views" in r.output


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_estimate_counts_the_views(clips, tmp_path, dtype):
    """estimate: the views' bytes (within the JSON records' spread) and the forwards (1 + K per frame)."""
    from conftest import cli

    root, manifest = clips
    opts = [*TINY_CLI, "--frames", "uniform:4", "--train-views", "3", "--dtype", dtype, "--no-time"]
    est = json.loads(cli("estimate", manifest, *[o for o in opts if o != "--no-time"], "--no-time", "--json").output)
    plain = json.loads(cli("estimate", manifest, *TINY_CLI, "--frames", "uniform:4", "--dtype", dtype, "--no-time",
                           "--json").output)
    out = str(tmp_path / "c.zarr")
    cli("extract", manifest, "--out", out, *[o for o in opts if o != "--no-time"], "-q")
    cache = open_cache(out)
    assert est["frames"] == 12 and est["forwards"] == 12 * 4 and plain["forwards"] == 12
    assert est["token_bytes_per_frame"] == cache.bytes_per_frame
    assert abs(est["bytes"] / cache.size_on_disk() - 1) <= 0.01, (est["bytes"], cache.size_on_disk())
    assert est["bytes"] > plain["bytes"] + 12 * 3 * (cache.bytes_per_frame // 4) * 0.9
