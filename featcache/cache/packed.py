"""The packed layout (schema 2): segments that one writer each appends to, and their indexes.

A segment is a Zarr group ``segments/<name>/`` owned by the one process that created it. Its
arrays hold the frames of many videos concatenated along the first axis (one data file each,
``<array>/0.0.0.0``), and its index files (``index``, ``ids``, ``brief``, ``table``: see
``index.py``) say which rows are whose.

Publishing a video: its rows are written at the end of each array's data file (``pwrite``).
With the first video written ``COMMIT_SECONDS`` or more after the oldest unpublished one (a group
commit: a handful of fsyncs a second at most, however many videos a GPU finishes), and when the
segment is sealed, the data files are ``fdatasync``-ed, then the JSON lines, ids and briefs of
the videos written since are appended and ``fdatasync``-ed, then their table rows. A video is
visible once its table row is complete, so a writer killed at any moment leaves at most bytes no
row points to: readers ignore them, and the next run redoes those videos (the ones written since
the last commit) in a segment of its own. Nothing is ever renamed over, hard-linked, locked or
exchanged: segment folders and files are created with ``O_EXCL`` and only appended to by their
owner, which is all NFS, Lustre and GPFS need to provide. A live writer's thread touches its
table's mtime every ``HEARTBEAT_SECONDS / 4`` (its heartbeat), and the writer checks at each
commit that its segment still exists, so a store replaced under it is noticed and nothing is
published.

Long module: the segment format is one contract (row plan, index files, seal); its writer is kept
beside the row plan it writes.

When a writer finishes (the end of a run, a roll-over at ``segment_bytes``, or Ctrl-C) it seals
its segment: each data file gets a Zarr v3 shard index after its rows (``sharding_indexed``, one
inner chunk per frame, index at the end, crc32c) and its ``zarr.json`` (written to a temporary
name, then renamed to its new name), so ``zarr.open_group(store)`` reads every sealed array
without featcache. ``featcache cache pack`` seals and merges the segments of killed writers.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import threading
import time
import uuid

import numpy as np

from featcache.cache import index, schema
from featcache.cache.facts import store_attrs
from featcache.errors import FeatcacheError

INDEX = "index"  # a uint8 array of JSON lines: its one chunk file is index/0
INDEX_FILE = os.path.join(INDEX, "0")
HEARTBEAT_SECONDS = 120.0  # an unsealed segment whose table was touched this recently has a live writer
DATA = "0.0.0.0"  # the one chunk (shard) of each array: v2 chunk keys, no nested chunk folders
SEGMENT_BYTES = 4 << 30  # a writer rolls over to a new segment past this many bytes of data
COMMIT_SECONDS = 1.0  # a durable writer's videos are published at most this long after their rows are written
# (FEATCACHE_COMMIT_SECONDS overrides it; 0: every video at once, two fsyncs each)
_KEY_ENCODING = {"name": "v2", "separator": "."}
_NAME = re.compile(r"[^A-Za-z0-9.-]+")


# ------------------------------------------------------------------ array plan
def row_plan(attrs: dict) -> dict[str, tuple[tuple[int, ...], str, tuple[str, ...], bool]]:
    """name -> (row shape, dtype, dimension names, sharded) of every segment array a store with
    root attributes ``attrs`` may hold. Rows are frames, source frames (``luv_scores``) or videos
    (``channel_scales``); sharded arrays have one inner chunk per row, so Zarr reads a frame alone."""
    facts = store_attrs(attrs)
    tok, dtype = facts.tokens, facts.dtype
    frame = (len(facts.layers), tok.num_tokens, tok.dim)
    dims = ("frame", "layer", "token", "channel")
    plan = {schema.TOKENS: (frame, dtype, dims, True),
            schema.LUV_SCORES: ((), "float32", ("source_frame",), False)}
    if dtype == "int8":
        plan[schema.TOKEN_SCALES] = (frame[:2], "float16", dims[:3], True)
        plan[schema.CHANNEL_SCALES] = ((frame[0], frame[2]), "float32", ("video", "layer", "channel"), False)
    if facts.cut:
        plan[schema.CUT] = (frame[1:], "float16", ("frame", "token", "channel"), True)
    if facts.crops:
        plan[schema.SIDE_CROPS] = ((2, *frame), dtype, ("frame", "crop", "layer", "token", "channel"), True)
    if facts.views:  # K training views of each frame, frames first like side_crops
        k = facts.views.count
        plan[schema.VIEWS] = ((k, *frame), dtype, ("frame", "view", "layer", "token", "channel"), True)
        if dtype == "int8":
            plan[schema.VIEW_SCALES] = ((k, *frame[:2]), "float16", ("frame", "view", "layer", "token"), True)
    return plan


def stage_bytes(tokens: np.ndarray, attrs: dict) -> int:
    """Bytes of a video's arrays other than its LUV scores (what summaries call token data)."""
    return arrays_bytes(video_arrays(attrs, len(tokens)))


def arrays_bytes(plan: list[tuple], skip: tuple[str, ...] = ()) -> int:
    """Data bytes of a ``video_arrays`` plan, without ``skip``."""
    return sum(int(np.prod(shape)) * np.dtype(kind).itemsize for name, shape, kind, _ in plan if name not in skip)


def frame_bytes(attrs: dict) -> int:
    """Bytes per cached frame of a store with root attributes ``attrs`` (the per-video channel
    scales of int8 stores left out)."""
    return arrays_bytes(video_arrays(attrs, 1), skip=(schema.CHANNEL_SCALES,))


def video_arrays(attrs: dict, frames: int, source_frames: int | None = None) -> list[tuple]:
    """(name, shape, dtype, dimension names) of every array a video of ``frames`` cached frames
    holds, as readers return them (``source_frames``: LUV scores, when kept)."""
    out = []
    for name, (row, kind, dims, _) in row_plan(attrs).items():
        if name == schema.LUV_SCORES:
            if source_frames:
                out.append((name, (source_frames,), kind, dims))
        elif name == schema.CHANNEL_SCALES:
            out.append((name, row, kind, dims[1:]))
        elif name == schema.SIDE_CROPS:
            out.append((name, (2, frames, *row[1:]), kind, ("crop", "frame", *dims[2:])))
        elif name in (schema.VIEWS, schema.VIEW_SCALES):
            out.append((name, (row[0], frames, *row[1:]), kind, ("view", "frame", *dims[2:])))
        else:
            out.append((name, (frames, *row), kind, dims))
    return out


def row_bytes(plan_entry: tuple) -> int:
    """Bytes of one row of a :func:`row_plan` entry."""
    shape, kind = plan_entry[:2]
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(kind).itemsize


def video_rows(attrs: dict, arrays: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """A video's arrays (as the reader returns them) -> the rows its segment arrays get."""
    plan, out = row_plan(attrs), {}
    for name, value in arrays.items():
        if value is None:
            continue
        if name not in plan:
            raise ValueError(f"{name}: not an array of this store")
        if name in (schema.SIDE_CROPS, schema.VIEWS, schema.VIEW_SCALES):
            value = np.moveaxis(value, 1, 0)  # (2 or K, T, ...) -> (T, 2 or K, ...): frames first, like every array
        elif name == schema.CHANNEL_SCALES:
            value = value[None]  # one row per video
        shape, kind = plan[name][:2]
        out[name] = np.ascontiguousarray(value, dtype=kind).reshape(-1, *shape)
    return out


def from_rows(name: str, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`video_rows` for one array."""
    if name in (schema.SIDE_CROPS, schema.VIEWS, schema.VIEW_SCALES):
        return np.moveaxis(rows, 0, 1)
    if name == schema.CHANNEL_SCALES:
        return rows[0]
    return rows


def index_bytes(record: dict, placed: dict[str, list[int]], policies: list[str], generation: int = 0,
                table: np.dtype = index.TABLE) -> dict[str, int]:
    """Bytes one published video adds to each index file of its segment (the writer's and
    ``featcache estimate``'s): its JSON line, id, brief and table row."""
    crc = dict.fromkeys(placed, 0)
    parts = index.encode(record, placed, generation, crc, policies, table)
    return {**{which: len(part) for which, part in zip(index.FILES[:-1], parts)}, "table": table.itemsize}


def array_metadata(name: str, rows: int, attrs: dict) -> bytes:
    """The ``zarr.json`` of a sealed segment array of ``rows`` rows, rendered by zarr itself."""
    import zarr
    from zarr.codecs import BytesCodec

    shape, kind, dims, sharded = row_plan(attrs)[name]
    full = (rows, *shape)
    store = zarr.storage.MemoryStore()
    if sharded:
        zarr.create_array(store, shape=full, chunks=(1, *shape), shards=full, dtype=kind, compressors=None,
                          serializer=BytesCodec(), chunk_key_encoding=_KEY_ENCODING, dimension_names=dims)
    else:
        zarr.create_array(store, shape=full, chunks=full, dtype=kind, compressors=None,
                          chunk_key_encoding=_KEY_ENCODING, dimension_names=dims)
    return _store_bytes(store, "zarr.json")


_INDEX_FORMATS = {
    "index": "JSON lines, UTF-8: one published video per line (record, rows [start, count] per array, "
             "generation, crc: crc32c of its rows)",
    "ids": "UTF-8 video ids, one per line, in the order of the table's rows",
    "labels": "UTF-8 lines, labels tab-separated, one line per video, in the order of the table's rows",
    "positions": "int32 blocks, one per video: [k, policy index x k, length x k, positions...] (featcache.cache.index)",
    "table": "fixed-width little-endian rows, one per published video: numpy dtype featcache.cache.index.TABLE "
             "(featcache.cache.index.TABLE_VIEWS in stores whose storage.table_arrays lists views; "
             "docs/cache-format.md lists its fields)",
}


def index_metadata(nbytes: int, which: str = "index") -> bytes:
    """The ``zarr.json`` of a sealed index file: its ``nbytes`` bytes as one chunk (uint8; int32
    values for positions)."""
    import zarr

    store = zarr.storage.MemoryStore()
    kind = "int32" if which == "positions" else "uint8"
    n = nbytes // np.dtype(kind).itemsize
    zarr.create_array(store, shape=(n,), chunks=(max(n, 1),), dtype=kind, compressors=None,
                      chunk_key_encoding=_KEY_ENCODING, dimension_names=("value" if kind == "int32" else "byte",),
                      attributes={"format": _INDEX_FORMATS[which]})
    return _store_bytes(store, "zarr.json")


def segment_attrs(root_attrs: dict, task: str | None = None, pid: int | None = None) -> dict:
    """What a segment's group records: who writes it (host, pid, task) and a copy of the store's
    root attributes, from which ``cache repair`` rebuilds a lost root ``zarr.json``."""
    return {"featcache_segment": {
        "host": os.uname().nodename, "pid": os.getpid() if pid is None else pid, "task": task,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "store": root_attrs}}


def group_metadata(attributes: dict) -> bytes:
    """A group's ``zarr.json``, rendered by zarr itself."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    docs = GroupMetadata(attributes=attributes).to_buffer_dict(default_buffer_prototype())
    return docs["zarr.json"].to_bytes()


def shard_index(rows: int, row_bytes: int) -> bytes:
    """The Zarr v3 shard index of ``rows`` contiguous uncompressed rows: (offset, nbytes) per inner
    chunk as little-endian uint64, then their crc32c (zarr's default ``index_codecs``)."""
    import google_crc32c

    index = np.empty((rows, 2), "<u8")
    index[:, 0] = np.arange(rows, dtype=np.uint64) * row_bytes
    index[:, 1] = row_bytes
    raw = index.tobytes()
    return raw + google_crc32c.value(raw).to_bytes(4, "little")


def sealed_bytes(name: str, rows: int, attrs: dict) -> int:
    """Bytes the seal adds to one array: its shard index and its zarr.json."""
    sharded = row_plan(attrs)[name][3]
    return (16 * rows + 4 if sharded else 0) + len(array_metadata(name, rows, attrs))


def _store_bytes(store, key: str) -> bytes:
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    buf = asyncio.run(store.get(key, prototype=default_buffer_prototype()))
    return buf.to_bytes()


def segment_name() -> str:
    """Sortable by creation time, unique per process: ``<UTC time>-<host>-<pid>-<random>``."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    host = _NAME.sub("_", os.uname().nodename)[:40] or "host"
    return f"{now}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------------ writing
def env_number(name: str, default, kind=int):
    """A non-negative number from the environment variable ``name`` (``default`` when unset)."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if value < 0:
        raise FeatcacheError(f"{name}={text!r}: expected a {'whole ' if kind is int else ''}number >= 0")
    return value


class StoreReplaced(OSError):
    """The store this writer writes into was deleted or replaced (``--overwrite`` by another run)."""


class SegmentWriter:
    """Appends videos to one segment this process alone owns (created on the first append)."""

    def __init__(self, root: str, attrs: dict, durable: bool = True, task: str | None = None):
        self.root, self.attrs, self.durable, self.task = root, attrs, durable, task
        self.plan = row_plan(attrs)
        self.table = index.table_of(attrs)  # the row width of this store's tables
        self.name: str | None = None
        self.last_name = ""  # the segment this writer wrote last (named in errors after its seal)
        self.fds: dict[str, int] = {}
        self.cursor: dict[str, int] = {}  # rows written per array
        self.index_fds: dict[str, int] = {}  # index, ids, brief, table -> fd
        self.index_sizes: dict[str, int] = {}  # their published bytes
        self.rows = 0  # table rows published
        self.bytes = 0
        self.pending: list[tuple] = []  # (line, id, brief, table row, video id) written, not yet published
        self.lost: list[str] = []  # videos of a failed commit: written, never published (the next run redoes them)
        self.dirty: set[str] = set()  # arrays with rows not yet fdatasync-ed
        self.oldest = 0.0  # when the first pending video was written
        self.beating: threading.Event | None = None  # set to stop this segment's heartbeat thread
        self.commit_s = env_number("FEATCACHE_COMMIT_SECONDS", COMMIT_SECONDS, float)

    @property
    def path(self) -> str:
        """This segment's folder (after a seal or a failed creation: the last one's)."""
        return os.path.join(self.root, schema.SEGMENTS, self.name or self.last_name)

    @property
    def index_fd(self) -> int | None:  # the JSON lines (what older code and tests call the index)
        return self.index_fds.get("index")

    def _create(self) -> None:
        """A new segment: its folder (``mkdir``, exclusive), group and empty index files. On any
        error what was made of it is removed again (it is ours alone) and the error raised."""
        check_same_store(self.root, self.attrs)
        os.makedirs(os.path.join(self.root, schema.SEGMENTS), exist_ok=True)
        while True:
            self.name = self.last_name = segment_name()
            try:
                os.mkdir(self.path)  # atomic and exclusive on every POSIX file system, NFS included
                break
            except FileExistsError:
                continue
        try:
            _write_new(os.path.join(self.path, "zarr.json"), group_metadata(segment_attrs(self.attrs, self.task)))
            for which in index.FILES:
                os.mkdir(os.path.join(self.path, which))
                self.index_fds[which] = os.open(os.path.join(self.path, which, "0"),
                                                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                self.index_sizes[which] = 0
        except OSError:
            self._discard()
            raise
        self.beating = threading.Event()
        self.beat_thread = threading.Thread(target=_heartbeat, args=(self.index_fds["table"], self.beating),
                                            daemon=True, name=f"featcache-heartbeat-{self.name}")
        self.beat_thread.start()

    def _discard(self) -> None:
        """Close and remove a segment that holds no published video (its creation failed)."""
        import shutil

        self._stop_heartbeat()
        for fd in [*self.index_fds.values(), *self.fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.path, ignore_errors=True)
        self.name, self.index_fds, self.index_sizes, self.fds, self.cursor = None, {}, {}, {}, {}

    def _fd(self, name: str) -> int:
        if name not in self.fds:
            os.mkdir(os.path.join(self.path, name))
            self.fds[name] = os.open(os.path.join(self.path, name, DATA), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.cursor[name] = 0
        return self.fds[name]

    def append(self, record: dict, rows: dict[str, np.ndarray], generation: int) -> index.IndexEntry:
        """Write one video (its rows per array) and publish it now (``durable=False``) or with
        the next group commit; returns its index entry."""
        if self.name is None:
            self._create()
        placed = {}
        for name, block in rows.items():
            fd = self._fd(name)
            row_bytes = block[0].nbytes if len(block) else 0
            start = self.cursor[name]
            _pwrite_all(fd, memoryview(np.ascontiguousarray(block)).cast("B"), start * row_bytes)
            placed[name] = [start, len(block)]
        for name, (start, count) in placed.items():
            self.cursor[name] = start + count
            self.bytes += count * rows[name][0].nbytes if count else 0
        crc = index.rows_crc(rows)
        parts = index.encode(record, placed, generation, crc, list(store_attrs(self.attrs).policies), self.table)
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append((*parts, record["video_id"]))
        self.dirty.update(rows)
        if not self.durable or time.monotonic() - self.oldest >= self.commit_s:
            self.commit()
        return index.IndexEntry(record, placed, generation, crc, self.name)

    def commit(self) -> None:
        """Publish the videos written since the last commit: the data files ``fdatasync``-ed,
        then their JSON lines, ids, labels and positions appended (one write each) and ``fdatasync``-ed,
        then their table rows. A commit that fails is never retried: its videos go to ``lost``
        and whatever it wrote is cut off the index files (a retry would append after a torn half).
        A store deleted or replaced under this writer is noticed here: nothing is published."""
        if not self.pending:
            return
        parts = {which: b"".join(p[i] for p in self.pending) for i, which in enumerate(index.FILES[:-1])}
        try:
            if not os.path.isdir(self.path):
                raise StoreReplaced(f"this run's segment {self.path} was deleted (the store replaced or removed "
                                    "by another run)")
            if self.durable:
                for name in self.dirty:
                    os.fdatasync(self.fds[name])
            offsets = {which: self.index_sizes[which] for which in parts}
            for which, data in parts.items():
                _write_all(self.index_fds[which], data)
            if self.durable:
                for which in parts:
                    os.fdatasync(self.index_fds[which])
            table = []
            for pending in self.pending:
                table.append(index.place(pending[-2], offsets))
                for i, which in enumerate(index.FILES[:-1]):
                    offsets[which] += len(pending[i])
            table = b"".join(table)
            _write_all(self.index_fds["table"], table)
            if self.durable:
                os.fdatasync(self.index_fds["table"])
        except OSError:
            self.lost += [p[-1] for p in self.pending]
            self.pending, self.dirty = [], set()
            for which, fd in self.index_fds.items():  # if even this fails, readers skip a torn last row
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.index_sizes[which])
            raise
        for which, data in parts.items():
            self.index_sizes[which] += len(data)
        self.index_sizes["table"] += len(table)
        self.rows += len(self.pending)
        self.pending, self.dirty = [], set()

    def seal(self) -> None:
        """Write each array's shard index and zarr.json; the segment takes no more videos. The
        file descriptors are closed whatever fails; the first error is raised."""
        if self.name is None:
            return
        try:
            self.commit()
            self._seal_files()
        finally:
            self._stop_heartbeat()
            for fd in [*self.fds.values(), *self.index_fds.values()]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds, self.cursor, self.index_fds, self.name, self.bytes = {}, {}, {}, None, 0

    def _stop_heartbeat(self) -> None:
        """Stop the heartbeat thread before the table's descriptor is closed (and reused)."""
        if self.beating is not None:
            self.beating.set()
            self.beat_thread.join(timeout=5)
            self.beating = None

    def _seal_files(self) -> None:
        for name, fd in self.fds.items():
            rows, size = self.cursor[name], row_bytes(self.plan[name])
            os.ftruncate(fd, rows * size)  # drops the rows of a publish that raised half-way
            if self.plan[name][3] and rows:  # sharded
                _pwrite_all(fd, memoryview(shard_index(rows, size)), rows * size)
            os.fsync(fd)
            if rows:
                _write_new(os.path.join(self.path, name, "zarr.json"), array_metadata(name, rows, self.attrs))
        for which in index.FILES:  # the table last
            os.ftruncate(self.index_fds[which], self.index_sizes[which])
            os.fsync(self.index_fds[which])
            _write_new(os.path.join(self.path, which, "zarr.json"), index_metadata(self.index_sizes[which], which))


def _heartbeat(fd: int, stop: threading.Event) -> None:
    """Touch the table's mtime every ``HEARTBEAT_SECONDS / 4`` until ``stop``: however long one
    video takes, ``--overwrite`` and a duplicate writer on another host see the segment is live."""
    while not stop.wait(HEARTBEAT_SECONDS / 4):
        try:
            os.utime(fd)
        except OSError:
            return  # the file is gone (the store replaced) or closed: the next commit says so


def live_writers(root: str, task: str | None = None) -> list[str]:
    """One line per writer of the store at ``root`` that is alive now (of ``task`` only, when
    given): an unsealed segment whose heartbeat is less than ``HEARTBEAT_SECONDS`` old and, on
    this host, whose process exists. Never this process."""
    folder, out = os.path.join(root, schema.SEGMENTS), []
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError:
        return []
    host = os.uname().nodename
    for name in names:
        path = os.path.join(folder, name)
        if index.is_sealed(path):
            continue  # its writer is done
        try:
            with open(os.path.join(path, "zarr.json"), "rb") as f:
                who = json.loads(f.read())["attributes"]["featcache_segment"]
            beat = os.path.getmtime(os.path.join(path, "table", "0"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an older segment (no heartbeat) or one being created
        if task is not None and who.get("task") != task:
            continue
        age = time.time() - beat
        # a fresh heartbeat; on this host its process must exist too (a kill -9 ends it at once)
        alive = age < HEARTBEAT_SECONDS and (who.get("host") != host or who.get("pid") != os.getpid()
                                            and _pid_alive(who.get("pid")))
        if alive:
            out.append(f"{who.get('host')} pid {who.get('pid')} (segment {name}, heartbeat {age:.0f} s ago)")
    return out


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError) as exc:
        return isinstance(exc, PermissionError)  # it exists, run by another user
    return True


def check_same_store(root: str, attrs: dict) -> None:
    """Raise StoreReplaced when the store at ``root`` is not the one whose attributes are ``attrs``
    (deleted, or replaced by ``--overwrite`` since this writer opened it)."""
    try:
        with open(os.path.join(root, "zarr.json"), "rb") as f:
            now = json.loads(f.read()).get("attributes", {})
    except (OSError, ValueError) as exc:
        raise StoreReplaced(f"{root}: the store this run writes into is gone or unreadable ({exc})") from None
    if (now.get("store_id"), now.get("created_at")) != (attrs.get("store_id"), attrs.get("created_at")):
        raise StoreReplaced(f"{root}: the store was replaced by another run (--overwrite) while this run wrote "
                            "into it; this run's later videos are not in it")


def write_replacing(path: str, data: bytes) -> None:
    """Replace a small metadata file whole: a temporary file, fsync-ed, renamed over it (plain
    rename(2), atomic on NFS, Lustre and GPFS); the root ``zarr.json`` only."""
    _write_new(path, data)


def _write_new(path: str, data: bytes) -> None:
    """Write a complete file under a temporary name, then rename it to its (new) name; on any
    error the temporary file is removed again (a full disk leaves no ``*.tmp-*`` behind)."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
