"""The store under faults (issue 35) and its columnar index (issue 29): checksums that are
checked, index damage named and repaired, `--overwrite` and duplicate writers refused while a
writer is live, every I/O error one line and a summary, a lost root rebuilt, NaN tokens refused.
Each fault is made for real: bytes edited on disk, a real tmpfs filled up, two processes."""
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from featcache import open_cache
from featcache.cache import index, packed
from featcache.cache.writer import CacheWriter, PublishError
from featcache.cli import app
from featcache.errors import FeatcacheError

runner = CliRunner()
ATTRS = {"featcache_version": "test", "model": {"name": "none"}, "preprocess": {}, "compute": {},
         "storage": {"dtype": "float16"}, "layers": [-1],
         "tokens": {"num_tokens": 5, "dim": 4, "num_prefix_tokens": 1, "grid": [2, 2]},
         "frames": {"policies": ["uniform:8"]}}


def record(i: int, split: str = "train") -> dict:
    return {"video_id": f"v{i:03d}", "path": f"v{i:03d}.mp4", "split": split, "labels": ["ab"[i % 2]],
            "source": {"num_frames": 8, "decoder": "pyav"}, "frame_indices": list(range(8)), "timestamps": [t / 25 for t in range(8)],
            "policies": {"uniform:8": list(range(8))}}


def tokens_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=(8, 1, 5, 4)).astype(np.float16)


def write(path, ids, **kw) -> None:
    with CacheWriter.open(str(path), ATTRS, **kw) as writer:
        for i in ids:
            writer.write_video(record(i), tokens_of(i), None)


def segment(path) -> str:
    (seg,) = [e.path for e in os.scandir(os.path.join(path, "segments")) if e.is_dir()]
    return seg


def verify(path) -> tuple[int, str]:
    r = runner.invoke(app, ["cache", "verify", str(path)])
    return r.exit_code, r.output


def repair(path) -> tuple[int, str]:
    r = runner.invoke(app, ["cache", "repair", str(path)])
    return r.exit_code, r.output


def assert_intact(path, ids) -> None:
    cache = open_cache(str(path))
    assert cache.video_ids() == [f"v{i:03d}" for i in sorted(ids)]
    for i in ids:
        np.testing.assert_array_equal(cache.video(f"v{i:03d}").tokens, tokens_of(i))


# ------------------------------------------------------------------ the columnar index
def test_the_table_is_fixed_width_rows_numpy_reads_without_featcache(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(6))
    seg = segment(path)
    table = np.fromfile(os.path.join(seg, "table", "0"), dtype=index.TABLE)  # what docs/cache-format.md shows
    ids = open(os.path.join(seg, "ids", "0"), encoding="utf-8").read().splitlines()
    positions = np.fromfile(os.path.join(seg, "positions", "0"), dtype="<i4")
    assert len(table) == 6 and ids == [f"v{i:03d}" for i in range(6)]
    assert (table["status"] == 1).all() and (table["frames"] == 8).all() and (table["generation"] == 0).all()
    assert table["start"][:, 0].tolist() == [0, 8, 16, 24, 32, 40] and (table["count"][:, 0] == 8).all()
    o = int(table["positions"][3])  # [k, policy index, length, positions...]
    assert positions[o:o + 11].tolist() == [1, 0, 8, *range(8)]
    import zarr

    data = zarr.open_group(str(path), mode="r")["segments"][os.path.basename(seg)]
    assert bytes(np.asarray(data["table"][:])) == table.tobytes()  # sealed: a plain zarr array
    lines = bytes(np.asarray(data["index"][:])).decode().splitlines()
    assert json.loads(lines[3])["record"]["video_id"] == "v003" and json.loads(lines[3])["rows"]["tokens"] == [24, 8]


def test_open_list_and_split_read_no_json(tmp_path, monkeypatch):
    """Listing, membership, a split's view and a shard's resume never parse a JSON line; a full
    record is read by offset only when asked for."""
    path = tmp_path / "c.zarr"
    write(path, range(10))
    with CacheWriter.open(str(path), ATTRS) as writer:
        writer.write_failure(record(99), "broken file")
    parsed = []
    real = index.SegmentIndex.entries
    monkeypatch.setattr(index.SegmentIndex, "entries", lambda self, rows=None: (parsed.append(rows), real(self, rows))[1])
    cache = open_cache(str(path))
    assert len(cache) == 10 and "v003" in cache and "v099" not in cache and "nope" not in cache
    assert list(cache)[:2] == ["v000", "v001"] and cache.video_ids("failed") == ["v099"]
    assert cache.status("v099") == "failed" and cache.status("nope") is None
    assert cache.lookup(["v001", "v099", "x"]) == {"v001": {"status": "done", "generation": 0, "policies": 1},
                                                    "v099": {"status": "failed", "generation": 0, "policies": 1}}
    ds = cache.dataset("uniform:8", "train")
    assert ds.video_ids == [f"v{i:03d}" for i in range(10)] and ds.labels[3] == ["b"]
    np.testing.assert_array_equal(ds.data.x[4].numpy(), tokens_of(4)[:, 0])
    assert "10 videos done, 1 failed" in repr(cache)
    assert parsed == []
    assert cache.failures() == {"v099": "broken file"} and len(parsed) == 1  # a record: read when asked for
    assert cache.video("v002").record["path"] == "v002.mp4"


def test_a_cache_pickles_without_its_index(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(50))
    cache = open_cache(str(path))
    cache.video_ids()
    blob = pickle.dumps(cache)
    assert len(blob) < 4000 and pickle.loads(blob)._idx is None
    assert pickle.loads(blob).video("v007").tokens.shape == (8, 1, 5, 4)


def test_a_json_indexed_store_opens_and_pack_gives_it_columns(tmp_path):
    """Stores written before the table (JSON lines only) read as before; `cache pack` converts."""
    path, new = tmp_path / "c.zarr", tmp_path / "p.zarr"
    write(path, range(8))
    seg = segment(path)
    for which in ("table", "ids", "labels", "positions"):
        shutil.rmtree(os.path.join(seg, which))
    old = open_cache(str(path))
    assert old.segments()[0].legacy and old.verify() == [] and len(old) == 8
    assert_intact(path, range(8))
    assert old.dataset("uniform:8", "train").labels[1] == ["b"]
    r = runner.invoke(app, ["cache", "pack", str(path), "--out", str(new), "-q"])
    assert r.exit_code == 0, r.output
    packed_cache = open_cache(str(new))
    assert not packed_cache.segments()[0].legacy and packed_cache.verify() == []
    assert_intact(new, range(8))


# ------------------------------------------------------------------ checksums
def test_a_flipped_bit_is_named_by_verify_and_reads_and_repair_marks_it_for_reextraction(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(6))
    data = os.path.join(segment(path), "tokens", "0.0.0.0")
    raw = bytearray(open(data, "rb").read())
    raw[3 * 8 * 5 * 4 * 2 + 17] ^= 0x04  # one bit of v003's rows
    open(data, "wb").write(bytes(raw))
    code, out = verify(path)
    assert code == 1 and "v003: tokens: checksum mismatch" in out and out.count("problem:") == 1, out
    code, out = runner.invoke(app, ["cache", "verify", str(path), "--quick"]).exit_code, ""
    assert code == 0  # --quick reads no token bytes
    with pytest.raises(FeatcacheError, match="v003.*do not match their checksum"):
        open_cache(str(path)).video("v003").tokens  # noqa: B018 -- a whole read checks
    code, out = repair(path)
    assert code == 0 and "marked failed: v003: tokens: checksum mismatch" in out, out
    cache = open_cache(str(path))
    assert cache.status("v003") == "failed" and len(cache) == 5 and verify(path)[0] == 0


# ------------------------------------------------------------------ index damage
def test_a_truncated_table_is_found_and_repair_reindexes_the_videos_from_their_lines(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(10))
    table = os.path.join(segment(path), "table", "0")
    with open(table, "r+b") as f:
        f.truncate(4 * index.ROW)  # `head`: 6 published rows gone
    assert len(open_cache(str(path))) == 4
    code, out = verify(path)
    assert code == 1 and out.count("is published but its table row is lost") == 6, out
    code, out = repair(path)
    assert code == 0 and out.count("re-indexed:") == 6 and "6 re-indexed" in out, out
    assert verify(path)[0] == 0
    assert_intact(path, range(10))


def test_an_edited_row_range_or_garbage_line_is_never_a_silent_swap(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(6))
    seg = segment(path)
    table = np.fromfile(os.path.join(seg, "table", "0"), dtype=index.TABLE)
    table["start"][2, 0] = 24  # v002 -> v003's rows, in the table
    table.tofile(os.path.join(seg, "table", "0"))
    cache = open_cache(str(path))
    assert "v002" not in cache and len(cache) == 5  # a damaged row serves no reader
    code, out = verify(path)
    assert code == 1 and "video 'v002' is published but its table row is lost" in out, out
    assert repair(path)[0] == 0 and verify(path)[0] == 0
    assert_intact(path, range(6))  # v002 re-indexed with its own rows
    with open(os.path.join(seg, "index", "0"), "ab") as f:  # a garbage line: no video is affected
        f.write(b"\x00garbage\n")
    code, out = verify(path)
    assert code == 0 and "note:" in out and "no index entry" in out, out


def test_an_edited_json_line_is_named_and_repair_marks_the_video_failed(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(4))
    lines = os.path.join(segment(path), "index", "0")
    raw = open(lines, "rb").read()
    edited = raw.replace(b'"tokens":[8,8]', b'"tokens":[9,8]', 1)
    assert edited != raw
    open(lines, "wb").write(edited)
    code, out = verify(path)
    assert code == 1 and "(v001): its JSON line changed since it was written" in out, out
    np.testing.assert_array_equal(open_cache(str(path)).video("v001").tokens, tokens_of(1))  # the table's rows
    code, out = repair(path)
    assert "marked failed: v001" in out and open_cache(str(path)).status("v001") == "failed", out


def test_a_lost_root_is_rebuilt_from_the_segments(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(5))
    attrs = open_cache(str(path)).attrs
    os.remove(path / "zarr.json")
    r = runner.invoke(app, ["cache", "info", str(path)])
    assert r.exit_code == 2 and "`featcache cache repair" in r.stderr and "rebuilds it" in r.stderr, r.output
    code, out = repair(path)
    assert code == 0 and "rebuilt: the root zarr.json" in out, out
    assert open_cache(str(path)).attrs == attrs and verify(path)[0] == 0
    assert_intact(path, range(5))


# ------------------------------------------------------------------ interrupted writes
def test_interrupted_counts_name_the_videos_and_clear_once_they_are_done(tmp_path):
    path = tmp_path / "c.zarr"
    writer = CacheWriter.open(str(path), ATTRS)
    for i in range(3):
        writer.write_video(record(i), tokens_of(i), None)
    writer._segment.commit()
    real = packed._write_all

    def killed_before_the_table(fd, data):
        if fd == writer._segment.index_fds["table"]:
            raise SystemExit  # a kill between the lines' fsync and the table's write
        real(fd, data)

    packed._write_all = killed_before_the_table
    try:
        for i in range(3, 5):
            writer.write_video(record(i), tokens_of(i), None)
        with pytest.raises(SystemExit):
            writer._segment.commit()
    finally:
        packed._write_all = real
    cache = open_cache(str(path))
    assert len(cache) == 3 and cache.verify() == []
    assert list(cache.interrupted().values()) == [["v003", "v004"]]
    code, out = verify(path)
    assert "2 interrupted write(s) will be redone by the next extract run (v003, v004)" in out, out
    write(path, range(5))  # the next run
    cache = open_cache(str(path))
    assert cache.interrupted() == {} and cache.staged() == [] and len(cache) == 5
    assert "interrupted" not in verify(path)[1]


# ------------------------------------------------------------------ live writers
_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_faults import ATTRS, record, tokens_of
    from featcache.cache.writer import CacheWriter, PublishError
    from featcache.cache import packed
    packed.COMMIT_SECONDS = 0.0
    writer = CacheWriter.open({path!r}, ATTRS, task={task!r})
    done = []
    try:
        for i in range(200):
            writer.write_video(record(i), tokens_of(i), None)
            done.append(i)
            print("published", i, flush=True)
            time.sleep(0.05)
    except PublishError as exc:
        print("stopped:", exc, "replaced" if exc.replaced else "", flush=True)
        sys.exit(3)
""")


def start_writer(path, task="m.csv shard 0/2"):
    code = _WRITER.format(tests=os.path.dirname(__file__), path=str(path), task=task)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("published"), (line, p.stderr.read() if p.poll() is not None else "")
    return p


@pytest.mark.slow
def test_overwrite_refuses_a_live_writer_and_a_replaced_writer_stops_and_publishes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    writer = start_writer(path)
    try:
        other = dict(ATTRS, tokens={"num_tokens": 7, "dim": 4})
        with pytest.raises(FeatcacheError, match=rf"is being written by .* pid {writer.pid} .*heartbeat"):
            CacheWriter.open(str(path), other, replace=True)
        assert len(open_cache(str(path))) >= 1  # nothing was deleted
        monkeypatch.setenv("FEATCACHE_OVERWRITE_LIVE", "1")  # the documented way past a writer it cannot see die
        with CacheWriter.open(str(path), other, replace=True) as new:
            new.write_video(dict(record(500)), np.zeros((8, 1, 7, 4), np.float16), None)
        out, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
    assert writer.returncode == 3 and "stopped:" in out and "replaced" in out, out
    cache = open_cache(str(path))
    assert cache.video_ids() == ["v500"] and cache.verify() == []  # none of the old writer's videos leak in


@pytest.mark.slow
def test_a_second_writer_of_the_same_shard_is_refused_while_the_first_lives(tmp_path):
    path = tmp_path / "c.zarr"
    first = start_writer(path, task="m.csv shard 1/4")
    try:
        with pytest.raises(FeatcacheError, match=rf"shard 1/4 is being extracted already, by .* pid {first.pid}"):
            CacheWriter.open(str(path), ATTRS, task="m.csv shard 1/4")
        CacheWriter.open(str(path), ATTRS, task="m.csv shard 2/4").close()  # another shard: fine
    finally:
        first.kill()
        first.wait()
    CacheWriter.open(str(path), ATTRS, task="m.csv shard 1/4").close()  # its writer is dead (same host: pid gone)


def test_info_reports_the_bytes_of_superseded_copies(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(4))
    with CacheWriter.open(str(path), dict(ATTRS, frames={"policies": ["uniform:8", "uniform:4"]})) as writer:
        rec = dict(record(1), policies={"uniform:8": list(range(8)), "uniform:4": [0, 2, 4, 6]})
        writer.replace_video(rec, tokens_of(1), None)  # a grown video: its first copy is superseded
    cache = open_cache(str(path))
    assert cache.superseded_bytes() == 8 * 5 * 4 * 2
    from featcache.cache.info import cache_facts

    assert cache_facts(str(path)).superseded_bytes == 320


# ------------------------------------------------------------------ I/O errors
def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_store_that_cannot_be_created_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(packed, "_write_new", _enospc)
    with pytest.raises(FeatcacheError, match="cannot create the cache .No space left on device"):
        CacheWriter.open(str(tmp_path / "c.zarr"), ATTRS)
    assert os.listdir(tmp_path) == []


def test_a_segment_that_cannot_be_created_is_one_error_and_leaves_no_folder(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    write(path, range(2))
    real = packed._write_new
    monkeypatch.setattr(packed, "_write_new", lambda p, d: _enospc() if p.endswith("zarr.json") and "segments" in p
                        else real(p, d))
    with CacheWriter.open(str(path), ATTRS) as writer:
        with pytest.raises(PublishError, match="No space left on device") as failed:
            writer.write_video(record(5), tokens_of(5), None)
    assert failed.value.fatal and len(os.listdir(path / "segments")) == 2  # its zarr.json and the first segment
    monkeypatch.undo()
    write(path, range(6))
    assert_intact(path, range(6))


def test_a_rollover_seal_that_fails_is_a_warning_and_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "c.zarr"
    real = packed._write_new
    monkeypatch.setattr(packed, "_write_new", lambda p, d: _enospc() if p.endswith(os.path.join("table", "zarr.json"))
                        else real(p, d))
    with CacheWriter.open(str(path), ATTRS, segment_bytes=2 * 8 * 5 * 4 * 2) as writer:
        for i in range(5):
            writer.write_video(record(i), tokens_of(i), None)
        assert writer.warnings and "could not seal the full segment" in writer.warnings[0]
        with pytest.raises(PublishError, match="could not seal this run's segment"):
            writer.close()
    monkeypatch.undo()
    assert_intact(path, range(5))
    assert open_cache(str(path)).verify() == []


needs_mount = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")


@pytest.mark.slow
@needs_mount
def test_a_full_tmpfs_is_one_line_and_a_summary_and_the_next_run_completes(tmp_path, videos):
    """extract onto a real 256 KB tmpfs: it stops with the failed videos named and one error
    line, no traceback, nothing half-created; with space back the same command completes."""
    from conftest import TINY_CLI

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("mount -t tmpfs refused here")
    try:
        manifest = tmp_path / "m.csv"
        names = list(videos.values()) * 6
        manifest.write_text("video_id,path,label,split\n" + "".join(
            f"v{i},{p},{'ab'[i % 2]},train\n" for i, p in enumerate(names)))
        out = mnt / "c.zarr"
        cmd = [sys.executable, "-m", "featcache.cli", "extract", str(manifest), "--out", str(out), "--frames",
               "uniform:4", *TINY_CLI, "--dtype", "float32", "-q"]
        env = dict(os.environ, FEATCACHE_COMMIT_SECONDS="0")  # each video published at once: the disk fills mid-run
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
        assert "extraction stopped" in p.stderr and "No space left on device" in p.stderr, p.stderr
        assert "failed: v" in p.stdout and "not attempted" in p.stderr
        cache = open_cache(str(out))
        assert cache.verify() == []
        left = [f for root, _, files in os.walk(out) for f in files if ".tmp-" in f]
        assert left == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)  # space is back
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        assert len(open_cache(str(out))) == len(names) and open_cache(str(out)).verify() == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_nan_tokens_are_refused_at_extraction_with_the_video_named(tmp_path, monkeypatch):
    from conftest import tiny_encoder_config

    from featcache.data.synthetic import make_dataset
    from featcache.extract import pipeline
    from featcache.extract.pipeline import ExtractConfig, run_extract

    manifest = make_dataset(str(tmp_path / "data"), "motion", per_class=1, num_frames=12, size=(76, 56))
    cfg = ExtractConfig(manifest=manifest, out=str(tmp_path / "c.zarr"), encoder=tiny_encoder_config(),
                        frames="uniform:4", batch_size=4)
    real = pipeline._Pipeline._publish
    bad = []

    def poison_one(self, job):
        if not bad:
            bad.append(job.decoded.item.video_id)
            job.tokens[1, 0, 2, 3] = np.nan
        return real(self, job)

    monkeypatch.setattr(pipeline._Pipeline, "_publish", poison_one)
    s = run_extract(cfg, show_progress=False)
    assert list(s.failed) == bad and "NaN or infinite" in s.failed[bad[0]] and s.done == 3, s
    cache = open_cache(cfg.out)
    assert cache.status(bad[0]) == "failed" and cache.verify() == []



def test_a_shard_resume_reads_no_record_of_its_done_videos(tmp_path, monkeypatch):
    """What `extract` does before its first video: the done ones are skipped from the index
    columns; only videos that grow (a policy added) have their records read."""
    from featcache.data.manifest import VideoItem
    from featcache.extract.pipeline import relabelled_videos, to_extract

    path = tmp_path / "c.zarr"
    write(path, range(20))
    monkeypatch.setattr(index.SegmentIndex, "entries", lambda *a, **k: pytest.fail("a JSON line was parsed"))
    items = [VideoItem(f"v{i:03d}", f"v{i:03d}.mp4", ("ab"[i % 2],), "train") for i in range(25)]
    with CacheWriter.open(str(path), ATTRS, task="m.csv shard 0/1") as writer:
        todo, grow = to_extract(writer, items)
        assert [it.video_id for it in todo] == [f"v{i:03d}" for i in range(20, 25)] and grow == {}
        items[3] = VideoItem("v003", "v003.mp4", ("z",), "test")
        assert relabelled_videos(items, writer) == ["v003"]


def test_a_view_spot_checks_checksums_before_a_run_trains(tmp_path):
    path = tmp_path / "c.zarr"
    write(path, range(8))
    data = os.path.join(segment(path), "tokens", "0.0.0.0")
    raw = bytearray(open(data, "rb").read())
    raw[7 * 8 * 5 * 4 * 2 + 3] ^= 0x10  # the last video: one of those a view checks
    open(data, "wb").write(bytes(raw))
    with pytest.raises(FeatcacheError, match="v007.*do not match their checksum"):
        open_cache(str(path)).dataset("uniform:8", "train")


def test_a_writer_busy_with_one_long_video_keeps_its_heartbeat(tmp_path, monkeypatch):
    """The heartbeat is a thread: a writer that appends nothing for a while (one long video
    through a video encoder) still looks live to --overwrite on another host; its seal stops it."""
    monkeypatch.setattr(packed, "HEARTBEAT_SECONDS", 0.4)
    path = tmp_path / "c.zarr"
    writer = CacheWriter.open(str(path), ATTRS)
    writer.write_video(record(0), tokens_of(0), None)
    table = os.path.join(writer._segment.path, "table", "0")
    os.utime(table, (0, 0))  # as if its last heartbeat were long ago
    time.sleep(0.5)
    assert time.time() - os.path.getmtime(table) < 0.45
    writer.close()
    os.utime(table, (0, 0))
    time.sleep(0.3)
    assert os.path.getmtime(table) == 0  # sealed: no more heartbeats


def test_a_split_other_than_train_val_test_is_read_from_the_records(tmp_path):
    """The table codes train, val and test; another split name (a store written by an older
    manifest reader, or by hand) is served from the records, for listing and views alike."""
    path = tmp_path / "c.zarr"
    with CacheWriter.open(str(path), ATTRS) as writer:
        for i in range(6):
            writer.write_video(record(i, "holdout" if i % 3 == 0 else "train"), tokens_of(i), None)
    cache = open_cache(str(path))
    assert [e.video_id for e in cache.done_entries("holdout")] == ["v000", "v003"]
    assert cache.briefs(["v003"])["v003"]["split"] == "holdout"
    assert len(cache.done_entries("train")) == 4
