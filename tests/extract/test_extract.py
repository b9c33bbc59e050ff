import os
import shutil

import numpy as np
import pytest
import timm
import torch
from conftest import CONTAINERS, TINY_ARGS, TINY_SIZE, VIDEO_SIZE, pyav_frames, tiny_encoder_config, write_manifest

from featcache import open_cache
from featcache.data.synthetic import motion_clip, write_video
from featcache.errors import FeatcacheError
from featcache.extract.pipeline import ExtractConfig, run_extract, shard_of
from featcache.video.select import keyframe_indices, uniform_indices


def extract(manifest, out, **kw):
    cfg = ExtractConfig(manifest=manifest, out=str(out), encoder=kw.pop("encoder", tiny_encoder_config()), **kw)
    return run_extract(cfg, show_progress=False)


@pytest.fixture(scope="module")
def container_manifest(videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    rows = [{"video_id": f"clip{ext.replace('.', '_')}", "path": videos[ext], "label": "a;b" if ext == ".mkv" else "a",
             "split": "train"} for ext in CONTAINERS]
    return write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def container_cache(container_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "cache.zarr"
    summary = extract(container_manifest, out, frames="uniform:6,keyframes:3", dtype="float32", batch_size=7)
    assert summary.done == 4 and not summary.failed
    return str(out)


def test_tokens_equal_direct_forward_of_independently_decoded_frames(container_cache, videos):
    """Independent path: PyAV in-order decode, slicing crop, a freshly built model."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2.lvd142m", img_size=TINY_SIZE, **TINY_ARGS).eval()
    cache = open_cache(container_cache)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    left = (VIDEO_SIZE[0] - TINY_SIZE) // 2
    for ext in CONTAINERS:
        v = cache.video(f"clip{ext.replace('.', '_')}")
        frames = pyav_frames(videos[ext])[v.frame_indices][:, :, left:left + TINY_SIZE]
        x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - mean) / std
        with torch.inference_mode():
            ref = model.forward_features(x).numpy()
        assert v.tokens.shape == (len(v.frame_indices), 1, 17, 64)
        np.testing.assert_allclose(v.tokens[:, 0], ref, rtol=1e-4, atol=1e-4, err_msg=ext)


def test_frame_facts_per_video(container_cache):
    cache = open_cache(container_cache)
    for vid in cache.video_ids():
        v = cache.video(vid)
        pool = v.frame_indices
        assert pool[v.policies["uniform:6"]].tolist() == uniform_indices(40, 6).tolist()
        assert len(v.luv_scores) == 40 and v.luv_scores[0] == 0
        assert pool[v.policies["keyframes:3"]].tolist() == keyframe_indices(v.luv_scores, 3).tolist()
        assert sorted(set(pool.tolist())) == pool.tolist() and len(pool) <= 9
        np.testing.assert_allclose(v.timestamps, pool / 25.0, atol=1e-3)
        assert v.split == "train" and v.record["source"]["num_frames"] == 40
    assert cache.video("clip_mkv").labels == ["a", "b"]
    assert cache.video("clip_mpg").record["source"]["decoder"] == "pyav"


def test_store_describes_itself(container_cache):
    a = open_cache(container_cache).attrs
    assert a["model"]["name"] == "vit_small_patch14_dinov2.lvd142m" and a["model"]["args"] == TINY_ARGS
    assert a["model"]["weights"]["source"] == "random"
    assert a["preprocess"]["input_size"] == [3, 56, 56] and a["preprocess"]["interpolation"] == "bicubic"
    assert a["tokens"] == {"num_prefix_tokens": 1, "grid": [4, 4], "num_tokens": 17, "dim": 64, "final_norm": True}
    assert a["frames"]["policies"] == ["uniform:6", "keyframes:3"] and a["storage"]["dtype"] == "float32"
    assert a["compute"]["precision"] == "fp32" and a["featcache_version"] and len(a["fingerprint"]) == 16
    assert open_cache(container_cache).verify() == []


def test_float16_default_storage(container_manifest, container_cache, tmp_path):
    extract(container_manifest, tmp_path / "h.zarr", frames="uniform:6,keyframes:3")
    half, full = open_cache(str(tmp_path / "h.zarr")), open_cache(container_cache)
    t16, t32 = half.video("clip_mp4").tokens, full.video("clip_mp4").tokens
    assert t16.dtype == np.float16
    np.testing.assert_allclose(t16.astype(np.float32), t32, rtol=2e-3, atol=2e-3)
    assert half.bytes_per_frame == 17 * 64 * 2


def test_bad_videos_are_recorded_and_the_rest_extracted(tmp_path, videos):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n" * 40)
    data = open(videos[".mp4"], "rb").read()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    write_video(str(tmp_path / "short.mp4"), motion_clip("up", np.random.default_rng(0), 5, VIDEO_SIZE))
    names = ["good", "missing", "empty", "text", "trunc", "short"]
    rows = [{"video_id": n, "path": videos[".mp4"] if n == "good" else f"{n}.mp4", "label": "x", "split": "test"}
            for n in names]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    s = extract(manifest, tmp_path / "c.zarr", frames="uniform:8")
    assert s.done == 2 and set(s.failed) == {"missing", "empty", "text", "trunc"}
    assert "file not found" in s.failed["missing"] and "empty file" in s.failed["empty"]
    assert all("\n" not in r for r in s.failed.values())
    assert any(w.startswith("short: 5 frames, fewer than 8") for w in s.warnings)
    cache = open_cache(str(tmp_path / "c.zarr"))
    assert sorted(cache.video_ids()) == ["good", "short"] and cache.failures() == s.failed
    short = cache.video("short")
    assert short.record["short"] and short.frame_indices.tolist() == list(range(5))
    assert short.frame_indices[short.policies["uniform:8"]].tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert cache.verify() == []

    # --short-videos fail: the short video becomes a failure; a fixed file is retried and succeeds
    shutil.copy(videos[".mp4"], tmp_path / "missing.mp4")
    s2 = extract(manifest, tmp_path / "c2.zarr", frames="uniform:8", short_videos="fail")
    assert "fewer than the 8 requested" in s2.failed["short"] and "missing" not in s2.failed
    s3 = extract(manifest, tmp_path / "c.zarr", frames="uniform:8")
    assert s3.skipped == 2 and s3.done == 1 and set(s3.failed) == {"empty", "text", "trunc"}
    assert "missing" in open_cache(str(tmp_path / "c.zarr")).video_ids()


def test_resume_skips_and_other_settings_are_refused(container_manifest, tmp_path):
    out = tmp_path / "c.zarr"
    extract(container_manifest, out, frames="uniform:4")
    again = extract(container_manifest, out, frames="uniform:4")
    assert (again.skipped, again.done, again.frames) == (4, 0, 0)
    with pytest.raises(FeatcacheError, match=r"different settings \(storage.dtype\).*--overwrite"):
        extract(container_manifest, out, frames="uniform:4", dtype="float32")
    with pytest.raises(FeatcacheError, match=r"layers"):
        extract(container_manifest, out, frames="uniform:4", encoder=tiny_encoder_config(layers=(0, 1)))
    redo = extract(container_manifest, out, frames="uniform:4", dtype="float32", overwrite=True)
    assert redo.done == 4 and open_cache(str(out)).attrs["storage"]["dtype"] == "float32"


def store_files(out):
    """path -> bytes of every file of a store."""
    return {os.path.relpath(os.path.join(r, f), out): open(os.path.join(r, f), "rb").read()
            for r, _, files in os.walk(out) for f in files}


def test_overwrite_keeps_a_store_whose_settings_match(container_manifest, tmp_path):
    out = tmp_path / "c.zarr"
    extract(container_manifest, out, frames="uniform:4")
    before = store_files(out)
    again = extract(container_manifest, out, frames="uniform:4", overwrite=True)
    assert (again.skipped, again.done, again.replaced) == (4, 0, [])
    assert store_files(out) == before  # not a byte of the finished videos was touched
    other = extract(container_manifest, out, frames="uniform:4", dtype="float32", overwrite=True)
    assert other.done == 4 and other.replaced == ["storage.dtype"]


def test_a_video_that_cannot_be_published_fails_instead_of_counting_as_done(container_manifest, tmp_path,
                                                                            monkeypatch):
    """The disk fills up half-way through one video's rows: that video fails (and says why),
    the others are published in a fresh segment, and a re-run redoes it."""
    import errno

    from conftest import TINY_CLI
    from typer.testing import CliRunner

    from featcache.cache import packed
    from featcache.cli import app

    out = tmp_path / "c.zarr"
    real, calls = packed._pwrite_all, []

    def disk_full_once(fd, view, offset):
        calls.append(offset)
        if len(calls) == 2:  # the second video's tokens: half of them land, then ENOSPC
            real(fd, view[:len(view) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, view, offset)

    monkeypatch.setattr(packed, "_pwrite_all", disk_full_once)
    s = extract(container_manifest, out, frames="uniform:2")
    monkeypatch.undo()
    assert s.done == 3 and len(s.failed) == 1, s
    (failed, reason), = s.failed.items()
    assert "could not publish into the cache: No space left on device" in reason
    assert s.frames == 6
    cache = open_cache(str(out))
    assert cache.verify() == [] and len(cache.video_ids()) == 3 and list(cache.failures()) == [failed]
    assert len(cache.segments()) == 2  # the torn segment was sealed; the rest went to a new one
    r = CliRunner().invoke(app, ["extract", container_manifest, "--out", str(out), "--frames", "uniform:2",
                                 *TINY_CLI, "-q"])
    assert r.exit_code == 0 and "extracted 1 videos, 0 failed, 3 already cached" in r.output, r.output
    cache = open_cache(str(out))
    assert cache.verify() == [] and len(cache.video_ids()) == 4 and cache.failures() == {}


def test_out_that_is_not_a_cache_is_left_alone(container_manifest, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(FeatcacheError, match="not a featcache cache"):
        extract(container_manifest, tmp_path / "precious", frames="uniform:4")
    with pytest.raises(FeatcacheError, match="refusing to delete"):
        extract(container_manifest, tmp_path / "precious", frames="uniform:4", overwrite=True)
    assert (tmp_path / "precious" / "thesis.tex").exists()


def test_ids_cannot_write_outside_the_store(tmp_path, videos):
    ids = ["../escape", "a/b", ".hidden", "sp ace"]
    rows = [{"video_id": i, "path": videos[".avi"], "label": "x", "split": "val"} for i in ids]
    out = tmp_path / "store" / "c.zarr"
    s = extract(write_manifest(tmp_path / "m.csv", rows), out, frames="uniform:2")
    assert s.done == 4
    assert sorted(os.listdir(tmp_path / "store")) == ["c.zarr"]
    names = {n for _, dirs, files in os.walk(out) for n in dirs + files}
    assert not any(i in n or "escape" in n or n == ".hidden" for i in ids for n in names)  # ids name no file
    cache = open_cache(str(out))
    assert sorted(cache.video_ids()) == sorted(ids) and cache.video("../escape").tokens.shape[0] == 2


def test_shards_partition_the_manifest(container_manifest, tmp_path):
    ids = [f"v{i}" for i in range(200)]
    shards = [shard_of(i, 3) for i in ids]
    assert set(shards) == {0, 1, 2} and shards == [shard_of(i, 3) for i in ids]
    done = []
    for k in range(3):
        s = extract(container_manifest, tmp_path / "c.zarr", frames="uniform:2", shard=(k, 3))
        done.append(s.done)
    assert sum(done) == 4 and sorted(open_cache(str(tmp_path / "c.zarr")).video_ids()) == sorted(
        f"clip{e.replace('.', '_')}" for e in CONTAINERS)


@pytest.mark.parametrize("kw,match", [
    ({"frames": "uniform:8,random:2"}, "^frames: unknown policy 'random:2'"),
    ({"batch_size": 0}, "^batch_size: expected auto or an integer"),
    ({"dtype": "int4"}, "^dtype: unknown 'int4'"),
    ({"decoder": "opencv"}, "^decoder: unknown 'opencv'"),
    ({"short_videos": "pad"}, "^short_videos: unknown 'pad'"),
    ({"luv_size": (64,)}, "^luv_size: expected WxH such as 64x48, or full"),
    ({"frames": "keyframes:2", "luv_size": "full", "decoder": "decord"}, "--luv-size full is scored in the in-order"),
])
def test_bad_options_fail_before_work(container_manifest, tmp_path, kw, match):
    """From Python the error names the config key; the CLI prints the same message under its flag
    (OptionError.flag; tests/cli/test_cli.py runs those through the command line)."""
    from featcache.errors import OptionError

    with pytest.raises(FeatcacheError, match=match) as info:
        extract(container_manifest, tmp_path / "c.zarr", **kw)
    if isinstance(info.value, OptionError):
        assert info.value.flag == "--" + info.value.option.replace("_", "-") and info.value.option in kw
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("positions", [[0, 2], [1, 2, 3], "all"])
def test_direct_chunk_reads_equal_zarr_reads(container_cache, positions):
    entry = open_cache(container_cache).video("clip_avi")
    ref = entry.tokens  # through zarr
    positions = list(range(len(ref))) if positions == "all" else positions
    for layer in (0, -1):
        out = np.empty((len(positions),) + ref.shape[2:], dtype=ref.dtype)
        entry.read_frames_into(out, positions, layer)  # preadv for few frames, mapped copy for most
        np.testing.assert_array_equal(out, ref[positions, layer])
    half = np.empty((len(positions),) + ref.shape[2:], dtype=np.float16)  # other dtype: through zarr
    entry.read_frames_into(half, positions, 0)
    np.testing.assert_array_equal(half, ref[positions, 0].astype(np.float16))


def test_luv_size_full_is_used_and_recorded(videos, tmp_path):
    """`--luv-size full` scores at the source size (the scores of full-size frames, in order) and
    the store says so; the default records 64x48."""
    from conftest import TINY_CLI
    from typer.testing import CliRunner

    from featcache.cli import app
    from featcache.video.select import luv_scores

    manifest = write_manifest(tmp_path / "m.csv", [{"video_id": "a", "path": videos[".mp4"], "label": "x", "split": "train"}])
    r = CliRunner().invoke(app, ["extract", manifest, "--out", str(tmp_path / "full.zarr"), *TINY_CLI,
                                 "--frames", "keyframes:3", "--luv-size", "full", "-q"])
    assert r.exit_code == 0, r.output
    cache = open_cache(str(tmp_path / "full.zarr"))
    assert cache.attrs["frames"]["luv_size"] == "full"
    import av

    with av.open(videos[".mp4"]) as c:
        ref = luv_scores(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]))
    v = cache.video("a")
    np.testing.assert_array_equal(v.luv_scores, ref)
    assert v.frame_indices.tolist() == keyframe_indices(ref, 3).tolist()
    r = CliRunner().invoke(app, ["extract", manifest, "--out", str(tmp_path / "d.zarr"), *TINY_CLI,
                                 "--frames", "keyframes:3", "-q"])
    assert r.exit_code == 0 and open_cache(str(tmp_path / "d.zarr")).attrs["frames"]["luv_size"] == [64, 48]
    r = CliRunner().invoke(app, ["extract", manifest, "--out", str(tmp_path / "e.zarr"), *TINY_CLI, "--luv-size", "big"])
    assert r.exit_code == 2 and "--luv-size: expected WxH such as 64x48, or full, got 'big'" in r.output


@pytest.mark.slow
def test_batch_size_auto_drops_a_stale_probe_and_says_so(container_manifest, tmp_path, monkeypatch):
    """A cached probe far from what the run measures (here: a made-up 1e6 frames/s) is reported
    and dropped, so the next run probes again (with a warm-up and repeats)."""
    import json

    from featcache.extract import batchsize
    from featcache.extract.encoder import FrozenEncoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(batchsize, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(batchsize, "MIN_BATCHES", 1)
    key = batchsize.probe_key(FrozenEncoder(tiny_encoder_config()))
    os.makedirs(tmp_path / "xdg" / "featcache")
    with open(batchsize.cache_file(), "w") as f:
        json.dump({key: {"batch_size": 8, "frames_per_s": {"8": 1e6}}, "other": {"batch_size": 16}}, f)
    s = extract(container_manifest, tmp_path / "a.zarr", frames="uniform:8", batch_size="auto")
    assert "batch size 8 (auto: cached probe" in s.batch_size_note
    assert "the cached probe is stale" in s.batch_size_note and "the probe said 1000000.0" in s.batch_size_note
    assert json.load(open(batchsize.cache_file())) == {"other": {"batch_size": 16}}
    monkeypatch.setattr(batchsize, "MIN_SECONDS", 1e9)  # the new probe is not judged (tiny runs are noisy)
    again = extract(container_manifest, tmp_path / "b.zarr", frames="uniform:8", batch_size="auto")
    assert "auto: probed in" in again.batch_size_note
    entry = json.load(open(batchsize.cache_file()))[key]
    assert entry["repeats"] == batchsize.REPEATS and str(entry["batch_size"]) in entry["frames_per_s"]
