"""`featcache eval --protocol vjepa`: V-JEPA's frozen-evaluation test views (segments x spatial
views), against the release's index and crop maths re-typed from facebookresearch/jepa."""
import csv
import json
import os
import zlib

import numpy as np
import pytest
import torch
from conftest import tiny_encoder_config
from typer.testing import CliRunner

from featcache.cache.facts import VideoRecord
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.train.clips import vjepa_clip_indices
from featcache.train.fit import run_training

runner = CliRunner()


def jepa_clip_indices(video_len, frames_per_clip, frame_step, num_clips, random_clip_sampling=True,
                      allow_clip_overlap=True):
    """Re-typed from facebookresearch/jepa src/datasets/video_dataset.py VideoDataset.loadvideo_decord
    L207-266 (duration None, as every configs/evals/*.yaml has clip_duration: null; len(vr) is
    ``video_len``); returns clip_indices. np.random is the global generator, as in the release."""
    fpc = frames_per_clip
    fstp = frame_step
    clip_len = int(fpc * fstp)
    partition_len = video_len // num_clips
    all_indices, clip_indices = [], []
    for i in range(num_clips):
        if partition_len > clip_len:
            end_indx = clip_len
            if random_clip_sampling:
                end_indx = np.random.randint(clip_len, partition_len)
            start_indx = end_indx - clip_len
            indices = np.linspace(start_indx, end_indx, num=fpc)
            indices = np.clip(indices, start_indx, end_indx - 1).astype(np.int64)
            indices = indices + i * partition_len
        else:
            if not allow_clip_overlap:
                indices = np.linspace(0, partition_len, num=partition_len // fstp)
                indices = np.concatenate((indices, np.ones(fpc - partition_len // fstp) * partition_len,))
                indices = np.clip(indices, 0, partition_len - 1).astype(np.int64)
                indices = indices + i * partition_len
            else:
                sample_len = min(clip_len, video_len) - 1
                indices = np.linspace(0, sample_len, num=sample_len // fstp)
                indices = np.concatenate((indices, np.ones(fpc - sample_len // fstp) * sample_len,))
                indices = np.clip(indices, 0, sample_len - 1).astype(np.int64)
                clip_step = 0
                if video_len > clip_len:
                    clip_step = (video_len - clip_len) // (num_clips - 1)
                indices = indices + i * clip_step
        clip_indices.append(indices)
        all_indices.extend(list(indices))
    return clip_indices


def jepa_view_offsets(width, height, crop_size, num_views=3):
    """The spatial views' offsets along the long side: jepa evals/video_classification_frozen/utils.py
    EvalVideoTransform.__call__ L306-321 after video_transforms.Resize(crop_size), i.e.
    src/datasets/utils/video/functional.py resize_clip L36-42 and get_resize_sizes L74-81."""
    im_h, im_w = height, width
    if (im_w <= im_h and im_w == crop_size) or (im_h <= im_w and im_h == crop_size):
        H, W = im_h, im_w
    else:
        if im_w < im_h:
            ow, oh = crop_size, int(crop_size * im_h / im_w)
        else:
            oh, ow = crop_size, int(crop_size * im_w / im_h)
        H, W = oh, ow
    spatial_step = (max(H, W) - crop_size) // (num_views - 1)
    return [(0, i * spatial_step) if H > W else (i * spatial_step, 0) for i in range(num_views)]


def test_vjepa_segments_equal_the_release_on_5000_draws():
    """Both branches (a partition longer than a clip: its end drawn at random, as the release's eval
    loader does; else overlapping clips), the same generator state on both sides."""
    from featcache.train.protocols_release import VJEPAClips

    rng = np.random.default_rng(32)
    branches = {"random": 0, "overlap": 0}
    for draw in range(5000):
        length = int(rng.integers(2, 150 if draw % 2 else 1500))
        fps = float(rng.choice([25.0, 29.97, 30.0]))  # the release reads no rate: clip_duration null
        fpc, step, segments = int(rng.choice([2, 4, 8, 16])), int(rng.choice([1, 2, 4])), int(rng.choice([1, 2, 3, 8]))
        np.random.seed(draw)
        port = jepa_clip_indices(length, fpc, step, segments)
        got = vjepa_clip_indices(length, fpc, step, segments, np.random.RandomState(draw))
        assert len(got) == segments
        for a, b in zip(got, port):
            np.testing.assert_array_equal(a, b)
        fixed = vjepa_clip_indices(length, fpc, step, segments)  # random_clip_sampling=False
        for a, b in zip(fixed, jepa_clip_indices(length, fpc, step, segments, random_clip_sampling=False)):
            np.testing.assert_array_equal(a, b)
        branches["random" if length // segments > fpc * step else "overlap"] += 1
        # the protocol object: one view of the segments in time order, drawn from the video's generator
        record = VideoRecord.from_json({"video_id": f"v{draw}", "source": {"num_frames": length, "fps": fps}})
        view = VJEPAClips(segments, 1, step).clip_indices(record, fpc * segments)
        np.random.seed([0, zlib.crc32(f"v{draw}".encode())])
        np.testing.assert_array_equal(view[0], np.concatenate(jepa_clip_indices(length, fpc, step, segments)))
    assert min(branches.values()) > 900, branches  # measured: 4,042 random, 958 overlapping
    # by hand: 100 frames, 2 segments of 4 frames every 4 (clip_len 16 < partition 50), ends fixed at 16
    assert [s.tolist() for s in vjepa_clip_indices(100, 4, 4, 2)] == [[0, 5, 10, 15], [50, 55, 60, 65]]
    # 20 frames, 2 segments of 4 x 4: overlapping, clip_step (20 - 16) // 1 = 4
    assert [s.tolist() for s in vjepa_clip_indices(20, 4, 4, 2)] == [[0, 7, 14, 14], [4, 11, 18, 18]]


@pytest.mark.parametrize("size,short", [((72, 56), 56), ((56, 90), 56), ((57, 56), 56), ((400, 300), 224)])
def test_vjepa_crop_boxes_equal_the_release(size, short):
    from featcache.train.protocols_release import VJEPAClips

    width, height = size
    p = VJEPAClips(2, 3, 4)
    for crop, (x0, y0) in enumerate(jepa_view_offsets(width, height, short)):
        assert p.crop_box(width, height, short, crop) == f"{x0} {y0} {x0 + short} {y0 + short}"
    # one view: VideoTransform's eval path, utils.py L217-223 (Resize(int(crop * 256 / 224)), CenterCrop)
    side = int(short * 256 / 224)
    h2, w2 = (height, width) if min(width, height) == side else (
        (int(side * height / width), side) if width < height else (side, int(side * width / height)))
    x1, y1 = int(round((w2 - short) / 2.0)), int(round((h2 - short) / 2.0))
    assert VJEPAClips(2, 1, 4).crop_box(width, height, short, 1) == f"{x1} {y1} {x1 + short} {y1 + short}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vjepa")
    manifest = make_dataset(str(root / "ds"), "motion", per_class=5, num_frames=40, size=(72, 56))  # wide: crops move
    cache = str(root / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="stride:1,uniform:4", crops=3,
                              encoder=tiny_encoder_config()), show_progress=False)
    run = str(root / "run")
    run_training(cache, build_config({"head": "pool", "view": "uniform:4", "epochs": 1, "batch_size": 8}), run,
                 show_progress=False)
    return cache, run


@pytest.mark.slow
def test_eval_vjepa_scores_the_releases_views(trained):
    """2 segments x 2 frames every 4 (the head's 4 frames attended jointly) x 3 spatial views:
    the views file equals the release's placement and crops, and each video's score is the mean of
    the softmax of its 3 views (jepa eval.py L355), computed here independently."""
    from featcache import open_cache
    from featcache.cache.dataset import fill_view
    from featcache.spec.view import View
    from featcache.train import checkpoint as ck

    cache, run = trained
    r = runner.invoke(app, ["eval", run, "--protocol", "vjepa", "--temporal-views", "2", "--clip-rate", "4",
                            "--spatial-views", "3"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    key = "@vjepa2x3r4"
    assert res[f"test/clip_frames_rounded{key}"] == 0.0 and res[f"test/pool{key}"] == "stride:1"
    assert json.load(open(os.path.join(run, f"eval_test{key}.json"))) == res
    c = open_cache(cache)
    with open(os.path.join(run, f"views_test{key}.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * len(c.done_records("test"))
    wanted = {}
    for row in rows:
        src = c.video(row["video_id"]).record["source"]
        np.random.seed([0, zlib.crc32(row["video_id"].encode())])  # the generator the protocol draws from
        port = jepa_clip_indices(src["num_frames"], 2, 4, 2)
        segment, crop = int(row["view"]), int(row["crop"])
        assert row["protocol"] == "vjepa"
        assert row["source_frames"] == row["served_frames"] == " ".join(map(str, port[segment]))
        x0, y0 = jepa_view_offsets(src["width"], src["height"], 56)[crop]
        assert row["crop_box"] == f"{x0} {y0} {x0 + 56} {y0 + 56}"
        wanted[row["video_id"]] = np.concatenate(port)
    head = ck.build_head(ck.load(os.path.join(run, "best.pt"))).eval()
    with open(os.path.join(run, f"predictions_test{key}.csv"), newline="") as f:
        preds = list(csv.DictReader(f))
    for row in preds:
        entry = c.video(row["video_id"])
        pool = list(entry.policies["stride:1"])
        frames = [pool[list(entry.frame_indices[pool]).index(w)] for w in wanted[row["video_id"]]]
        x = np.zeros((3, 4, 17, 64), np.float16)
        for crop in range(3):
            fill_view(x[crop], entry, frames, View("uniform:4", crop=crop), c.attrs)
        with torch.no_grad():
            expected = torch.softmax(head(torch.from_numpy(x).float()), 1).mean(0).numpy()
        np.testing.assert_allclose([float(row[k]) for k in list(row)[2:]], expected, atol=1e-6)


def test_eval_vjepa_refusals_are_one_line(trained):
    cache, run = trained
    cases = [
        (["--temporal-views", "3", "--clip-rate", "4", "--spatial-views", "3"],
         "the head sees its 3 segments jointly (attend_across_segments), 4 frames in all"),
        (["--temporal-views", "2", "--clip-rate", "4", "--combine", "sum"],
         "--combine: --protocol vjepa averages the softmax of its views (jepa eval.py L355); got 'sum'"),
        (["--temporal-views", "2", "--clip-rate", "4"],  # one view: VideoTransform resizes the short side to 64
         "--protocol vjepa: the release crops 56 px from frames whose short side is resized to 64 for one spatial "
         "view (utils.py L217); this cache resized the short side to 56"),
        (["--temporal-views", "2"], "--protocol: vjepa places dense clips: give --clip-rate R"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["eval", run, "--protocol", "vjepa", *args])
        assert r.exit_code == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
