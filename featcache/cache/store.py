"""Reading a store: :class:`Cache` (``featcache.open_cache``) and :class:`VideoEntry`; the writer
is ``writer.py``, the segment format ``packed.py`` and its columnar index ``index.py``.

New stores use the packed layout (schema 2): each writer process appends the videos it finishes to
a segment it alone owns, and a video becomes visible when its table row is complete, so readers
never see a half-written video and a killed writer leaves at most an unpublished tail that the
next run ignores and redoes. Opening a store reads one table per segment, whatever the number of
videos, and parses no JSON; a full record is read by offset when asked for. Schema-1 stores (one
folder per video, ``loose.py``) are still read; ``featcache cache pack`` converts them.

Long module: listing (the index's columns and a writer's own unpublished entries), reading
arrays (mapped segments, one gather per segment) and the checks' entry points share the index
and the mapped-segment cache.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
import threading
from collections import OrderedDict
from functools import cached_property

import numpy as np

from featcache.cache import index, loose, packed, quant, schema
from featcache.cache.facts import AttrsDict, StoreAttrs, VideoRecord
from featcache.cache.packed import arrays_bytes, frame_bytes, stage_bytes, video_arrays  # noqa: F401 -- re-exported
from featcache.errors import DamagedStore, FeatcacheError

_MAPS = 64  # segment files kept mapped at once per Cache (each holds a file descriptor)


def to_json(value):
    """numpy scalars/arrays -> plain Python (numpy scalars in zarr attrs raise and poison them)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class VideoEntry:
    """One cached video. Arrays are read on access; ``stored(name)`` gives an array as stored
    (int8 tokens stay int8), the properties give what heads read."""

    def __init__(self, cache: "Cache", key: str, record: dict | None = None, where: tuple | None = None,
                 brief: dict | None = None, row: int = -1):
        self.cache, self.key, self._record, self._brief, self.row = cache, key, record, brief, row
        self.where = where  # (segment, {array: (start, count)}) of a packed store's video

    @property
    def record(self) -> dict:
        """The video's full record (read from the index by offset on first use)."""
        if self._record is None:
            self._record = self.cache._record_at(self.row)
        return self._record

    @cached_property
    def facts(self) -> VideoRecord:
        """The video's record, typed (parsed once, on first use)."""
        return VideoRecord.from_json(self.record)

    @property
    def brief(self) -> dict:
        """video_id, split, labels and policies: what a view needs, without the full record."""
        if self._brief is None:
            self._brief = dict(index.brief_of(self.record), video_id=self.facts.video_id)
        return self._brief

    @property
    def cache_path(self) -> str:
        return self.cache.path

    @property
    def video_id(self) -> str:
        return self.brief["video_id"]

    def stored(self, name: str) -> np.ndarray | None:
        """The array ``name`` as stored (a read-only view where the layout allows), or None."""
        return self.cache._stored(self, name)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array of the video (what ``cache pack`` copies byte for byte)."""
        names = [n for n in packed.row_plan(self.cache.attrs) if n != schema.LUV_SCORES or self.record.get(
            "has_luv_scores")]
        return {n: np.array(a) for n in names if (a := self.stored(n)) is not None}

    @cached_property
    def tokens(self) -> np.ndarray:
        """(T, L, N, C): frames, layers, tokens (prefix/CLS first), channels; int8 stores are
        dequantized to float16."""
        tokens = self.stored(schema.TOKENS)
        self.cache.check_rows(self, schema.TOKENS, tokens)  # a whole read: its checksum costs little beside it
        if tokens.dtype != np.int8:
            return np.array(tokens)
        return quant.dequantize(tokens, self.stored(schema.TOKEN_SCALES), self.stored(schema.CHANNEL_SCALES)[:, None])

    def read_frames_into(self, out: np.ndarray, positions: list[int], layer: int) -> None:
        """``out[t] = tokens[positions[t], layer]`` for a (T, N, C) ``out``, copied straight from
        the mapped file (runs of consecutive frames in one copy); int8 is dequantized on the way
        (one run: straight from the mapped file, else from one gathered copy)."""
        stored = self.stored(schema.TOKENS)
        layer = layer % stored.shape[1]
        if stored.dtype == np.int8:
            rows = self._rows_of(positions, stored.shape[1])
            quant.dequantize(stored[rows, layer], self.stored(schema.TOKEN_SCALES)[rows, layer],
                             self.stored(schema.CHANNEL_SCALES)[layer], out.dtype, out=out)
            return
        for t, run in _runs(positions, stored.shape[1]):
            out[t:t + run] = stored[positions[t]:positions[t] + run, layer]

    @staticmethod
    def _rows_of(positions: list[int], layers: int):
        """``positions`` as a slice when they are one run (a view of the mapped file, no gather)."""
        runs = list(_runs(positions, layers))
        if len(runs) == 1:
            return slice(positions[0], positions[0] + runs[0][1])
        return np.asarray(positions, dtype=np.int64)

    def read_quantized_into(self, q: np.ndarray, token_scales: np.ndarray, positions: list[int],
                            layer: int) -> np.ndarray:
        """An int8 store's frames as stored: ``q[t] = tokens[positions[t], layer]`` (T, N, C) and
        ``token_scales[t]`` (T, N), copied from the mapped file; returns the channel scales (C,)."""
        stored = self.stored(schema.TOKENS)
        layer = layer % stored.shape[1]
        rows = self._rows_of(positions, stored.shape[1])
        q[...] = stored[rows, layer]
        token_scales[...] = self.stored(schema.TOKEN_SCALES)[rows, layer]
        return self.stored(schema.CHANNEL_SCALES)[layer]

    @property
    def frame_indices(self) -> np.ndarray:
        return np.asarray(self.facts.frame_indices, dtype=np.int64)

    @property
    def timestamps(self) -> np.ndarray:
        return np.asarray(self.facts.timestamps, dtype=np.float64)

    @cached_property
    def luv_scores(self) -> np.ndarray | None:
        """One score per source frame, or None when no keyframes policy was run."""
        if not self.facts.has_luv_scores:
            return None
        return np.array(self.stored(schema.LUV_SCORES))

    @cached_property
    def side_crops(self) -> np.ndarray:
        """(2, T, L, N, C): the first and last of three spatial crops (extract --crops 3)."""
        return np.array(self.stored(schema.SIDE_CROPS))

    @cached_property
    def views(self) -> np.ndarray | None:
        """(K, T, L, N, C): the tokens of the K training views of every cached frame (extract
        --train-views; the record's ``views`` says each one's box and flip); int8 stores are
        dequantized to float16. None in a store without views."""
        views = self.stored(schema.VIEWS)
        if views is None:
            return None
        if views.dtype != np.int8:
            return np.array(views)
        return quant.dequantize(views, self.stored(schema.VIEW_SCALES), self.stored(schema.CHANNEL_SCALES)[:, None])

    def read_view_into(self, out: np.ndarray, view: int, positions: list[int], layer: int) -> None:
        """``out[t] = views[view, positions[t], layer]`` for a (T, N, C) ``out`` (int8 dequantized)."""
        stored = self.stored(schema.VIEWS)  # (K, T, L, N, C), a view of the mapped rows
        layer = layer % stored.shape[2]
        rows = np.asarray(positions, dtype=np.int64)
        if stored.dtype == np.int8:
            quant.dequantize(stored[view, rows, layer], self.stored(schema.VIEW_SCALES)[view, rows, layer],
                             self.stored(schema.CHANNEL_SCALES)[layer], out.dtype, out=out)
            return
        out[...] = stored[view, rows, layer]

    @cached_property
    def cut(self) -> np.ndarray:
        """(T, N, C) float16: the residual stream entering the cut block (extract --cut-block)."""
        return np.array(self.stored(schema.CUT))

    @property
    def policies(self) -> dict[str, list[int]]:
        return self.brief["policies"]

    @property
    def labels(self) -> list[str]:
        return self.brief["labels"]

    @property
    def split(self) -> str:
        return self.brief["split"]


class Cache:
    """Read-only view of a featcache store (``featcache.open_cache``), of either layout."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        rebuild = (f"; `featcache cache repair {path}` rebuilds it from its segments"
                   if os.path.isdir(os.path.join(self.path, schema.SEGMENTS)) else "")
        try:
            meta = loose.read_json(os.path.join(self.path, "zarr.json"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FeatcacheError(f"{path}: the store's zarr.json is corrupt ({exc}); it cannot be read{rebuild}") from None
        if meta is None and rebuild:
            raise FeatcacheError(f"{path}: the store's root zarr.json is missing{rebuild}")
        if meta is None:
            raise FeatcacheError(f"{path}: not a featcache cache (no zarr.json); create one with featcache extract")
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        self.attrs = attrs if isinstance(attrs, dict) else {}
        version = self.facts.schema_version
        if version is None:
            raise FeatcacheError(f"{path}: a Zarr store, but not one featcache wrote (no schema_version)")
        if version > schema.SCHEMA_VERSION:
            raise FeatcacheError(
                f"{path}: cache schema {version} is newer than this featcache "
                f"understands ({schema.SCHEMA_VERSION}); upgrade featcache")
        self.layout = "packed" if version >= 2 else "loose"
        self._idx: index.Index | None = None  # the columns of every segment, read on first use
        self._records: dict[str, dict] | None = None  # every full record: only records() reads them all
        self._parsed: dict[str, tuple[dict, VideoRecord]] = {}  # key -> (record, its type): parsed once
        self.fresh: dict[str, dict] = {}  # a writer's own entries (key -> entry), newer than the index read
        self.notes: list[str] = []  # what the last verify found that loses nothing
        self._maps: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # streamed views read from several threads

    def __getstate__(self):  # DataLoader workers get a copy without the mapped files and the index
        state = dict(self.__dict__)
        state["_maps"], state["_idx"], state["_records"], state["_parsed"] = OrderedDict(), None, None, {}
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def attrs(self) -> dict:
        """The root attributes as stored (a dict; :attr:`facts` is their type)."""
        return self._attrs

    @attrs.setter
    def attrs(self, value: dict) -> None:
        self._attrs = value if isinstance(value, AttrsDict) else AttrsDict(value)

    @property
    def facts(self) -> StoreAttrs:
        """The root attributes, typed (parsed once)."""
        return self._attrs.facts

    def _typed(self, record: dict) -> VideoRecord:
        """``record`` as a VideoRecord, parsed once for as long as the store holds that record
        (kept for the typed listings only: ``entry.facts`` lives with its entry)."""
        key = schema.video_key(record.get("video_id", ""))
        seen = self._parsed.get(key)
        if seen is None or seen[0] is not record:
            seen = self._parsed[key] = (record, VideoRecord.from_json(record))
        return seen[1]

    def video_record(self, video_id: str) -> VideoRecord | None:
        """:meth:`record`, typed: one video's record (done or failed), or None. The index is read
        once per Cache, so a record parsed before is not read again (a writer's fresh ones aside)."""
        key = schema.video_key(video_id)
        if key not in self.fresh and key in self._parsed:
            return self._parsed[key][1]
        record = self.record(video_id)
        return None if record is None else self._typed(record)

    def video_records(self) -> dict[str, VideoRecord]:
        """:meth:`records`, typed: key -> record of every published video, sorted by key."""
        return {k: self._typed(r) for k, r in self.records().items()}

    # ------------------------------------------------------------------ listing
    @property
    def index(self) -> index.Index:
        """The resolved columnar index (read on first use: one table file per segment)."""
        if self._idx is None:
            if self.layout == "loose":
                entries = [index.IndexEntry(r) for r in loose.list_records(self.path).values()]
                self._idx = index.Index([index.SegmentIndex.from_entries(self.path, schema.VIDEOS, entries)])
            else:
                self._idx = index.read_index(self.path, index.table_of(self.attrs))
        return self._idx

    def index_rows(self, status: str | None = "done", split: str | None = None) -> np.ndarray:
        """Rows of the index readers use (``status``/``split``: None for any), less the keys this
        writer has published since (``fresh``)."""
        idx = self.index
        rows, cols = idx.win, idx.cols
        keep = np.ones(len(rows), bool)
        if status is not None:
            keep &= cols.status[rows] == (index.DONE if status == "done" else index.FAILED)
        if split is not None:
            code = index.split_code(split)
            keep &= cols.split[rows] == code
        if self.fresh:
            fresh = np.fromiter((index.key_hash(k) for k in self.fresh), np.uint64, len(self.fresh))
            keep &= ~np.isin(cols.hash[rows], fresh)
        rows = np.sort(rows[keep])  # in file order: the index files are read in runs
        if split is not None and index.split_code(split) == index.OTHER_SPLIT:  # the records have it
            rows = rows[np.array([sp == split for sp in self._splits(rows)], bool)]
        return rows

    def _splits(self, rows: np.ndarray) -> list[str]:
        """Each row's split: from its code, or for a split other than train/val/test from its record."""
        codes = self.index.cols.split[rows].tolist()
        splits = [index.SPLIT_CODES[c] if c != index.OTHER_SPLIT else None for c in codes]
        if None in splits:
            other = rows[np.array([sp is None for sp in splits], bool)]
            names = iter(e.split for e in self.index.entries(other))
            splits = [sp if sp is not None else next(names) for sp in splits]
        return splits

    def _fresh(self, status: str | None = "done", split: str | None = None) -> list[index.IndexEntry]:
        return [e for e in self.fresh.values() if (status is None or e.status == status)
                and (split is None or e.record.get("split") == split)]

    def __len__(self) -> int:
        """The number of extracted (done) videos."""
        return len(self.index_rows()) + len(self._fresh())

    def __contains__(self, video_id) -> bool:
        """Whether ``video_id`` is extracted (done) in the store."""
        return isinstance(video_id, str) and self.status(video_id) == "done"

    def __iter__(self):
        return iter(self.video_ids())

    def __repr__(self) -> str:
        f = self.facts
        model = (f.model.name if f.model else None) or "?"
        return (f"Cache({self.path!r}: {len(self)} videos done, {len(self.video_ids('failed'))} failed; {model}, "
                f"frames {','.join(f.policies)}, {f.dtype or '?'}, {len(self.segments())} segment(s))")

    def status(self, video_id: str) -> str | None:
        """"done", "failed", or None for a video the store does not hold."""
        return self.statuses([video_id])[0]

    def statuses(self, video_ids: list[str]) -> list[str | None]:
        """:meth:`status` of many videos at once (hashes looked up in the sorted index)."""
        found = self.lookup(video_ids)
        return [found[v].get("status") if v in found else None for v in video_ids]

    def lookup(self, video_ids: list[str]) -> dict[str, dict]:
        """video id -> {"status", "generation", "policies" (how many of the store's policies it
        holds)} of the given videos that the store holds: a shard's resume reads no records."""
        keys = [schema.video_key(v) for v in video_ids]
        rows = self.index.find(keys)
        t = self.index.cols
        out = {}
        for vid, key, row in zip(video_ids, keys, rows.tolist()):
            if key in self.fresh:
                e = self.fresh[key]
                out[vid] = {"status": e.status, "generation": e.generation,
                            "policies": len(e.record.get("policies") or {})}
            elif row >= 0:
                out[vid] = {"status": "done" if t.status[row] == index.DONE else "failed",
                            "generation": int(t.generation[row]), "policies": int(t.policies[row])}
        return out

    def records(self) -> dict[str, dict]:
        """key -> full record of every published video (done or failed), sorted by key. Reads
        every record: listing, splits and views use the index columns instead."""
        if self._records is None:
            rows = self.index_rows(status=None)
            self._records = dict(sorted((schema.video_key(e.video_id), e.record) for e in self.index.entries(rows)))
        if not self.fresh:
            return self._records  # read and sorted once: callers index it in loops (cache pack)
        return dict(sorted({**self._records, **{k: e.record for k, e in self.fresh.items()}}.items()))

    def record(self, video_id: str) -> dict | None:
        """The full record of one video (done or failed), or None."""
        key = schema.video_key(video_id)
        if key in self.fresh:
            return self.fresh[key].record
        row = int(self.index.find([key])[0])
        return None if row < 0 else self._record_at(row)

    def _record_at(self, row: int) -> dict:
        return self.index.entries(np.array([row]))[0].record

    def index_entries(self) -> dict[str, index.IndexEntry]:
        """key -> the index entry readers use (record, rows, generation, segment). Reads every
        JSON line (``cache pack``, tests); readers use the columns."""
        rows = self.index_rows(status=None)
        out = {}
        for row, entry in zip(rows.tolist(), self.index.entries(rows)):
            entry = dataclasses.replace(entry, segment=self.index.segments[int(self.index.seg[row])].name)
            out[schema.video_key(entry.video_id)] = entry
        out.update(self.fresh)
        return out

    def segments(self) -> list[index.SegmentIndex]:
        """The packed store's segments (a loose store: one pseudo-segment of its records)."""
        return self.index.segments if self.layout == "packed" else []

    def done_records(self, split: str) -> list[dict]:
        """Full records of the split's extracted videos, sorted by video id (the order views use)."""
        rows = self.index_rows("done", split)
        entries = self.index.entries(rows) + self._fresh("done", split)
        return [e.record for e in sorted(entries, key=lambda e: e.video_id)]

    def done_entries(self, split: str | None) -> list[VideoEntry]:
        """The split's (None: every) extracted videos, sorted by video id, each with its brief (video id,
        split, labels, policies) from the index columns; full records stay unread until asked for."""
        rows, ids = self.done_rows(split)
        out = self._entries_at(rows, ids)
        out += [self._fresh_entry(schema.video_key(e.video_id)) for e in self._fresh("done", split)]
        return sorted(out, key=lambda e: e.video_id) if self.fresh else out

    def done_rows(self, split: str | None) -> tuple[np.ndarray, list[str]]:
        """Index rows and ids of the split's extracted videos, sorted by video id (this writer's
        own unpublished entries aside)."""
        rows = self.index_rows("done", split)
        ids = self.index.ids(rows)
        order = sorted(range(len(ids)), key=ids.__getitem__)
        return rows[np.asarray(order, np.int64)], [ids[i] for i in order]

    def _found(self, video_ids: list[str], status: str | None = "done") -> tuple[list[str], np.ndarray, list[str]]:
        """(ids found in the index, their rows, ids held by this writer's fresh entries) of
        ``status`` (None: any)."""
        keys = [schema.video_key(v) for v in video_ids]
        rows = self.index.find(keys)
        t = self.index.cols
        code = None if status is None else index.DONE if status == "done" else index.FAILED
        found, where, fresh = [], [], []
        for vid, key, row in zip(video_ids, keys, rows.tolist()):
            if key in self.fresh:
                if status is None or self.fresh[key].status == status:
                    fresh.append(vid)
            elif row >= 0 and (code is None or t.status[row] == code):
                found.append(vid)
                where.append(row)
        return found, np.asarray(where, np.int64), fresh

    def briefs(self, video_ids: list[str] | None = None, status: str | None = "done",
               policies: bool = True) -> dict[str, dict]:
        """video id -> brief (video_id, status, split, labels, and with ``policies`` the positions
        of each frame policy) of the given videos (None: every published one) that have
        ``status`` (None: any); from the index columns, no JSON."""
        if video_ids is None:
            rows = self.index_rows(status)
            ids, fresh = self.index.ids(rows), [e.video_id for e in self._fresh(status)]
        else:
            ids, rows, fresh = self._found(video_ids, status)
        out = dict(zip(ids, self._briefs(rows, ids, policies)))
        for v in fresh:
            r = self.fresh[schema.video_key(v)].record
            out[v] = dict(index.brief_of(r), video_id=v, status=r.get("status"))
        return out

    def _briefs(self, rows: np.ndarray, ids: list[str], policies: bool = True) -> list[dict]:
        idx = self.index
        splits = self._splits(rows)
        status = ["done" if c == index.DONE else "failed" for c in idx.cols.status[rows].tolist()]
        labels = idx.labels(rows)
        pols = idx.policies(rows, list(self.facts.policies)) if policies else [None] * len(rows)
        return [{"video_id": v, "status": st, "split": sp, "labels": lb, **({"policies": p} if policies else {})}
                for v, st, sp, lb, p in zip(ids, status, splits, labels, pols)]

    def records_of(self, video_ids: list[str], status: str | None = "done") -> list[dict]:
        """Full records of the given videos that have ``status`` (None: any), in the order given."""
        ids, rows, fresh = self._found(video_ids, status)
        by_id = {e.video_id: e.record for e in self.index.entries(rows)}
        by_id.update({v: self.fresh[schema.video_key(v)].record for v in fresh})
        return [by_id[v] for v in video_ids if v in by_id]

    def entries(self, video_ids: list[str]) -> list[VideoEntry]:
        """The done videos among ``video_ids`` (in that order) with their briefs, records unread."""
        ids, rows, fresh = self._found(video_ids)
        by_id = dict(zip(ids, self._entries_at(rows, ids)))
        by_id.update({v: self._fresh_entry(schema.video_key(v)) for v in fresh})
        return [by_id[v] for v in video_ids if v in by_id]

    def _entries_at(self, rows: np.ndarray, ids: list[str]) -> list[VideoEntry]:
        idx = self.index
        return [VideoEntry(self, schema.video_key(v), None, idx.where(r), b, r)
                for v, b, r in zip(ids, self._briefs(rows, ids), rows.tolist())]

    def video_ids(self, status: str = "done") -> list[str]:
        """Ids of the videos of ``status`` ("done" or "failed"), sorted."""
        if status not in schema.STATUSES:
            raise ValueError(f"status must be one of {schema.STATUSES}, not {status!r}")
        ids = self.index.ids(self.index_rows(status)) + [e.video_id for e in self._fresh(status)]
        ids.sort()
        return ids

    def failures(self) -> dict[str, str]:
        """video id -> the reason it could not be extracted."""
        rows = self.index_rows("failed")
        records = [e.record for e in self.index.entries(rows) + self._fresh("failed")]
        return {r.video_id: r.reason or "" for r in sorted(map(VideoRecord.from_json, records), key=lambda r: r.video_id)}

    def video(self, video_id: str) -> VideoEntry:
        """One done video; its record is read only when asked for (``entry.record``)."""
        key = schema.video_key(video_id)
        if key in self.fresh:
            entry = self._fresh_entry(key)
            done = entry.facts.done
        else:
            row = int(self.index.find([key])[0])
            if row < 0:
                raise KeyError(f"video {video_id!r} is not in {self.path}")
            entry = VideoEntry(self, key, None, self.index.where(row), None, row)
            done = self.index.cols.status[row] == index.DONE
        if not done:
            raise KeyError(f"video {video_id!r} failed extraction: {entry.facts.reason}")
        return entry

    def _fresh_entry(self, key: str) -> VideoEntry:
        e = self.fresh[key]
        return VideoEntry(self, key, e.record, (e.segment, {n: tuple(v) for n, v in e.rows.items()}))

    def staged(self) -> list[str]:
        """Interrupted writes that the next extract run redoes: staging folders of a loose store;
        segments of a packed store holding videos a commit left unpublished (and not done since)."""
        return sorted(self.interrupted())

    def superseded_bytes(self) -> int:
        """Data bytes of copies no reader uses: older generations and racing duplicates."""
        t = self.index.cols.counts[self.index.superseded()]
        plan = packed.row_plan(self.attrs) if self.layout == "packed" else {}
        sizes = np.array([packed.row_bytes(plan[n]) if n in plan else 0 for n in self.index.arrays], np.int64)
        return int((t.astype(np.int64) * sizes).sum()) if len(t) else 0

    def unindexed_bytes(self) -> int:
        """Bytes of unsealed segments' data files beyond their indexed rows (interrupted commits;
        ``cache pack`` leaves them behind)."""
        return sum(self._unindexed_bytes(s) for s in self.segments())

    def in_progress_keys(self) -> set[str]:
        """Keys of videos being written now, where the layout can tell (loose stores only: a
        packed segment's unpublished tail names no video)."""
        return {name.split("@")[0] for name in loose.staged(self.path)} if self.layout == "loose" else set()

    @property
    def fingerprint(self) -> str:
        return self.facts.fingerprint

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of every per-frame array (tokens, their scales, cut, side crops) for one frame."""
        return frame_bytes(self.attrs)

    def size_on_disk(self) -> int:
        return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(self.path) for f in files)

    def file_count(self) -> int:
        """Files and folders of the store (what an inode quota counts)."""
        return sum(len(dirs) + len(files) for _, dirs, files in os.walk(self.path))

    # ------------------------------------------------------------------ reading arrays
    def gather(self, name: str, entries: list[VideoEntry], positions, layer: int, out: np.ndarray) -> bool:
        """``out[i, t] = entries[i].stored(name)[positions[i][t], layer]`` for every video at
        once (``positions``: (V, T) integers): one numpy gather per segment of a packed store
        instead of a copy per video (for a small view the per-video look-ups cost as much as the
        bytes). Returns False, having written nothing, where this layout or array reads per video
        (a loose store; side crops)."""
        if self.layout == "loose" or name in (schema.SIDE_CROPS, schema.VIEWS, schema.VIEW_SCALES) or not entries:
            return False
        where = [e.where for e in entries]
        names, segments = np.unique([w[0] for w in where], return_inverse=True)
        starts = np.array([w[1].get(name, (0, 0))[0] for w in where], np.int64)
        counts = np.array([w[1].get(name, (0, 0))[1] for w in where], np.int64)
        return self._gather(name, names.tolist(), segments, starts, counts, positions, layer, out,
                            lambda i: entries[i].video_id)

    def gather_rows(self, name: str, rows: np.ndarray, positions, layer: int, out: np.ndarray) -> bool:
        """:meth:`gather` for index rows (``done_rows``): no Python object per video."""
        if self.layout == "loose" or name in (schema.SIDE_CROPS, schema.VIEWS, schema.VIEW_SCALES) or not len(rows):
            return False
        seg, starts, counts = self.index.columns(rows, name)
        return self._gather(name, [s.name for s in self.index.segments], seg, starts, counts, positions, layer, out,
                            lambda i: self.index.ids(rows[i:i + 1])[0])

    def _gather(self, name, names: list[str], segments: np.ndarray, starts, counts, positions, layer, out,
                video_id) -> bool:
        """The gather itself: video i's rows lie in segment ``names[segments[i]]`` from ``starts[i]``."""
        if not out.flags.c_contiguous:  # the reshape below would copy, and the gather land in the copy
            raise ValueError("Cache.gather writes into a C-contiguous array")
        pos = np.asarray(positions, dtype=np.int64).reshape(len(starts), -1)
        bad = (pos.min(axis=1) < 0) | (pos.max(axis=1) >= counts) if pos.size else np.zeros(len(starts), bool)
        if pos.shape[1] != out.shape[1] or bad.any():
            i = int(np.argmax(bad))
            raise DamagedStore(f"{self.path}: video {video_id(i)!r} has {counts[i]} rows of {name}, asked for "
                               f"{pos.shape[1]} at positions up to {pos[i].max()}; run featcache cache verify {self.path}")
        rows = pos + starts[:, None]  # (V, T) rows of the segment arrays
        flat = out.reshape(len(starts) * pos.shape[1], *out.shape[2:])
        used = np.unique(segments)
        if len(used) == 1:  # one segment (a packed store): no grouping
            groups = [(int(used[0]), slice(None))]
        else:
            order = np.argsort(segments, kind="stable")  # the videos of each segment, grouped: O(V log V)
            groups = [(int(segments[g[0]]), g) for g in np.split(order, np.flatnonzero(np.diff(segments[order])) + 1)]
        for number, mine in groups:
            idx = rows[mine].ravel()
            stored = self._segment_rows(names[number], name, 0, int(idx.max()) + 1)
            if stored.ndim > 1:
                stored = stored[:, layer % stored.shape[1]]  # (rows, ...) of one layer: a view
            if len(groups) == 1 and stored.flags.c_contiguous:  # straight into out (bounds checked above)
                np.take(stored, idx, axis=0, out=flat, mode="clip")
                break
            # several layers per row: a strided layer, which fancy indexing walks
            taken = np.take(stored, idx, axis=0, mode="clip") if stored.flags.c_contiguous else stored[idx]
            mine = np.arange(len(starts)) if isinstance(mine, slice) else mine
            flat[(pos.shape[1] * mine[:, None] + np.arange(pos.shape[1])).ravel()] = taken
        return True

    def split_columns(self, split: str) -> tuple[np.ndarray, list[str], list[list[str]]] | None:
        """(index rows, video ids, labels) of the split's extracted videos, sorted by video id,
        from the index columns; None where they cannot serve (a loose store, a writer's own
        unpublished videos)."""
        if self.layout == "loose" or self.fresh:
            return None
        rows, ids = self.done_rows(split)
        return rows, ids, self.index.labels(rows)

    def done_labels(self, splits) -> list[list[str]]:
        """Labels of every extracted video of the given splits (a run's classes come from these)."""
        rows = np.concatenate([self.index_rows("done", sp) for sp in splits])
        return self.index.labels(rows) + [list(e.record.get("labels", [])) for sp in splits
                                          for e in self._fresh("done", sp)]

    def rows_of(self, video_ids: list[str]) -> np.ndarray | None:
        """Index rows of done videos (None when one is not in the index as done)."""
        ids, rows, fresh = self._found(video_ids)
        return rows if len(ids) == len(video_ids) and not fresh else None

    def policy_positions(self, rows: np.ndarray, policy: str) -> np.ndarray | None:
        """(V, T) positions of a cached ``policy`` for each row, in one gather; None where the
        columns cannot say (a policy not cached as such, lengths that differ, legacy segments)."""
        policies = self.facts.policies
        if policy not in policies or self.layout == "loose":
            return None
        return self.index.positions(rows, policies.index(policy))

    def _stored(self, entry: VideoEntry, name: str) -> np.ndarray | None:
        if self.layout == "loose":
            return loose.read_array(self.path, entry.key, name)
        segment, rows = entry.where
        if name not in rows:
            return None
        start, count = rows[name]
        return packed.from_rows(name, self._segment_rows(segment, name, start, count))

    def _segment_rows(self, segment: str, name: str, start: int, count: int) -> np.ndarray:
        with self._lock:
            rows = self._maps.get((segment, name))
            if rows is None or start + count > len(rows):
                rows = self._map(segment, name)
                if start + count > len(rows):
                    raise DamagedStore(f"{self._data_path(segment, name)}: truncated (rows {start}..{start + count} "
                                       f"beyond its {len(rows)}); run featcache cache verify {self.path}")
            self._maps.move_to_end((segment, name))
        return rows[start:start + count]

    def _map(self, segment: str, name: str) -> np.ndarray:
        plan = packed.row_plan(self.attrs)[name]
        shape, kind, size = plan[0], np.dtype(plan[1]), packed.row_bytes(plan)
        path = self._data_path(segment, name)
        if not os.path.isfile(path):
            raise DamagedStore(f"{path}: missing; run featcache cache verify {self.path}")
        with open(path, "rb") as f:
            n = os.fstat(f.fileno()).st_size // size
            buf = mmap.mmap(f.fileno(), n * size, access=mmap.ACCESS_READ) if n else b""
        rows = np.frombuffer(buf, dtype=kind, count=n * (size // kind.itemsize)).reshape(n, *shape)
        self._maps[(segment, name)] = rows
        while len(self._maps) > _MAPS:
            self._maps.popitem(last=False)  # views handed out keep their mapping alive
        return rows

    def _data_path(self, segment: str, name: str) -> str:
        return os.path.join(self.path, schema.SEGMENTS, segment, name, packed.DATA)

    def _unindexed_bytes(self, segment: index.SegmentIndex) -> int:
        """Data bytes of an unsealed segment beyond its indexed rows (an interrupted publish)."""
        if segment.sealed:
            return 0
        extra = 0
        t = segment.cols
        for i, name in enumerate(t.arrays):
            path = os.path.join(segment.path, name, packed.DATA)
            if name not in packed.row_plan(self.attrs) or not os.path.exists(path):
                continue
            end = int((t.starts[:, i].astype(np.int64) + t.counts[:, i]).max()) if len(segment.table) else 0
            extra += max(0, os.path.getsize(path) - end * packed.row_bytes(packed.row_plan(self.attrs)[name]))
        return extra

    # ------------------------------------------------------------------ checks
    def verify(self, check_values: bool = True, deep: bool = True) -> list[str]:
        """Problems of the store (empty = consistent), one line each; never raises on a damaged
        store (``cache/verify.py`` says what is checked). ``deep``: the crc32c of every video's
        rows too. Interrupted writes are not problems: the next run redoes them."""
        from featcache.cache import verify

        problems = [f"root attributes lack {k!r}" for k in self.facts.missing()]
        if problems:
            return problems
        try:
            problems, _, self.notes = verify.index_problems(self)
        except OSError as exc:
            return [f"cannot list the store: {exc}"]
        for key, found in self.broken(check_values, deep).items():
            problems += [f"{key}: {p}" for p in found]
        return problems

    def broken(self, check_values: bool = True, deep: bool = True) -> dict[str, list[str]]:
        """video id -> the problems of each published video that has any; never raises."""
        from featcache.cache import verify

        return verify.video_problems(self, check_values, deep)

    def interrupted(self) -> dict[str, list[str]]:
        """segment -> ids of the videos an interrupted commit left unpublished and that the store
        does not hold done now (what the next extract run redoes)."""
        if self.layout == "loose":
            return {name: [name.split("@")[0]] for name in loose.staged(self.path)}
        from featcache.cache import verify

        return verify.interrupted(self)

    def entry_at(self, row: int, record: dict | None = None) -> VideoEntry:
        """The video of one index row (whatever its status)."""
        vid = record["video_id"] if record else self.index.ids(np.array([row]))[0]
        return VideoEntry(self, schema.video_key(vid), record, self.index.where(row), None, row)

    def check_rows(self, entry: VideoEntry, name: str, rows: np.ndarray) -> None:
        """Raise DamagedStore when a whole array of a video read back does not match its crc32c."""
        if entry.row < 0 or self.layout != "packed" or self.index.segments[int(self.index.seg[entry.row])].legacy:
            return
        t = index.Table(self.index.table[entry.row])
        if t.count(name) and index.crc32c(np.ascontiguousarray(rows).tobytes()) != t.crc(name):
            raise DamagedStore(f"{self.path}: video {entry.video_id!r}: its {name} do not match their checksum (changed "
                               f"since they were written); run featcache cache verify {self.path}")

    def spot_check(self, rows: np.ndarray, count: int = 8) -> None:
        """Check the token checksums of ``count`` videos spread evenly over ``rows`` (a view's
        split): a whole read of each, so a damaged store is named before a run trains on it."""
        if self.layout != "packed" or not len(rows):
            return
        for row in rows[np.unique(np.linspace(0, len(rows) - 1, min(count, len(rows))).astype(np.int64))].tolist():
            entry = self.entry_at(row)
            segment, where = entry.where
            if schema.TOKENS in where:
                self.check_rows(entry, schema.TOKENS, self._segment_rows(segment, schema.TOKENS, *where[schema.TOKENS]))

    def checksum_mismatches(self, entry: VideoEntry) -> list[str]:
        """The arrays of a video whose rows no longer have the crc32c recorded at writing."""
        if entry.row < 0 or self.layout != "packed":
            return []
        t = index.Table(self.index.table[entry.row])
        bad = []
        for i, name in enumerate(self.index.arrays):
            if t.counts[i]:
                start, count = int(t.starts[i]), int(t.counts[i])
                rows = self._segment_rows(entry.where[0], name, start, count)
                if index.crc32c(np.ascontiguousarray(rows).tobytes()) != t.crcs[i]:
                    bad.append(name)
        return bad

    def dataset(self, view=None, split: str = "train", manifest: str | None = None, *, frames: str | None = None,
                layers=(-1,), tokens: str = "all", spatial: int = 0, channels: int = 0, transform=None,
                target_transform=None, **options):
        """One split of a view as a torch Dataset of ``(tokens (T, N, C), target)`` for your own
        loop: ``frames`` (or ``view``: a View, or its frames; default ``uniform:8``), ``layers``,
        ``tokens``, ``spatial``, ``channels`` as ``featcache train --view``; ``manifest``: labels
        and splits from a training manifest (None: the store's own); ``transform`` /
        ``target_transform`` applied to each item (torchvision's convention). ``options``: the
        rest of featcache.cache.torch_dataset.CacheDataset's (classes, multi_label, max_bytes,
        stream, dtype, quantized, train_views and seed: a store's cached training views, drawn
        per ``set_epoch``)."""
        from featcache.cache.torch_dataset import cache_dataset

        return cache_dataset(self, view, split, manifest, frames=frames, layers=layers, tokens=tokens, spatial=spatial,
                             channels=channels, transform=transform, target_transform=target_transform, **options)


def _runs(positions: list[int], layers: int):
    """(t, length) runs of consecutive cached frames; with several cached layers a frame of one
    layer is not adjacent to the next frame's, so every run is one frame long."""
    t = 0
    while t < len(positions):
        run = 1
        while layers == 1 and t + run < len(positions) and positions[t + run] == positions[t] + run:
            run += 1
        yield t, run
        t += run


def open_cache(path: str) -> Cache:
    """Open a featcache store read-only."""
    return Cache(path)
