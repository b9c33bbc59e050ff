"""The packed store at dataset scale: segments one writer each owns, an index per segment, files
and opens that do not grow with the number of videos, kill -9 of concurrent shard workers, old
(schema-1) stores that keep working and convert, and only the file-system operations NFS, Lustre
and GPFS provide."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from conftest import TINY_CLI
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cache import packed
from featcache.cache.writer import CacheWriter
from featcache.cli import app
from featcache.data.synthetic import make_dataset
from featcache.launch.extract_array import published

runner = CliRunner()
DATA = os.path.join(os.path.dirname(__file__), "..", "assets")
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "featcache")
FEATCACHE = [_SCRIPT] if os.path.exists(_SCRIPT) else [sys.executable, "-m", "featcache.cli"]
TINY_ATTRS = {"featcache_version": "test", "model": {"name": "none"}, "preprocess": {}, "compute": {},
              "storage": {"dtype": "float16"}, "layers": [-1], "tokens": {"num_tokens": 5, "dim": 4},
              "frames": {"policies": ["uniform:8"]}}


def write_tiny_store(path, videos, writers=1, **open_kw):
    """``videos`` tiny videos through the real writer, split over ``writers`` writer processes'
    worth of segments; returns {video_id: tokens}."""
    rng = np.random.default_rng(0)
    out = {}
    for w in range(writers):
        with CacheWriter.open(path, TINY_ATTRS, **open_kw) as writer:
            for i in range(w, videos, writers):
                tokens = rng.normal(size=(8, 1, 5, 4)).astype(np.float16)
                record = {"video_id": f"v{i:06d}", "path": f"v{i:06d}.mp4", "split": "train", "labels": ["a"],
                          "source": {"num_frames": 8}, "frame_indices": list(range(8)),
                          "timestamps": [t / 25 for t in range(8)], "policies": {"uniform:8": list(range(8))}}
                writer.write_video(record, tokens, None)
                out[record["video_id"]] = tokens
    return out


# ------------------------------------------------------------------ layout and zarr
def test_a_packed_store_is_a_zarr_hierarchy_plain_zarr_reads(tmp_path):
    path = str(tmp_path / "c.zarr")
    tokens = write_tiny_store(path, 30)
    cache = open_cache(path)
    assert cache.layout == "packed" and cache.attrs["schema_version"] == 2 and len(cache.video_ids()) == 30
    (name, segment), = zarr.open_group(path, mode="r")["segments"].groups()
    assert segment["tokens"].shape == (240, 1, 5, 4)
    lines = bytes(np.asarray(segment["index"][:])).decode().splitlines()
    for line in lines:  # a reader without featcache: the index says where each video's rows are
        entry = json.loads(line)
        start, count = entry["rows"]["tokens"]
        vid = entry["record"]["video_id"]
        np.testing.assert_array_equal(segment["tokens"][start:start + count], tokens[vid])
        np.testing.assert_array_equal(cache.video(vid).tokens, tokens[vid])
    assert segment["tokens"][7, 0, 2, 1] == tokens["v000000"][7, 0, 2, 1]  # one frame alone, via the shard index


def test_files_and_opens_do_not_grow_with_the_number_of_videos(tmp_path):
    """Opening, listing and reading one video: count every file Python opens under the store
    (audit events), at 100 and at 2,000 videos."""
    counts = {}
    for n in (100, 2000):
        path = str(tmp_path / f"c{n}.zarr")
        write_tiny_store(path, n, durable=False)
        code = textwrap.dedent(f"""
            import sys
            path = {path!r}
            opened = []
            sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == "open" and str(a[0]).startswith(path) else None)
            from featcache import open_cache
            cache = open_cache(path)
            ids = cache.video_ids()
            assert len(ids) == {n}
            cache.video(ids[{n} // 2]).tokens
            print(len(opened))
        """)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        counts[n] = (int(p.stdout), open_cache(path).file_count())
    assert counts[100] == counts[2000], counts
    opens, files = counts[2000]
    # root + the segment's table + its ids + one data file; two dozen files and folders in all
    assert opens <= 4 and files <= 24, counts


def test_a_writer_rolls_over_into_new_segments_and_pack_merges_them(tmp_path):
    path = str(tmp_path / "c.zarr")
    tokens = write_tiny_store(path, 60, writers=3, segment_bytes=5 * 8 * 5 * 4 * 2)  # 5 videos a segment
    cache = open_cache(path)
    assert len(cache.segments()) == 12 and all(s.sealed for s in cache.segments())
    r = runner.invoke(app, ["cache", "pack", path, "--out", str(tmp_path / "p.zarr"), "-q"])
    assert r.exit_code == 0 and "packed 60 videos and 0 failure records" in r.output, r.output
    new = open_cache(str(tmp_path / "p.zarr"))
    assert len(new.segments()) == 1 and new.verify() == [] and new.records() == cache.records()
    assert new.fingerprint == cache.fingerprint and new.attrs["packed"]["from"] == cache.path
    for vid, x in tokens.items():
        np.testing.assert_array_equal(new.video(vid).tokens, x)
    assert new.file_count() < cache.file_count()
    r = runner.invoke(app, ["cache", "pack", path, "--out", str(tmp_path / "p.zarr")])
    assert r.exit_code == 2 and "exists; give a new path" in r.output


def test_growth_appends_a_newer_copy_that_readers_take(tmp_path):
    path = str(tmp_path / "c.zarr")
    write_tiny_store(path, 3)
    attrs = dict(TINY_ATTRS, frames={"policies": ["uniform:8", "uniform:4"]})
    with CacheWriter.open(path, attrs) as writer:
        grown = np.ones((8, 1, 5, 4), np.float16)
        for vid in writer.video_ids():
            old = writer.video(vid)
            record = dict(old.record, policies={**old.policies, "uniform:4": [0, 2, 4, 6]})
            assert writer.replace_video(record, grown, None) is not None
            assert writer.replace_video(record, grown, None) is None  # it has every policy now
    cache = open_cache(path)
    assert cache.attrs["frames"]["policies"] == ["uniform:8", "uniform:4"]
    assert cache.index_entries()["v000001"].generation == 1 and len(cache.segments()) == 2
    np.testing.assert_array_equal(cache.video("v000001").tokens, grown)
    assert cache.verify() == []


# ------------------------------------------------------------------ damage and interruption
def killed_writer(path, videos=10, start=0):
    """A writer that published ``videos`` videos and was killed before its seal: its segment is
    left unsealed (as kill -9 leaves it). Returns the segment's folder."""
    writer = CacheWriter.open(path, TINY_ATTRS)
    for i in range(start, start + videos):
        writer.write_video(eight_frames(f"v{i:06d}"), np.full((8, 1, 5, 4), i, np.float16), None)
    writer._segment.commit()
    seg = writer._segment.path
    for fd in [*writer._segment.fds.values(), *writer._segment.index_fds.values()]:
        os.close(fd)
    return seg


def test_torn_tails_corrupt_lines_and_missing_files_are_problem_lines_never_tracebacks(tmp_path):
    import pathlib

    path = tmp_path / "c.zarr"
    seg = pathlib.Path(killed_writer(str(path), 10))
    with open(seg / "table" / "0", "ab") as f:
        f.write(b"\0" * 40)  # a commit killed mid-row: names no video, nothing to redo
    with open(seg / "index" / "0", "ab") as f:
        f.write(b'{"record": {"video_id": "v9999')  # ... or killed mid-line
    cache = open_cache(str(path))
    assert len(cache.video_ids()) == 10 and cache.verify() == [] and cache.staged() == []
    line = eight_frames("v000777")
    with open(seg / "index" / "0", "ab") as f:  # a whole line without its table row: a commit killed between them
        f.write(b"\n" + packed.index.encode(line, {"tokens": [80, 8]}, 0, {"tokens": 0}, ["uniform:8"])[0])
    cache = open_cache(str(path))
    assert cache.verify() == [] and cache.interrupted() == {seg.name: ["v000777"]}
    v = runner.invoke(app, ["cache", "verify", str(path)])
    assert v.exit_code == 0 and "1 interrupted write(s)" in v.output and "v000777" in v.output, v.output
    with open(seg / "index" / "0", "ab") as f:
        f.write(b"not json\n")
    (seg / "tokens" / "0.0.0.0").write_bytes(b"")
    v = runner.invoke(app, ["cache", "verify", str(path)])
    assert v.exit_code == 1 and v.output.count("token chunk missing or truncated") == 10, v.output
    assert "Traceback" not in v.output
    (path / "zarr.json").write_text("{ not json")
    for cmd in (["cache", "verify", str(path)], ["cache", "info", str(path)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "corrupt" in r.stderr, r.output


def test_training_on_a_damaged_store_is_one_line(tmp_path, videos):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,label,split\n" + "".join(
        f"v{i},{p},{'ab'[i % 2]},train\n" for i, p in enumerate(videos.values())))
    out = tmp_path / "c.zarr"
    r = runner.invoke(app, ["extract", str(manifest), "--out", str(out), "--frames", "uniform:4", *TINY_CLI, "-q"])
    assert r.exit_code == 0, r.output
    data, = out.glob("segments/*/tokens/0.0.0.0")
    data.write_bytes(data.read_bytes()[:5000])
    r = runner.invoke(app, ["train", str(out), "--head", "pool", "--view", "uniform:4", "--set", "select=last",
                            "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 2 and "truncated" in r.stderr and "featcache cache verify" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_shard_workers_one_killed_then_both_rerun_give_every_video_once(tmp_path):
    """Two `extract --shard` processes at once; kill -9 one part-way; re-run both: every video
    exactly once, verify clean, tokens equal to a single-worker extraction."""
    manifest = make_dataset(str(tmp_path / "data"), "motion", per_class=4, num_frames=12, size=(64, 48))
    slow = ["--weights", "random", "--precision", "fp32", "--img-size", "112", "--model-arg", "depth=3",
            "--frames", "uniform:6", "--batch-size", "4", "-q"]
    out = tmp_path / "c.zarr"
    args = [[*FEATCACHE, "extract", manifest, "--out", str(out), "--shard", f"{i}/2", *slow] for i in range(2)]
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for a in args]
    deadline = time.time() + 180
    while time.time() < deadline and procs[0].poll() is None and published(str(out)) < 2:
        time.sleep(0.02)
    assert procs[0].poll() is None, "shard 0 finished before it could be killed; make it slower"
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    assert procs[1].wait(timeout=300) == 0, procs[1].stderr.read()
    partial = open_cache(str(out))
    assert 0 < len(partial.video_ids()) < 16 and partial.verify() == []
    for a in args:
        p = subprocess.run(a, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    cache = open_cache(str(out))
    ids = cache.video_ids()
    assert len(ids) == len(set(ids)) == 16 and cache.verify() == [] and cache.failures() == {}
    assert sum(len(s.table) for s in cache.segments()) == 16  # nothing was written twice
    single = tmp_path / "one.zarr"
    p = subprocess.run([*FEATCACHE, "extract", manifest, "--out", str(single), *slow], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    ref = open_cache(str(single))
    for vid in ids:
        np.testing.assert_allclose(cache.video(vid).tokens.astype(np.float32),
                                   ref.video(vid).tokens.astype(np.float32), rtol=0, atol=2e-3)
        assert cache.video(vid).record["frame_indices"] == ref.video(vid).record["frame_indices"]


# ------------------------------------------------------------------ the file-system operations used
_WATCH = textwrap.dedent("""
    import os, sys
    store = os.path.abspath(sys.argv[1])
    bad = []
    def hook(event, args):
        if event in ("os.rename", "os.replace") and str(args[1]).startswith(store) and os.path.exists(args[1]):
            if not str(args[1]).endswith(store + "/zarr.json"):  # the root's policy list (plain rename(2))
                bad.append(f"{event} over an existing {args[1]}")
        elif event in ("os.link", "os.symlink") and str(args[1]).startswith(store):
            bad.append(f"{event} {args[1]}")
        elif event in ("fcntl.flock", "fcntl.lockf"):
            bad.append(event)
        elif event == "ctypes.dlsym" and "rename" in str(args[1]):
            bad.append(f"ctypes {args[1]}")
    sys.addaudithook(hook)
    from featcache.cli import main
    sys.argv = ["featcache", *sys.argv[2:]]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    print("BAD:" + repr(bad))
    sys.exit(code)
""")


@pytest.mark.slow
def test_extract_grow_and_pack_use_only_what_nfs_lustre_and_gpfs_provide(tmp_path):
    """Audit events of a real extraction, a growth (incremental pool), a failure and a pack: no
    rename over an existing file (but the root's zarr.json), no hard or symbolic link, no lock,
    no renameat2; and the package's sources never name those calls."""
    manifest = make_dataset(str(tmp_path / "data"), "motion", per_class=1, num_frames=12, size=(64, 48))
    with open(manifest, "a") as f:
        f.write("gone,videos/gone.mp4,left,train\n")
    out = str(tmp_path / "c.zarr")
    for frames in ("uniform:4", "uniform:4,keyframes:2"):
        p = subprocess.run([sys.executable, "-c", _WATCH, out, "extract", manifest, "--out", out, "--frames", frames,
                            *TINY_CLI, "-q"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 1 and "BAD:[]" in p.stdout, p.stdout + p.stderr  # exit 1: the missing video
    p = subprocess.run([sys.executable, "-c", _WATCH, str(tmp_path / "p.zarr"), "cache", "pack", out,
                        "--out", str(tmp_path / "p.zarr"), "-q"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "BAD:[]" in p.stdout, p.stdout + p.stderr
    cache = open_cache(out)
    assert cache.verify() == [] and len(cache.video_ids()) == 4 and list(cache.failures()) == ["gone"]
    assert all(len(cache.video(v).frame_indices) >= 4 for v in cache.video_ids())
    package = os.path.dirname(os.path.dirname(packed.__file__))
    for root, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name)).read()
                for call in ("renameat2", "RENAME_EXCHANGE", "os.link(", "flock(", "lockf("):
                    assert call not in text, f"{name} names {call}"


# ------------------------------------------------------------------ old stores
@pytest.mark.parametrize("name", ["round2_fp16.zarr", "round2_int8.zarr"])
def test_a_round2_store_opens_trains_evaluates_and_packs_into_identical_tokens(name, tmp_path):
    old_path = str(tmp_path / name)
    shutil.copytree(os.path.join(DATA, name), old_path)
    old = open_cache(old_path)
    assert old.layout == "loose" and old.attrs["schema_version"] == 1 and old.verify() == []
    assert len(old.video_ids()) == 20 and list(old.failures()) == ["gone_000"]
    run = str(tmp_path / "run")
    r = runner.invoke(app, ["train", old_path, "--head", "pool", "--view", "uniform:4", "--set", "epochs=2",
                            "--out", run, "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", run, "--split", "test"])
    assert r.exit_code == 0, r.output
    new_path = str(tmp_path / "new.zarr")
    p = subprocess.run([*FEATCACHE, "cache", "pack", old_path, "--out", new_path, "-q"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "packed 20 videos and 1 failure records" in p.stdout, p.stdout + p.stderr
    assert subprocess.run([*FEATCACHE, "cache", "verify", new_path], capture_output=True).returncode == 0
    new = open_cache(new_path)
    assert new.layout == "packed" and new.records() == old.records() and new.fingerprint == old.fingerprint
    for vid in old.video_ids():
        a, b = old.video(vid).arrays(), new.video(vid).arrays()
        assert set(a) == set(b) and set(a) >= {"tokens"}
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])  # byte for byte: int8 tokens and scales too
    r = runner.invoke(app, ["eval", run, "--split", "test", "--cache", new_path])
    assert r.exit_code == 0, r.output  # the run trained on the old store evaluates on the new one


def test_extracting_into_a_round2_store_says_to_pack_it_first(tmp_path, videos):
    old_path = str(tmp_path / "old.zarr")
    shutil.copytree(os.path.join(DATA, "round2_fp16.zarr"), old_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video_id,path,label,split\nx,{videos['.mp4']},a,train\n")
    r = runner.invoke(app, ["extract", str(manifest), "--out", old_path, *TINY_CLI,
                            "--frames", "uniform:4,keyframes:2", "-q"])
    assert r.exit_code == 2 and "featcache cache pack" in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.output


def test_bench_open_runs_at_a_tiny_size():
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_open.py")
    p = subprocess.run([sys.executable, script, "--videos", "20,60", "--read-videos", "3", "--rounds", "1", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    small, big, read = [json.loads(line) for line in p.stdout.splitlines()]
    for row, n in ((small, 20), (big, 60)):
        assert row["videos"] == n and row["json"]["videos"] == row["columns"]["videos"] == n
        assert row["columns"]["index_bytes"] == n * packed.index.ROW  # the table: fixed-width rows
        assert row["json"]["index_bytes"] > row["columns"]["index_bytes"] > 0
        assert row["open_list_cpu_speedup"] > 0 and row["columns"]["read_one_s"] > 0
    assert read["read"]["videos"] == 3 and read["read"]["ratio_vs_memmap"] > 0


def test_repair_records_broken_videos_as_failed_and_the_next_extract_redoes_them(tmp_path, videos):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video_id,path,label,split\n" + "".join(
        f"v{i},{p},{'ab'[i % 2]},train\n" for i, p in enumerate(videos.values())))
    out = tmp_path / "c.zarr"
    args = ["extract", str(manifest), "--out", str(out), "--frames", "uniform:4", *TINY_CLI, "-q"]
    assert runner.invoke(app, args).exit_code == 0
    before = {v: open_cache(str(out)).video(v).tokens for v in open_cache(str(out)).video_ids()}
    data, = out.glob("segments/*/tokens/0.0.0.0")
    row = 4 * 17 * 64 * 2  # one video's tokens: 4 frames x 17 tokens x 64 channels, fp16
    data.write_bytes(data.read_bytes()[:2 * row + 10])  # the third video on is cut off
    v = runner.invoke(app, ["cache", "verify", str(out)])
    assert v.exit_code == 1 and "featcache cache repair" in v.output
    r = runner.invoke(app, ["cache", "repair", str(out)])
    assert r.exit_code == 0 and "repair: 2 broken video(s) recorded as failed" in r.output, r.output
    cache = open_cache(str(out))
    assert cache.verify() == [] and len(cache.video_ids()) == 2 and len(cache.failures()) == 2
    assert all("removed by featcache cache repair" in why for why in cache.failures().values())
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "extracted 2 videos, 0 failed, 2 already cached" in again.output, again.output
    cache = open_cache(str(out))
    assert cache.verify() == [] and sorted(cache.video_ids()) == sorted(before) and cache.failures() == {}
    for vid, x in before.items():
        np.testing.assert_array_equal(cache.video(vid).tokens, x)
    assert runner.invoke(app, ["cache", "repair", str(out)]).output.startswith("repair: 0 broken")


# ------------------------------------------------------------------ reading a whole split at once
@pytest.mark.parametrize("dtype,layers", [("float16", 1), ("int8", 1), ("float16", 2), ("int8", 3)])
def test_gather_reads_a_split_as_the_per_video_copies_do(tmp_path, dtype, layers):
    """Cache.gather (one numpy gather per segment) against each video's own array, over
    several segments, several layers a row, repeated and unordered positions; and a view
    materialised through it equals the per-video fill_view path."""
    from featcache.cache import schema
    from featcache.cache.dataset import fill_view, materialise
    from featcache.spec.view import View

    path = str(tmp_path / "c.zarr")
    attrs = dict(TINY_ATTRS, storage={"dtype": dtype}, layers=list(range(layers)),
                 tokens={"num_tokens": 5, "dim": 4, "num_prefix_tokens": 1, "grid": [2, 2]})
    rng = np.random.default_rng(1)
    for w in range(3):  # three writers, segments of ~4 videos: a split spread over many segments
        with CacheWriter.open(path, attrs, segment_bytes=4 * 8 * layers * 5 * 4 * 2) as writer:
            for i in range(w, 30, 3):
                record = {"video_id": f"v{i:03d}", "path": "x.mp4", "split": "train", "labels": ["a"],
                          "source": {"num_frames": 8}, "frame_indices": list(range(8)),
                          "timestamps": [t / 25 for t in range(8)], "policies": {"uniform:8": list(range(8))}}
                writer.write_video(record, rng.normal(size=(8, layers, 5, 4)).astype(np.float32), None)
    cache = open_cache(path)
    assert len(cache.segments()) > 3
    entries = [cache.video(r["video_id"]) for r in cache.done_records("train")]
    rng.shuffle(entries)  # slots of one segment are not contiguous
    positions = rng.integers(0, 8, size=(len(entries), 5))
    positions[0] = [7, 7, 0, 3, 3]
    names = [schema.TOKENS] + ([schema.TOKEN_SCALES] if dtype == "int8" else [])
    for layer in range(layers):
        for name in names:
            stored = [e.stored(name) for e in entries]
            out = np.empty((len(entries), 5, *stored[0].shape[2:]), stored[0].dtype)
            assert cache.gather(name, entries, positions, layer, out)
            for i, s in enumerate(stored):
                np.testing.assert_array_equal(out[i], s[positions[i], layer])
    view = View("uniform:8", layers=(layers - 1,))
    data = materialise(cache, view, "train")
    expected = np.empty(data.x.shape, np.float16)
    for i, r in enumerate(cache.done_records("train")):
        fill_view(expected[i], cache.video(r["video_id"]), list(range(8)), view, cache.attrs)
    np.testing.assert_array_equal(np.asarray(data.x[:]), expected)
    with pytest.raises(Exception, match="cache verify"):
        cache.gather(schema.TOKENS, entries[:1], [[8]], 0, np.empty((1, 1, 5, 4), out.dtype))


# ------------------------------------------------------------------ group commit
def eight_frames(video_id: str) -> dict:
    """The record of a video of 8 frames, all of them in the store's one policy."""
    return {"video_id": video_id, "path": "x.mp4", "split": "train", "labels": ["a"], "source": {"num_frames": 8},
            "frame_indices": list(range(8)), "timestamps": [t / 25 for t in range(8)],
            "policies": {"uniform:8": list(range(8))}}


def test_a_writer_publishes_in_groups_six_fsyncs_per_group_and_all_at_close(tmp_path, monkeypatch):
    """Durable writes: rows are written at once, but index lines and fsyncs come per group
    (COMMIT_SECONDS), so a fast writer does not pay two fsyncs a video; readers see a video only
    once its group is published; close publishes the rest."""
    path = str(tmp_path / "c.zarr")
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    monkeypatch.setattr(packed, "COMMIT_SECONDS", 3600.0)
    with CacheWriter.open(path, TINY_ATTRS) as writer:
        for i in range(20):
            record = eight_frames(f"v{i:02d}")
            writer.write_video(record, np.full((8, 1, 5, 4), i, np.float16), None)
        assert len(writer.video_ids()) == 20  # the writer knows its own videos
        assert open_cache(path).records() == {} and synced == []  # nothing published yet
    cache = open_cache(path)
    assert len(cache.video_ids()) == 20 and cache.verify() == []
    np.testing.assert_array_equal(cache.video("v07").tokens, np.full((8, 1, 5, 4), 7, np.float16))
    assert len(synced) == 6  # one group: the tokens file; the JSON lines, ids, labels and positions; then the table
    monkeypatch.setattr(packed, "COMMIT_SECONDS", 0.0)  # a group a video: visible at once
    with CacheWriter.open(path, TINY_ATTRS) as writer:
        writer.write_video(dict(record, video_id="w0"), np.zeros((8, 1, 5, 4), np.float16), None)
        assert "w0" in open_cache(path).video_ids()


def test_a_group_commit_torn_by_a_full_disk_is_cut_off_whole_and_never_retried(tmp_path, monkeypatch):
    """ENOSPC half-way through a group's index lines: the group is given up whole (its videos
    named lost), its torn bytes cut off the index, so the store verifies clean and holds none of
    them (a retry would append the lines after the torn half: a corrupt line); a re-run redoes them."""
    import errno

    from featcache.cache.writer import PublishError

    path, real, torn = str(tmp_path / "c.zarr"), packed._write_all, []

    def full_half_way(fd, data):
        if torn == ["armed"]:
            torn.append(len(data))
            real(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(packed, "COMMIT_SECONDS", 3600.0)
    monkeypatch.setattr(packed, "_write_all", full_half_way)
    tokens = np.zeros((8, 1, 5, 4), np.float16)
    with CacheWriter.open(path, TINY_ATTRS) as writer:
        for i in range(3):
            writer.write_video(eight_frames(f"v{i}"), tokens, None)
        writer._segment.commit_s = 0.0  # the next video publishes the group of four
        torn.append("armed")
        with pytest.raises(PublishError, match="No space left on device") as failed:
            writer.write_video(eight_frames("v3"), tokens, None)
    assert len(torn) == 2 and failed.value.lost == ["v0", "v1", "v2"]  # v3: the error itself
    cache = open_cache(path)
    assert cache.video_ids() == [] and cache.verify() == [] and not any(s.tail for s in cache.segments())
    with CacheWriter.open(path, TINY_ATTRS) as writer:
        for i in range(4):
            writer.write_video(eight_frames(f"v{i}"), tokens, None)
    cache = open_cache(path)
    assert sorted(cache.video_ids()) == ["v0", "v1", "v2", "v3"] and cache.verify() == []


def test_a_seal_that_fails_after_the_last_commit_warns_and_loses_nothing(tmp_path, monkeypatch):
    """The disk fills up as the run's segment is sealed, after its videos were published: a
    warning (not a silent pass, not failures), and every video is read back and verifies."""
    from conftest import tiny_encoder_config

    from featcache.extract.pipeline import ExtractConfig, run_extract

    manifest = make_dataset(str(tmp_path / "data"), "motion", per_class=1, num_frames=12, size=(76, 56))
    cfg = ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=tiny_encoder_config(),
                        frames="uniform:4", batch_size=4)
    real = packed._write_new

    def full_at_the_seal(path, data):
        if path.endswith(os.path.join(packed.INDEX, "zarr.json")):
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(packed, "_write_new", full_at_the_seal)
    s = run_extract(cfg, show_progress=False)
    assert s.done == 4 and not s.failed, (s.done, s.failed)
    assert len(s.warnings) == 1 and "could not seal this run's segment" in s.warnings[0]
    assert "No space left" in s.warnings[0] and "in the cache all the same" in s.warnings[0]
    monkeypatch.undo()
    cache = open_cache(cfg.out)
    assert len(cache.video_ids()) == 4 and cache.verify() == []
    assert run_extract(cfg, show_progress=False).skipped == 4


def test_a_failed_group_commit_names_every_lost_video_and_the_next_run_redoes_them(tmp_path, monkeypatch):
    from conftest import tiny_encoder_config

    from featcache.extract.pipeline import ExtractConfig, run_extract

    manifest = make_dataset(str(tmp_path / "data"), "motion", per_class=1, num_frames=12, size=(76, 56))
    cfg = ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=tiny_encoder_config(),
                        frames="uniform:4", batch_size=4)
    monkeypatch.setattr(packed, "COMMIT_SECONDS", 3600.0)
    real = os.fdatasync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full_disk)
    s = run_extract(cfg, show_progress=False)
    assert s.done == 0 and len(s.failed) == 4, (s.done, s.failed)
    assert all("written but not published: could not publish the last 4 video(s)" in r and "No space left" in r
               for r in s.failed.values())
    assert open_cache(cfg.out).video_ids() == []
    monkeypatch.setattr(os, "fdatasync", real)
    s = run_extract(cfg, show_progress=False)
    assert s.done == 4 and not s.failed and len(open_cache(cfg.out).video_ids()) == 4
