"""Dense-clip multi-view testing (SlowFast's protocol) from a stride:S pool, against a port of
SlowFast's clip sampling."""
import csv
import json
import math
import os

import av
import numpy as np
import pytest
import torch
from conftest import tiny_encoder_config
from slowfast_release import get_start_end_idx as port_get_start_end_idx  # decoder.py L37-76, re-typed
from typer.testing import CliRunner

from featcache.cache.facts import StoreAttrs, VideoRecord
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.config import build_config
from featcache.train.clips import dense_clip_indices, nearest_positions
from featcache.train.fit import run_training

runner = CliRunner()


def port_clip(video_size, sampling_rate, num_frames, clip_idx, num_clips, fps=30, target_fps=30):
    """``decode`` L552-555 (clip size) + ``temporal_sampling`` L17-34, on frame indices."""
    clip_size = np.maximum(1.0, sampling_rate * num_frames / target_fps * fps)
    start_idx, end_idx, _ = port_get_start_end_idx(video_size, clip_size, clip_idx, num_clips)
    index = torch.linspace(start_idx, end_idx, num_frames)
    return torch.clamp(index, 0, video_size - 1).long().tolist()


def test_dense_clips_equal_slowfasts_sampling():
    rng = np.random.default_rng(0)
    for _ in range(5000):
        size, frames, rate = int(rng.integers(1, 600)), int(rng.choice([4, 8, 16, 32])), int(rng.choice([1, 2, 4, 8]))
        views = int(rng.integers(1, 11))
        v = int(rng.integers(views))
        assert dense_clip_indices(size, frames, rate, v, views).tolist() == port_clip(size, rate, frames, v, views)
    # by hand: 100 frames, 8 x rate 4 = 32-frame clips, 3 views: starts 0, 68/3, 136/3
    assert dense_clip_indices(100, 8, 4, 0, 3).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert dense_clip_indices(100, 8, 4, 2, 3).tolist()[0] == 45
    assert dense_clip_indices(10, 8, 4, 1, 2).tolist() == [0, 4, 8, 9, 9, 9, 9, 9]  # short video: clamped


def test_nearest_cached_frame_of_a_stride_pool():
    pool = np.array([0, 2, 4, 6, 8])
    pos, missed = nearest_positions(pool, np.array([0, 1, 3, 7, 8, 9]))
    assert pos.tolist() == [0, 0, 1, 3, 4, 4] and missed == 4  # ties to the earlier frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    manifest = make_dataset(str(root / "ds"), "motion", per_class=5, num_frames=40)
    cache = str(root / "c.zarr")
    run_extract(ExtractConfig(manifest=manifest, out=cache, frames="stride:1,uniform:4", encoder=tiny_encoder_config()),
                show_progress=False)
    run = str(root / "run")
    run_training(cache, build_config({"head": "r3d", "view": "uniform:4", "epochs": 2, "batch_size": 8,
                                      "head.hidden": 8, "head.out_dim": 16}), run, show_progress=False)
    return manifest, cache, run


@pytest.mark.slow
def test_eval_clip_rate_scores_slowfasts_clips(trained):
    from featcache import open_cache
    from featcache.cache.dataset import fill_view
    from featcache.spec.view import View
    from featcache.train import checkpoint as ck

    manifest, cache, run = trained
    r = runner.invoke(app, ["eval", run, "--temporal-views", "3", "--clip-rate", "2", "--combine", "sum"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert {"test/top1@3x1r2", "test/clip_frames_rounded@3x1r2"} <= set(res)
    assert res["test/clip_frames_rounded@3x1r2"] == 0.0  # stride:1 holds every frame
    assert os.path.exists(os.path.join(run, "eval_test@3x1r2.json"))
    with open(os.path.join(run, "predictions_test@3x1r2.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    # independently, per test video: SlowFast's 3 clips, through the head, softmax summed
    head = ck.build_head(ck.load(os.path.join(run, "best.pt"))).eval()
    c = open_cache(cache)
    for row in rows:
        entry = c.video(row["video_id"])
        n = entry.record["source"]["num_frames"]
        pool = list(entry.policies["stride:1"])
        x = np.zeros((3, 4, 17, 64), np.float16)
        for v in range(3):
            wanted = port_clip(n, 2, 4, v, 3)
            fill_view(x[v], entry, [pool[list(entry.frame_indices[pool]).index(w)] for w in wanted], View("uniform:4"),
                      c.attrs)
        with torch.no_grad():
            expected = torch.softmax(head(torch.from_numpy(x).float()), 1).sum(0).numpy()
        got = np.array([float(row[k]) for k in list(row)[2:]])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    uniform = json.loads(runner.invoke(app, ["eval", run]).output)  # the single view stays as it was
    assert "test/top1" in uniform


def test_clip_rate_refusals_are_one_line(trained):
    manifest, cache, run = trained
    r = runner.invoke(app, ["eval", run, "--temporal-views", "2", "--clip-rate", "2", "--pool", "stride:3"])
    assert r.exit_code == 2 and "dense clips are cut from a stride:S pool of the cache (stride:1)" in r.stderr
    r = runner.invoke(app, ["eval", run, "--clip-rate", "2", "--window", "4"])
    assert r.exit_code == 2 and "two protocols" in r.stderr
    r = runner.invoke(app, ["eval", run, "--clip-rate", "-1"])
    assert r.exit_code == 2 and "--clip-rate: must be at least 1" in r.stderr


# ----------------------------------------------------------- named protocols against the releases
def slowfast_port(video_size, fps, num_frames, sampling_rate, clip_idx, num_clips, target_fps=30):
    """Re-typed from facebookresearch/SlowFast slowfast/datasets/decoder.py: decode() L552-555
    (clip_sz = sampling_rate * num_frames / target_fps * fps), get_start_end_idx L37-76 (use_offset
    False, the default TEST path), temporal_sampling L17-34; frames indexed as the decoded video."""
    clip_size = sampling_rate * num_frames / target_fps * fps
    delta = max(video_size - clip_size, 0)
    start_idx = delta * clip_idx / num_clips
    end_idx = start_idx + clip_size - 1
    frames = torch.arange(video_size)  # the decoded whole video, one entry per frame
    index = torch.linspace(start_idx, end_idx, num_frames)
    index = torch.clamp(index, 0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index).numpy()


def stadapter_port(video_size, num_frames, sampling_rate, clip_idx, num_temporal_views):
    """Re-typed from linziyi96/st-adapter video_dataset/dataset.py _generate_temporal_crops
    (L189-199), on a (1, T) tensor of frame numbers in place of the frames."""
    frames = torch.arange(video_size)[None]
    seg_len = (num_frames - 1) * sampling_rate + 1
    if frames.size(1) < seg_len:
        frames = torch.cat([frames, frames[:, -1:].repeat(1, seg_len - frames.size(1))], dim=1)
    slide_len = frames.size(1) - seg_len
    crops = []
    for i in range(num_temporal_views):
        if num_temporal_views == 1:
            st = slide_len // 2
        else:
            st = round(slide_len / (num_temporal_views - 1) * i)
        crops.append(frames[:, st: st + num_frames * sampling_rate: sampling_rate])
    return crops[clip_idx][0].numpy()


def test_named_protocols_equal_the_releases_on_5000_draws():
    from featcache.train.protocols import DenseClips
    from featcache.train.protocols_release import SlowFastWholeClips, STAdapterClips

    def protocol_clip_indices(protocol, length, fps, n, rate, v, views):  # what the protocol object places
        kind = {"featcache": DenseClips, "slowfast-whole": SlowFastWholeClips, "stadapter": STAdapterClips}[protocol]
        record = VideoRecord.from_json({"video_id": "v", "source": {"num_frames": length, "fps": fps}})
        return kind(views, 1, rate).clip_indices(record, n)[v]

    rng = np.random.default_rng(32)
    differ = {"featcache_vs_slowfast_25fps": 0}
    clips = 0
    for _ in range(5000):
        length, fps = int(rng.integers(1, 1200)), float(rng.choice([25.0, 29.97, 30.0]))
        n, rate, views = int(rng.choice([8, 16, 32])), int(rng.choice([1, 2, 4, 8])), int(rng.choice([1, 2, 3, 5, 10]))
        for v in range(views):
            clips += 1
            got = protocol_clip_indices("slowfast-whole", length, fps, n, rate, v, views)
            np.testing.assert_array_equal(got, slowfast_port(length, fps, n, rate, v, views))
            got = protocol_clip_indices("stadapter", length, fps, n, rate, v, views)
            np.testing.assert_array_equal(got, stadapter_port(length, n, rate, v, views))
            if fps == 25.0 and length > 40 * rate:
                ours = protocol_clip_indices("featcache", length, fps, n, rate, v, views)
                differ["featcache_vs_slowfast_25fps"] += not np.array_equal(ours, slowfast_port(length, fps, n, rate, v, views))
    assert clips > 15000
    assert differ["featcache_vs_slowfast_25fps"] > 0  # the resampling is what the slowfast-whole protocol adds


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["slowfast", "slowfast-pyav", "slowfast-whole", "stadapter", "featcache"])
def test_eval_protocol_writes_the_views_it_scored_as_the_release_places_them(trained, protocol):
    from featcache import open_cache

    manifest, cache, run = trained
    r = runner.invoke(app, ["eval", run, "--temporal-views", "3", "--clip-rate", "2", "--protocol", protocol])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    key = f"@{protocol}3x1r2" if protocol != "featcache" else "@3x1r2"
    assert f"test/top1{key}" in res and res[f"test/clip_frames_rounded{key}"] == 0.0
    with open(os.path.join(run, f"views_test{key}.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    c = open_cache(cache)
    assert len(rows) == 3 * len(c.done_records("test"))
    for row in rows:
        src = c.video(row["video_id"]).record["source"]
        n, fps, v = src["num_frames"], src["fps"], int(row["view"])
        assert row["protocol"] == protocol
        if protocol in ("slowfast", "slowfast-pyav"):  # the release's decoding replayed on PyAV's reading of the file
            from slowfast_release import FakeVideo, pyav_decode_c4, tv_decode

            with av.open(c.video(row["video_id"]).record["path"]) as container:
                s = container.streams.video[0]
                fake = FakeVideo([f.pts for f in container.decode(s)], s.time_base, s.duration, s.frames,
                                 s.average_rate, s.guessed_rate)
            port = (tv_decode if protocol == "slowfast" else pyav_decode_c4)(fake, 2, 4, v, 3)[0]
        elif protocol == "featcache":
            port = port_clip(n, 2, 4, v, 3, fps=30)  # the video's own rate
        else:
            port = slowfast_port(n, fps, 4, 2, v, 3) if protocol == "slowfast-whole" else stadapter_port(n, 4, 2, v, 3)
        assert row["source_frames"] == row["served_frames"] == " ".join(map(str, port))
        w, h = src["width"], src["height"]  # the centre crop of a short side resized to 56 (the tiny model's crop)
        long_side = math.floor(max(w, h) / min(w, h) * 56)
        off = {"stadapter": (long_side - 56) // 2, "featcache": int(round((long_side - 56) / 2.0))}.get(
            protocol, math.ceil((long_side - 56) / 2))
        assert row["crop_box"] == (f"{off} 0 {off + 56} 56" if w >= h else f"0 {off} 56 {off + 56}")
    bad = runner.invoke(app, ["eval", run, "--protocol", "slowfast"])
    assert bad.exit_code == 2 and "give --clip-rate R" in bad.stderr


def test_a_release_protocol_refuses_a_cache_of_other_pixels():
    from featcache.errors import FeatcacheError
    from featcache.train.protocols_release import check_release_geometry

    clip_b16 = StoreAttrs.from_json({"preprocess": {"input_size": [3, 224, 224], "resize_short_side": 248,
                                                    "crop_pct": 0.9}})
    with pytest.raises(FeatcacheError, match=r"--protocol slowfast: the release crops 224 px from frames whose short "
                                             r"side is resized to 224; this cache resized the short side to 248"):
        check_release_geometry(clip_b16, "slowfast")
    check_release_geometry(StoreAttrs.from_json({"preprocess": {"input_size": [3, 224, 224], "resize_short_side": 224}}),
                           "stadapter")
