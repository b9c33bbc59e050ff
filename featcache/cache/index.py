"""The columnar index of a packed store: what every open needs, as fixed-width binary rows.

Each segment holds, beside its data files, five append-only index files (``<file>/0``; sealed,
each is a 1-D Zarr array of its bytes or values):

``index/0``      one JSON line per published video (``record``, ``rows``, ``generation``, ``crc``):
                 the full record, read only for the videos asked for, by offset.
``ids/0``        the video ids, UTF-8, one per line: listing a store reads these bytes and no JSON.
``labels/0``     each video's labels, UTF-8, tab-separated, one line per video.
``positions/0``  int32: per video ``[k, policy index x k, length x k, positions...]``, the
                 positions into its cached frames of each frame policy it holds (the index of
                 the policy in the store's ``frames.policies``): a view's frames for a whole split
                 in one numpy gather, no JSON.
``table/0``      one :data:`TABLE` row (little-endian, fixed width) per published video: its key's
                 hash, status, split, generation, frame count, row start, count and crc32c per
                 array, where its line, id, labels and positions lie, and a crc32c of the row itself.

A video is published when its table row is complete: the data files, then ``index``, ``ids``,
``labels`` and ``positions`` are ``fdatasync``-ed before the rows that point into them are
appended, so a writer killed at any moment leaves at most bytes no complete row points to.
``numpy.fromfile(path, dtype=TABLE)`` reads a table without featcache; docs/cache-format.md lists
the fields.

The row is versioned by the arrays it has columns for: :data:`TABLE` (156 bytes, six arrays) in
every store without training views, :data:`TABLE_VIEWS` (180 bytes, with ``views`` and
``view_scales``) in stores extracted with ``--train-views``, which name its columns in their root
attributes (``storage.table_arrays``, :func:`table_of`), so a reader knows the width before it
reads a table and older stores read unchanged.

Segments written before the table existed (JSON lines only) are read as before and given the
same rows in memory (``legacy``); ``featcache cache pack`` rewrites them with tables.

Long module: the row layout, its writer-side encoding and the reader's resolution are one
contract, kept side by side.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os

import numpy as np

from featcache.cache import schema
from featcache.cache.facts import store_attrs

ARRAYS = (schema.TOKENS, schema.LUV_SCORES, schema.TOKEN_SCALES, schema.CHANNEL_SCALES, schema.CUT,
          schema.SIDE_CROPS)  # the order of the start/count columns (of TABLE)
VIEW_ARRAYS = (*ARRAYS, schema.VIEWS, schema.VIEW_SCALES)  # ... of TABLE_VIEWS (stores with training views)
SPLIT_CODES = ("", "train", "val", "test")  # 255: another split (the brief has it)
OTHER_SPLIT = 255
DONE, FAILED = 1, 0
FILES = ("index", "ids", "labels", "positions", "table")  # the table last: written last, sealed last
_OFFSET = {"index": "line", "ids": "ids", "labels": "labels"}
_LENGTH = {"index": "line_len", "ids": "id_len", "labels": "labels_len"}


def table_dtype(arrays: tuple[str, ...]) -> np.dtype:
    """The row of a table whose start/count/crc columns are ``arrays`` (one version per tuple)."""
    return np.dtype([
        ("hash", "<u8"),         # the first 8 bytes of blake2b(video key), little-endian
        ("line", "<u8"),         # byte offset of the video's JSON line in index/0
        ("ids", "<u8"),          # byte offset of its id in ids/0
        ("labels", "<u8"),       # byte offset of its labels in labels/0
        ("positions", "<u8"),    # offset (in int32 values) of its block in positions/0
        ("line_len", "<u4"),     # bytes of the JSON line, newline included
        ("id_len", "<u4"),       # bytes of the id, newline included
        ("labels_len", "<u4"),   # bytes of the labels, newline included
        ("positions_len", "<u4"),  # int32 values of its positions block
        ("generation", "<u4"),
        ("frames", "<u4"),       # cached frames (rows of tokens)
        ("policies", "<u2"),     # how many of the store's frame policies the video holds
        ("status", "u1"),        # 1 done, 0 failed
        ("split", "u1"),         # index into SPLIT_CODES; 255 another
        ("start", "<u4", (len(arrays),)),   # first row of each array (``arrays`` order)
        ("count", "<u4", (len(arrays),)),   # rows of each array (0: absent)
        ("crc", "<u4", (len(arrays),)),     # crc32c of each array's rows of the video
        ("line_crc", "<u4"),     # crc32c of its JSON line
        ("pad", "<u4"),          # zero
        ("row_check", "<u8"),    # sum of this row's other 32-bit words times check_weights, mod 2**64
    ])


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One published copy of a video as its JSON line in ``index/0`` holds it (or a writer's
    own, not yet re-read): its full ``record`` (a dict, as written), its ``rows`` (array ->
    ``[start, count]`` in its segment), its ``generation``, the crc32c of each array's rows
    (``crc``: hex strings as read from a line, ints as a writer computed them) and the segment
    it lies in (where known)."""

    record: dict
    rows: dict = dataclasses.field(default_factory=dict)
    generation: int = 0
    crc: dict = dataclasses.field(default_factory=dict)
    segment: str | None = None

    @classmethod
    def from_json(cls, line) -> "IndexEntry":
        """A parsed JSON line; TypeError/KeyError when it is not an entry (no ``record``)."""
        record = line["record"]  # TypeError for a line that is no object, KeyError for one without it
        return cls(record, line.get("rows") or {}, line.get("generation", 0), line.get("crc") or {}, line.get("segment"))

    @property
    def video_id(self) -> str:
        """The record's video id; KeyError/TypeError for a record without one."""
        return self.record["video_id"]

    @property
    def status(self) -> str | None:
        return self.record.get("status")

    @property
    def split(self) -> str:
        return self.record.get("split", "")


def _column(field: str, doc: str) -> property:
    def get(self):
        return self.rows[field]

    def put(self, value):
        self.rows[field] = value

    return property(get, put, doc=doc)


class Table:
    """Typed columns of table rows: a structured array of :func:`table_dtype` rows, or one row
    (``table[i]``). Reads and writes go through these properties, so the field names are spelled
    here and in :func:`table_dtype` only; each property is the field itself (a view: assigning
    into it writes the rows)."""

    __slots__ = ("rows",)

    def __init__(self, rows):
        self.rows = rows

    hash = _column("hash", "the first 8 bytes of blake2b(video key), little-endian")
    line = _column("line", "byte offset of the video's JSON line in index/0")
    ids = _column("ids", "byte offset of its id in ids/0")
    labels = _column("labels", "byte offset of its labels in labels/0")
    positions = _column("positions", "offset (in int32 values) of its block in positions/0")
    line_len = _column("line_len", "bytes of the JSON line, newline included")
    id_len = _column("id_len", "bytes of the id, newline included")
    labels_len = _column("labels_len", "bytes of the labels, newline included")
    positions_len = _column("positions_len", "int32 values of its positions block")
    generation = _column("generation", "the copy's generation")
    frames = _column("frames", "cached frames (rows of tokens)")
    policies = _column("policies", "how many of the store's frame policies the video holds")
    status = _column("status", "DONE or FAILED")
    split = _column("split", "index into SPLIT_CODES; OTHER_SPLIT another")
    starts = _column("start", "first row of each array (last axis: :func:`arrays_of` order)")
    counts = _column("count", "rows of each array (0: absent)")
    crcs = _column("crc", "crc32c of each array's rows")
    line_crc = _column("line_crc", "crc32c of the JSON line")
    row_check = _column("row_check", "the row's check (:func:`row_checks`)")

    @property
    def arrays(self) -> tuple[str, ...]:
        return arrays_of(self.rows.dtype)

    def start(self, name: str):
        """First row of array ``name`` (per row)."""
        return self.starts[..., self.arrays.index(name)]

    def count(self, name: str):
        """Rows of array ``name`` (per row; 0: absent)."""
        return self.counts[..., self.arrays.index(name)]

    def crc(self, name: str):
        """crc32c of array ``name``'s rows (per row)."""
        return self.crcs[..., self.arrays.index(name)]

    def offset(self, which: str):
        """Where the row's ``which`` (index, ids, labels) bytes start in their file."""
        return self.rows[_OFFSET[which]]

    def length(self, which: str):
        """Bytes of the row's ``which`` (index, ids, labels), newline included."""
        return self.rows[_LENGTH[which]]


# Versioned rows: a store's tables all have one width, decided by its root attributes
# (``storage.table_arrays``, written only by stores with training views; absent: TABLE), so a
# reader knows the width before it reads a table and older stores read unchanged.
TABLE = table_dtype(ARRAYS)  # 156 bytes: every store without training views
TABLE_VIEWS = table_dtype(VIEW_ARRAYS)  # 180 bytes: stores with training views (extract --train-views)
ROW = TABLE.itemsize
_BY_WIDTH = {len(ARRAYS): ARRAYS, len(VIEW_ARRAYS): VIEW_ARRAYS}


def table_of(attrs) -> np.dtype:
    """The table row of a store with root attributes ``attrs`` (a dict or StoreAttrs)."""
    storage = store_attrs(attrs).storage
    names = storage.table_arrays if storage else None
    if names is None:
        return TABLE
    if tuple(names) not in (ARRAYS, VIEW_ARRAYS):
        raise ValueError(f"storage.table_arrays {names}: a table this featcache does not know; upgrade featcache")
    return table_dtype(tuple(names))


def arrays_of(table) -> tuple[str, ...]:
    """The array names of a table's (or row dtype's) start/count/crc columns, in order."""
    dtype = table if isinstance(table, np.dtype) else table.dtype
    return _BY_WIDTH[(dtype.itemsize - TABLE.itemsize) // 12 + len(ARRAYS)]  # 12 bytes per array: start, count, crc


def check_weights(words: int) -> np.ndarray:
    # odd weights: an edit of any one word always changes the sum; vectorised over a whole table at open
    return (np.arange(1, words + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)


CHECK_WEIGHTS = check_weights((ROW - 8) // 4)  # of TABLE


def crc32c(data, value: int = 0) -> int:
    import google_crc32c

    return google_crc32c.extend(value, data if isinstance(data, bytes) else bytes(data))


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def split_code(split) -> int:
    return SPLIT_CODES.index(split) if split in SPLIT_CODES else OTHER_SPLIT


def rows_crc(rows: dict[str, np.ndarray]) -> dict[str, int]:
    """crc32c of each array's rows of a video (``packed.video_rows``)."""
    return {name: crc32c(np.ascontiguousarray(block).tobytes()) for name, block in rows.items()}


def brief_of(record: dict) -> dict:
    return {"split": record.get("split", ""), "labels": record.get("labels", []),
            "policies": record.get("policies", {})}


def positions_block(record: dict, policies: list[str]) -> np.ndarray:
    """``[k, policy index x k, length x k, positions...]`` of the record's policies (int32)."""
    held = [(i, record["policies"][p]) for i, p in enumerate(policies) if p in (record.get("policies") or {})]
    return np.array([len(held), *(i for i, _ in held), *(len(v) for _, v in held), *(x for _, v in held for x in v)],
                    np.int32)


def encode(record: dict, placed: dict[str, list[int]], generation: int, crc: dict[str, int],
           policies: list[str], table: np.dtype = TABLE) -> tuple[bytes, bytes, bytes, bytes, np.ndarray]:
    """A video's JSON line, id line, labels line, positions block and ``table`` row (offsets and
    row crc left to :func:`place`); ``policies``: the store's frame policies."""
    video_id = record["video_id"]
    labels = [str(x) for x in record.get("labels", [])]
    if any(c in video_id for c in "\n\r") or any(c in x for x in labels for c in "\t\n\r"):
        raise ValueError(f"video {video_id!r}: a line break in its id or a tab or line break in a label "
                         f"({labels}); give it another")
    hexes = {name: f"{value:08x}" for name, value in crc.items()}  # fixed width: estimate counts these bytes exactly
    line = (json.dumps({"record": record, "rows": placed, "generation": generation, "crc": hexes},
                       separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    ident = (video_id + "\n").encode("utf-8")
    label_line = ("\t".join(labels) + "\n").encode("utf-8")
    block = positions_block(record, policies).tobytes()
    row = np.zeros(1, table)
    t = Table(row)
    t.hash = key_hash(schema.video_key(video_id))
    t.line_len, t.id_len, t.labels_len = len(line), len(ident), len(label_line)
    t.positions_len = len(block) // 4
    t.generation = generation
    t.frames = placed.get(schema.TOKENS, [0, 0])[1]
    t.policies = len(record.get("policies") or {})
    t.status = DONE if record.get("status") == "done" else FAILED
    t.split = split_code(record.get("split", ""))
    arrays = arrays_of(table)
    if set(placed) - set(arrays):
        raise ValueError(f"arrays {sorted(set(placed) - set(arrays))} have no column in this store's table")
    for i, name in enumerate(arrays):
        if name in placed:
            t.starts[0, i], t.counts[0, i] = placed[name]
            t.crcs[0, i] = crc.get(name, 0)
    t.line_crc = crc32c(line)
    return line, ident, label_line, block, row


def place(row: np.ndarray, offsets: dict[str, int]) -> bytes:
    """Set a row's offsets (``positions`` in int32 values) and its check; its bytes."""
    t = Table(row)
    for which in ("index", "ids", "labels"):
        row[_OFFSET[which]] = offsets[which]
    t.positions = offsets["positions"] // 4
    t.row_check = row_checks(row)
    return row.tobytes()


def row_checks(table: np.ndarray) -> np.ndarray:
    """Each row's check: its 32-bit words (all but the check) times check_weights, summed mod 2**64."""
    row = table.dtype.itemsize
    weights = check_weights((row - 8) // 4)
    words = np.ascontiguousarray(table).view("<u4").reshape(len(table), row // 4)[:, :len(weights)]
    out = np.empty(len(table), np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, len(table), 1 << 16):  # in chunks: a few MB of temporaries, whatever the store's size
            out[lo:lo + (1 << 16)] = (words[lo:lo + (1 << 16)].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def rows_intact(table: np.ndarray) -> np.ndarray:
    """Per row: does its check match its words (an edited or garbage row does not)?"""
    return row_checks(table) == Table(table).row_check if len(table) else np.zeros(0, bool)


def is_sealed(segment: str) -> bool:
    """Whether the segment's writer sealed it: the last file a seal writes exists (the table's
    zarr.json; in a segment without a table, the index's)."""
    table = os.path.join(segment, "table")
    return os.path.exists(os.path.join(table if os.path.isdir(table) else os.path.join(segment, "index"), "zarr.json"))


def read_table(path: str, dtype: np.dtype = TABLE) -> tuple[np.ndarray, int]:
    """The complete rows (of ``dtype``: :func:`table_of` the store) of a table file and the bytes
    of a torn last row (0: none)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return np.zeros(0, dtype), 0
    n = size // dtype.itemsize
    table = np.fromfile(path, dtype=dtype, count=n) if n else np.zeros(0, dtype)
    return table, size - n * dtype.itemsize


# ------------------------------------------------------------------ one segment
class SegmentIndex:
    """One segment's published videos as table rows; ids, labels, positions and JSON lines read by offset.
    A segment without a table (written before it existed) is parsed whole and given the same
    rows in memory (``legacy``)."""

    def __init__(self, root: str, name: str, dtype: np.dtype = TABLE):
        self.name, self.path, self.dtype = name, os.path.join(root, schema.SEGMENTS, name), dtype
        self.bad_lines: list[int] = []  # legacy: complete lines that do not parse
        self._entries: list[IndexEntry] | None = None  # legacy: the parsed entries, one per row
        # torn: bytes of an unfinished last table row (legacy: of a last line without its newline)
        self.table, self.torn = read_table(self.file("table"), dtype)
        self.legacy = not len(self.table) and not self.torn and not os.path.exists(self.file("table"))
        self.damaged = np.zeros(0, np.int64)  # rows whose check fails: no reader uses them
        if self.legacy:
            self._read_legacy()
        elif len(self.table):
            self.damaged = np.flatnonzero(~rows_intact(self.table))

    @classmethod
    def from_entries(cls, path: str, name: str, entries: list[IndexEntry], dtype: np.dtype = TABLE) -> "SegmentIndex":
        """A segment made of parsed entries (a schema-1 store's records, as one segment)."""
        self = cls.__new__(cls)
        self.name, self.path, self.bad_lines, self.torn, self.legacy, self.dtype = name, path, [], 0, True, dtype
        self._entries, self.table, self.damaged = entries, legacy_table(entries, dtype), np.zeros(0, np.int64)
        return self

    def file(self, which: str) -> str:
        return os.path.join(self.path, which, "0")

    @property
    def cols(self) -> Table:
        """The segment's table, typed."""
        return Table(self.table)

    @property
    def tail(self) -> bool:
        return bool(self.torn)

    @property
    def sealed(self) -> bool:
        return is_sealed(self.path)

    def _read_legacy(self) -> None:
        try:
            with open(self.file("index"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        self.torn = len(lines[-1])
        entries = []
        try:  # every line whole: one parse of them all
            entries = [IndexEntry.from_json(e) for e in json.loads(b"[" + b",".join(lines[:-1]) + b"]")]
            for entry in entries:
                entry.video_id  # noqa: B018
        except (ValueError, KeyError, TypeError):
            entries = []
            for number, line in enumerate(lines[:-1], 1):
                try:
                    entry = IndexEntry.from_json(json.loads(line))
                    entry.video_id  # noqa: B018 -- a line without it is not an entry
                except (ValueError, KeyError, TypeError):
                    self.bad_lines.append(number)
                    continue
                entries.append(entry)
        self._entries = entries
        self.table = legacy_table(entries, self.dtype)

    # reading by row
    def _slices(self, which: str, rows: np.ndarray) -> list[bytes]:
        """The ``which`` bytes (newline dropped) of the given rows: one read of the span they cover."""
        offsets, lengths = self.cols.offset(which)[rows], self.cols.length(which)[rows]
        if not len(rows):
            return []
        lo, hi = int(offsets.min()), int((offsets + lengths).max())
        with open(self.file(which), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if hi > size:
                raise OSError(f"{self.file(which)}: {hi - size} bytes shorter than its table says (run featcache "
                              "cache verify)")
            f.seek(lo)
            data = f.read(hi - lo)
        if len(rows) > 1 and np.all(offsets[1:] == offsets[:-1] + lengths[:-1]):  # one run of whole lines
            return [data[:-1]]  # the lines with their newlines between them: the callers split them
        return lines_of(data, offsets - lo, lengths)

    def ids(self, rows: np.ndarray) -> list[str]:
        if self._entries is not None:
            return [self._entries[r].video_id for r in rows.tolist()]
        slices = self._slices("ids", rows)
        return b"\n".join(slices).decode("utf-8").split("\n") if slices else []

    def labels(self, rows: np.ndarray) -> list[list[str]]:
        if self._entries is not None:
            return [list(self._entries[r].record.get("labels", [])) for r in rows.tolist()]
        slices = self._slices("labels", rows)
        if not slices:
            return []
        lines = b"\n".join(slices).decode("utf-8").split("\n")
        memo = {t: t.split("\t") if t else [] for t in set(lines)}  # few distinct label sets: each split once
        return [memo[t][:] for t in lines]

    def _values(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The int32 values of positions/0 spanning the rows' blocks, and each block's offset in them."""
        t = Table(self.table[rows])
        off, n = t.positions.astype(np.int64), t.positions_len.astype(np.int64)
        lo, hi = int(off.min()), int((off + n).max())
        with open(self.file("positions"), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if hi * 4 > size:
                raise OSError(f"{self.file('positions')}: {hi * 4 - size} bytes shorter than its table says (run "
                              "featcache cache verify)")
            f.seek(lo * 4)
            data = f.read((hi - lo) * 4)
        return np.frombuffer(data, "<i4"), off - lo

    def policies(self, rows: np.ndarray, names: list[str]) -> list[dict[str, list[int]]]:
        """Each row's policy -> positions (``names``: the store's frame policies)."""
        if self._entries is not None:
            return [self._entries[r].record.get("policies", {}) for r in rows.tolist()]
        if not len(rows):
            return []
        values, offsets = self._values(rows)
        out = []
        for o in offsets.tolist():
            k = int(values[o])
            which, lengths = values[o + 1:o + 1 + k].tolist(), values[o + 1 + k:o + 1 + 2 * k].tolist()
            at, policies = o + 1 + 2 * k, {}
            for i, n in zip(which, lengths):
                policies[names[i]] = values[at:at + n].tolist()
                at += n
            out.append(policies)
        return out

    def positions(self, rows: np.ndarray, j: int) -> np.ndarray | None:
        """(rows, T) positions of the store's ``j``-th policy for every row, in one gather; None
        where a row lacks it or the rows hold different numbers of them (a legacy segment too)."""
        if self._entries is not None:
            return None
        if not len(rows):
            return np.zeros((0, 0), np.int32)
        values, o = self._values(rows)
        k = values[o]
        if not np.all(k > j) or not np.all(values[o + 1 + j] == j):
            return None
        lengths = values[o + 1 + k + j]
        if np.any(lengths != lengths[0]):
            return None
        start = o + 1 + 2 * k + sum((values[o + 1 + k + i].astype(np.int64) for i in range(j)), np.zeros(len(o), np.int64))
        return values[start[:, None] + np.arange(int(lengths[0]))]

    def entries(self, rows: np.ndarray | None = None) -> list[IndexEntry]:
        """The entries (JSON lines) of the given rows (all: None); TypeError/KeyError for a line
        that is no entry."""
        rows = np.arange(len(self.table)) if rows is None else rows
        if self._entries is not None:
            return [self._entries[r] for r in rows.tolist()]
        slices = self._slices("index", rows)  # JSON lines hold no raw newline: those between lines become commas
        lines = json.loads(b"[" + b",".join(slices).replace(b"\n", b",") + b"]") if slices else []
        return [IndexEntry.from_json(line) for line in lines]


def lines_of(data: bytes, offsets: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """The slices ``data[o:o + n - 1]`` (newline dropped), one per offset."""
    return [data[o:o + n - 1] for o, n in zip(offsets.tolist(), lengths.tolist())]


def legacy_table(entries: list[IndexEntry], dtype: np.dtype = TABLE) -> np.ndarray:
    """Table rows (no offsets, no crcs) for parsed JSON entries of a segment without a table."""
    table = np.zeros(len(entries), dtype)
    for i, entry in enumerate(entries):
        record = entry.record
        row = Table(table[i:i + 1])
        row.hash = key_hash(schema.video_key(entry.video_id))
        row.generation = entry.generation
        row.frames = entry.rows.get(schema.TOKENS, [0, 0])[1]
        row.policies = len(record.get("policies") or {})
        row.status = DONE if record.get("status") == "done" else FAILED
        row.split = split_code(record.get("split", ""))
        for j, name in enumerate(arrays_of(dtype)):
            if name in entry.rows:
                row.starts[0, j], row.counts[0, j] = entry.rows[name]
    return table


# ------------------------------------------------------------------ the store's resolved index
class Index:
    """Every segment's rows, and which row readers use for each video: the highest generation
    wins (a grown video, a retry after a failure, a ``cache repair`` record over a broken copy);
    at equal generations a done copy beats a failure, the first published done copy wins (a
    racing duplicate), and the last failure. All of it vectorised: no Python object per video."""

    def __init__(self, segments: list[SegmentIndex], dtype: np.dtype = TABLE):
        self.segments = segments
        tables = [s.table for s in segments]
        self.table = np.concatenate(tables) if tables else np.zeros(0, dtype)
        self.arrays = arrays_of(self.table)  # the arrays of its start/count/crc columns
        self.cols = cols = Table(self.table)  # the same rows, typed
        sizes = [len(t) for t in tables]
        self.seg = np.repeat(np.arange(len(segments), dtype=np.int32), sizes)
        self.row = np.arange(len(self.table), dtype=np.int64) - np.repeat(np.cumsum([0, *sizes[:-1]]), sizes).astype(
            np.int64) if sizes else np.zeros(0, np.int64)
        ordinal = np.arange(len(self.table), dtype=np.int64)
        done = cols.status == DONE
        tie = np.where(done, -ordinal, ordinal)
        order = np.lexsort((tie, done, cols.generation, cols.hash))
        starts = np.cumsum([0, *sizes[:-1]]) if sizes else []
        damaged = np.concatenate([s.damaged + o for s, o in zip(segments, starts)] or [np.zeros(0, np.int64)])
        order = order[~np.isin(order, damaged)]  # a damaged row serves no reader: verify names it, repair re-indexes
        h = cols.hash[order]
        last = np.ones(len(order), bool)
        last[:-1] = h[1:] != h[:-1]
        self.win = order[last]  # the rows readers use, sorted by key hash
        self.hashes = h[last]

    def __len__(self) -> int:
        return len(self.win)

    def find(self, keys: list[str]) -> np.ndarray:
        """Rows (of ``table``) readers use for each key; -1 where the store has no such video."""
        if not len(self.hashes) or not keys:
            return np.full(len(keys), -1, np.int64)
        h = np.fromiter((key_hash(k) for k in keys), np.uint64, len(keys))
        pos = np.minimum(np.searchsorted(self.hashes, h), len(self.hashes) - 1)
        return np.where(self.hashes[pos] == h, self.win[pos], -1)

    def used(self, segment: int) -> np.ndarray:
        """Per row of one segment: do readers use it (the winning copy of its video)?"""
        mine = np.flatnonzero(self.seg == segment)
        return np.isin(mine, self.win)

    def superseded(self) -> np.ndarray:
        """Rows no reader uses (older generations, racing duplicates, replaced failures)."""
        used = np.zeros(len(self.table), bool)
        used[self.win] = True
        return np.flatnonzero(~used)

    def _by_segment(self, rows: np.ndarray, read) -> list:
        with no_gc():  # millions of small lists and dicts, none of them cyclic: the collector would
            return self._by_segment_(rows, read)  # traverse them again and again (4x slower at 100k)

    def _by_segment_(self, rows: np.ndarray, read) -> list:
        out: list = [None] * len(rows)
        if not len(rows):
            return out
        seg = self.seg[rows]
        if np.all(seg[1:] >= seg[:-1]):  # grouped by segment already (listing order): concatenate
            out = []
            for group in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(seg)) + 1):
                out += read(self.segments[int(seg[group[0]])], self.row[rows[group]])
            return out
        order = np.argsort(seg, kind="stable")
        bounds = np.flatnonzero(np.diff(seg[order])) + 1
        for group in np.split(order, bounds):
            values = read(self.segments[int(seg[group[0]])], self.row[rows[group]])
            for i, v in zip(group.tolist(), values):
                out[i] = v
        return out

    def ids(self, rows: np.ndarray) -> list[str]:
        return self._by_segment(rows, SegmentIndex.ids)

    def labels(self, rows: np.ndarray) -> list[list[str]]:
        return self._by_segment(rows, SegmentIndex.labels)

    def policies(self, rows: np.ndarray, names: list[str]) -> list[dict[str, list[int]]]:
        return self._by_segment(rows, lambda seg, r: seg.policies(r, names))

    def positions(self, rows: np.ndarray, j: int) -> np.ndarray | None:
        """(len(rows), T) positions of the store's ``j``-th frame policy (see SegmentIndex.positions)."""
        out = None
        seg = self.seg[rows]
        order = np.argsort(seg, kind="stable")
        for mine in np.split(order, np.flatnonzero(np.diff(seg[order])) + 1) if len(rows) else []:
            got = self.segments[int(seg[mine[0]])].positions(self.row[rows[mine]], j)
            if got is None or out is not None and got.shape[1] != out.shape[1]:
                return None
            if out is None:
                out = np.empty((len(rows), got.shape[1]), np.int64)
            out[mine] = got
        return out if out is not None else np.zeros((0, 0), np.int64)

    def columns(self, rows: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment numbers, first rows, row counts) of array ``name`` for each row."""
        i = self.arrays.index(name)
        return (self.seg[rows], self.cols.starts[rows, i].astype(np.int64),
                self.cols.counts[rows, i].astype(np.int64))

    def entries(self, rows: np.ndarray) -> list[IndexEntry]:
        return self._by_segment(rows, SegmentIndex.entries)

    def where(self, row: int) -> tuple[str, dict[str, tuple[int, int]]]:
        """(segment name, {array: (start, count)}) of one row."""
        t = Table(self.table[row])
        starts, counts = t.starts.tolist(), t.counts.tolist()
        rows = {name: (starts[i], counts[i]) for i, name in enumerate(self.arrays) if counts[i]}
        return self.segments[int(self.seg[row])].name, rows


@contextlib.contextmanager
def no_gc():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_index(root: str, dtype: np.dtype = TABLE) -> Index:
    """The resolved index of the packed store at ``root``: one listing, the tables (rows of
    ``dtype``, :func:`table_of` its root attributes) of its segments."""
    folder = os.path.join(root, schema.SEGMENTS)
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except FileNotFoundError:
        names = []
    return Index([SegmentIndex(root, name, dtype) for name in names], dtype)
