"""The packed layout (schema 2): segments that one writer each appends to, and their indexes.

A segment is a Zarr group ``segments/<name>/`` owned by the one process that created it. Its
arrays hold the frames of many videos concatenated along the first axis (one data file each,
``<array>/0.0.0.0``), and ``index/0`` holds one JSON line per published video (UTF-8; sealed, it
is a 1-D uint8 Zarr array of those bytes)::

    {"record": {...the video's record...}, "rows": {"tokens": [start, count], ...}, "generation": 0}

Publishing a video: its rows are written at the end of each array's data file (``pwrite``).
With the first video written ``COMMIT_SECONDS`` or more after the oldest unpublished one (a group
commit: two fsyncs a second at most, however many videos a GPU finishes), and when the segment is sealed, the data files are ``fdatasync``-ed,
then the index lines of the videos written since are appended with one ``write`` and the index
is ``fdatasync``-ed. A video is visible once its line is complete, so a writer killed at any
moment leaves at most rows no line points to, or a last line without its newline: readers ignore
both, and the next run redoes those videos (the ones written since the last commit) in a segment of its own. Nothing is ever renamed over,
hard-linked, locked or exchanged: segment folders and files are created with ``O_EXCL`` and only
appended to by their owner, which is all NFS, Lustre and GPFS need to provide.

Long module: the segment format is one contract (row plan, index lines, seal, resolve); its
writer and reader are kept side by side so that a change to one is seen against the other.

When a writer finishes (the end of a run, a roll-over at ``segment_bytes``, or Ctrl-C) it seals
its segment: each data file gets a Zarr v3 shard index after its rows (``sharding_indexed``, one
inner chunk per frame, index at the end, crc32c) and its ``zarr.json`` (written to a temporary
name, then renamed to its new name), so ``zarr.open_group(store)`` reads every sealed array
without featcache. ``featcache cache pack`` seals and merges the segments of killed writers.

Several copies of a video can exist (a grown video is appended again with ``generation + 1``; two
writers racing on the same video both write it): :func:`resolve` picks one per video.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import re
import time
import uuid

import numpy as np

from featcache.cache import schema
from featcache.errors import FeatcacheError

INDEX = "index"  # a uint8 array of JSON lines: its one chunk file is index/0
INDEX_FILE = os.path.join(INDEX, "0")
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
    tok, dtype = attrs["tokens"], attrs["storage"]["dtype"]
    frame = (len(attrs["layers"]), tok["num_tokens"], tok["dim"])
    dims = ("frame", "layer", "token", "channel")
    plan = {schema.TOKENS: (frame, dtype, dims, True),
            schema.LUV_SCORES: ((), "float32", ("source_frame",), False)}
    if dtype == "int8":
        plan[schema.TOKEN_SCALES] = (frame[:2], "float16", dims[:3], True)
        plan[schema.CHANNEL_SCALES] = ((frame[0], frame[2]), "float32", ("video", "layer", "channel"), False)
    if attrs.get("cut"):
        plan[schema.CUT] = (frame[1:], "float16", ("frame", "token", "channel"), True)
    if attrs.get("crops"):
        plan[schema.SIDE_CROPS] = ((2, *frame), dtype, ("frame", "crop", "layer", "token", "channel"), True)
    return plan


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
        if name == schema.SIDE_CROPS:
            value = np.moveaxis(value, 1, 0)  # (2, T, ...) -> (T, 2, ...): frames first, like every array
        elif name == schema.CHANNEL_SCALES:
            value = value[None]  # one row per video
        shape, kind = plan[name][:2]
        out[name] = np.ascontiguousarray(value, dtype=kind).reshape(-1, *shape)
    return out


def from_rows(name: str, rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`video_rows` for one array."""
    if name == schema.SIDE_CROPS:
        return np.moveaxis(rows, 0, 1)
    if name == schema.CHANNEL_SCALES:
        return rows[0]
    return rows


def index_line(record: dict, rows: dict[str, list[int]], generation: int) -> bytes:
    """The index line of one published video (the writer's and ``featcache estimate``'s)."""
    return (json.dumps({"record": record, "rows": rows, "generation": generation},
                       separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


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


def index_metadata(nbytes: int) -> bytes:
    """The ``zarr.json`` of a sealed index: ``nbytes`` bytes of JSON lines as one uint8 chunk."""
    import zarr

    store = zarr.storage.MemoryStore()
    zarr.create_array(store, shape=(nbytes,), chunks=(nbytes,), dtype="uint8", compressors=None,
                      chunk_key_encoding=_KEY_ENCODING, dimension_names=("byte",),
                      attributes={"format": "JSON lines, UTF-8: one published video per line "
                                            "(record, rows [start, count] per array, generation)"})
    return _store_bytes(store, "zarr.json")


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


# ------------------------------------------------------------------ reading
class Segment:
    """What a reader knows of one segment: its index lines and whether they ended cleanly."""

    def __init__(self, root: str, name: str):
        self.name, self.path = name, os.path.join(root, schema.SEGMENTS, name)
        self.entries: list[dict] = []
        self.tail = False  # a last line without its newline: an interrupted publish
        self.bad_lines: list[int] = []  # complete lines that do not parse: corruption
        try:
            with open(os.path.join(self.path, INDEX_FILE), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        if lines and lines[-1]:
            self.tail = True
        try:  # every line whole: one parse of them all (~2x faster than a parse per line)
            entries = json.loads(b"[" + b",".join(lines[:-1]) + b"]")
            for entry in entries:
                entry["record"]["video_id"]  # noqa: B018
                entry["segment"] = name
            self.entries = entries
            return
        except (ValueError, KeyError, TypeError):
            pass
        for number, line in enumerate(lines[:-1], 1):
            try:
                entry = json.loads(line)
                entry["record"]["video_id"]  # noqa: B018 -- a line without it is not an entry
            except (ValueError, KeyError, TypeError):
                self.bad_lines.append(number)
                continue
            entry["segment"] = name
            self.entries.append(entry)

    @property
    def sealed(self) -> bool:
        return os.path.exists(os.path.join(self.path, schema.TOKENS, "zarr.json"))


def read_segments(root: str) -> list[Segment]:
    """Every segment of the store at ``root``, oldest first: one listing, one read per segment."""
    folder = os.path.join(root, schema.SEGMENTS)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except FileNotFoundError:
        return []
    with no_gc():
        return [Segment(root, name) for name in names]


@contextlib.contextmanager
def no_gc():
    """Parsing an index allocates millions of small dicts and lists, none of them cyclic; the
    cyclic collector would traverse them again and again (4x slower at 50k videos)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def resolve(segments: list[Segment]) -> dict[str, dict]:
    """key -> the entry readers use: the highest generation wins (a grown video, a retry after a
    failure, a ``cache repair`` record over a broken copy); at equal generations a done copy beats
    a failure, the first published done copy wins (a racing duplicate), and the last failure."""
    best: dict[str, dict] = {}
    for segment in segments:
        for entry in segment.entries:
            key = schema.video_key(entry["record"]["video_id"])
            cur = best.get(key)
            if cur is None:
                best[key] = entry
                continue
            gen, cur_gen = entry.get("generation", 0), cur.get("generation", 0)
            done, cur_done = entry["record"].get("status") == "done", cur["record"].get("status") == "done"
            if gen > cur_gen or gen == cur_gen and (done and not cur_done or not done and not cur_done):
                best[key] = entry
    return best


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


class SegmentWriter:
    """Appends videos to one segment this process alone owns (created on the first append)."""

    def __init__(self, root: str, attrs: dict, durable: bool = True):
        self.root, self.attrs, self.durable = root, attrs, durable
        self.plan = row_plan(attrs)
        self.name: str | None = None
        self.fds: dict[str, int] = {}
        self.cursor: dict[str, int] = {}  # rows written per array
        self.index_fd: int | None = None
        self.bytes = 0
        self.pending: list[tuple[bytes, str]] = []  # (index line, video id) written, not yet published
        self.lost: list[str] = []  # videos of a failed commit: written, never published (the next run redoes them)
        self.dirty: set[str] = set()  # arrays with rows not yet fdatasync-ed
        self.oldest = 0.0  # when the first pending video was written
        self.commit_s = env_number("FEATCACHE_COMMIT_SECONDS", COMMIT_SECONDS, float)

    @property
    def path(self) -> str:
        return os.path.join(self.root, schema.SEGMENTS, self.name)

    def _create(self) -> None:
        os.makedirs(os.path.join(self.root, schema.SEGMENTS), exist_ok=True)
        while True:
            self.name = segment_name()
            try:
                os.mkdir(self.path)  # atomic and exclusive on every POSIX file system, NFS included
                break
            except FileExistsError:
                continue
        _write_new(os.path.join(self.path, "zarr.json"), group_metadata(
            {"featcache_segment": {"host": os.uname().nodename, "pid": os.getpid(),
                                   "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                       timespec="seconds")}}))
        os.mkdir(os.path.join(self.path, INDEX))
        self.index_fd = os.open(os.path.join(self.path, INDEX_FILE),
                                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self.index_bytes = 0

    def _fd(self, name: str) -> int:
        if name not in self.fds:
            os.mkdir(os.path.join(self.path, name))
            self.fds[name] = os.open(os.path.join(self.path, name, DATA), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.cursor[name] = 0
        return self.fds[name]

    def append(self, record: dict, rows: dict[str, np.ndarray], generation: int) -> dict:
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
        line = index_line(record, placed, generation)
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append((line, record["video_id"]))
        self.dirty.update(rows)
        if not self.durable or time.monotonic() - self.oldest >= self.commit_s:
            self.commit()
        return {"record": record, "rows": placed, "generation": generation, "segment": self.name}

    def commit(self) -> None:
        """Publish the videos written since the last commit: the data files ``fdatasync``-ed,
        then their index lines appended in one write and the index ``fdatasync``-ed. A commit
        that fails is never retried: its videos go to ``lost`` and whatever it wrote of their
        lines is cut off the index (a retry would append them after a torn half: a corrupt line)."""
        if not self.pending:
            return
        lines = b"".join(line for line, _ in self.pending)
        try:
            if self.durable:
                for name in self.dirty:
                    os.fdatasync(self.fds[name])
            _write_all(self.index_fd, lines)
            if self.durable:
                os.fdatasync(self.index_fd)
        except OSError:
            self.lost += [video_id for _, video_id in self.pending]
            self.pending, self.dirty = [], set()
            with contextlib.suppress(OSError):  # if even this fails, readers skip a torn last line
                os.ftruncate(self.index_fd, self.index_bytes)
            raise
        self.index_bytes += len(lines)
        self.pending, self.dirty = [], set()

    def seal(self) -> None:
        """Write each array's shard index and zarr.json; the segment takes no more videos."""
        if self.name is None:
            return
        self.commit()
        for name, fd in self.fds.items():
            rows, size = self.cursor[name], row_bytes(self.plan[name])
            os.ftruncate(fd, rows * size)  # drops the rows of a publish that raised half-way
            if self.plan[name][3] and rows:  # sharded
                _pwrite_all(fd, memoryview(shard_index(rows, size)), rows * size)
            os.fsync(fd)
            os.close(fd)
            if rows:
                _write_new(os.path.join(self.path, name, "zarr.json"), array_metadata(name, rows, self.attrs))
        os.fsync(self.index_fd)
        os.close(self.index_fd)
        _write_new(os.path.join(self.path, INDEX, "zarr.json"), index_metadata(self.index_bytes))
        self.fds, self.cursor, self.index_fd, self.name, self.bytes = {}, {}, None, None, 0


def _write_new(path: str, data: bytes) -> None:
    """Write a complete file under a temporary name, then rename it to its (new) name."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
