"""The only module that reads or writes a store's files (with packed.py and loose.py beside it).

New stores use the packed layout (schema 2, ``packed.py``): each writer process appends the videos
it finishes to a segment it alone owns, and a video becomes visible when its index line is
complete, so readers never see a half-written video and a killed writer leaves at most an
unpublished tail that the next run ignores and redoes. Opening a store reads one index file per
segment, whatever the number of videos. Schema-1 stores (one folder per video, ``loose.py``) are
still read; ``featcache cache pack`` converts them.

Long module: the public reading API (Cache, VideoEntry) and the one writer (CacheWriter) share
the record conventions and the mapped-segment cache; split them into reader.py and writer.py
when a third layout arrives.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import mmap
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from functools import cached_property

import numpy as np

from featcache.cache import loose, packed, quant, schema
from featcache.errors import DamagedStore, FeatcacheError, OptionError
from featcache.spec.view import parse_policy

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

    def __init__(self, cache: "Cache", key: str, record: dict):
        self.cache, self.key, self.record = cache, key, record

    @property
    def cache_path(self) -> str:
        return self.cache.path

    @property
    def video_id(self) -> str:
        return self.record["video_id"]

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
        return np.asarray(self.record["frame_indices"], dtype=np.int64)

    @property
    def timestamps(self) -> np.ndarray:
        return np.asarray(self.record["timestamps"], dtype=np.float64)

    @cached_property
    def luv_scores(self) -> np.ndarray | None:
        """One score per source frame, or None when no keyframes policy was run."""
        if not self.record.get("has_luv_scores"):
            return None
        return np.array(self.stored(schema.LUV_SCORES))

    @cached_property
    def side_crops(self) -> np.ndarray:
        """(2, T, L, N, C): the first and last of three spatial crops (extract --crops 3)."""
        return np.array(self.stored(schema.SIDE_CROPS))

    @cached_property
    def cut(self) -> np.ndarray:
        """(T, N, C) float16: the residual stream entering the cut block (extract --cut-block)."""
        return np.array(self.stored(schema.CUT))

    @property
    def policies(self) -> dict[str, list[int]]:
        return self.record["policies"]

    @property
    def labels(self) -> list[str]:
        return self.record["labels"]

    @property
    def split(self) -> str:
        return self.record["split"]


class Cache:
    """Read-only view of a featcache store (``featcache.open_cache``), of either layout."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        try:
            meta = loose.read_json(os.path.join(self.path, "zarr.json"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FeatcacheError(f"{path}: the store's zarr.json is corrupt ({exc}); it cannot be read") from None
        if meta is None:
            raise FeatcacheError(f"{path}: not a featcache cache (no zarr.json); create one with featcache extract")
        attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        if "schema_version" not in attrs:
            raise FeatcacheError(f"{path}: a Zarr store, but not one featcache wrote (no schema_version)")
        if attrs["schema_version"] > schema.SCHEMA_VERSION:
            raise FeatcacheError(
                f"{path}: cache schema {attrs['schema_version']} is newer than this featcache "
                f"understands ({schema.SCHEMA_VERSION}); upgrade featcache")
        self.attrs: dict = attrs
        self.layout = "packed" if attrs["schema_version"] >= 2 else "loose"
        self._records: dict[str, dict] | None = None
        self._index: dict[str, dict] = {}  # packed: key -> the index entry readers use
        self._segments: list[packed.Segment] = []
        self._maps: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # streamed views read from several threads

    def __getstate__(self):  # DataLoader workers get a copy without the mapped files
        state = dict(self.__dict__)
        state["_maps"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ listing
    def records(self) -> dict[str, dict]:
        """key -> record of every published video (done or failed)."""
        if self._records is None:
            if self.layout == "loose":
                self._records = loose.list_records(self.path)
            else:
                self._segments = packed.read_segments(self.path)
                with packed.no_gc():
                    self._index = packed.resolve(self._segments)
                    self._records = {k: self._index[k]["record"] for k in sorted(self._index)}
        return self._records

    def index_entries(self) -> dict[str, dict]:
        """key -> the index entry readers use (packed stores: segment, rows, generation)."""
        self.records()
        return self._index

    def segments(self) -> list[packed.Segment]:
        """The packed store's segments (empty for a loose store)."""
        self.records()
        return self._segments

    def done_records(self, split: str) -> list[dict]:
        """Records of the split's extracted videos, sorted by video id (the order views use)."""
        return sorted((r for r in self.records().values() if r.get("status") == "done" and r["split"] == split),
                      key=lambda r: r["video_id"])

    def video_ids(self, status: str = "done") -> list[str]:
        if status not in schema.STATUSES:
            raise ValueError(f"status must be one of {schema.STATUSES}, not {status!r}")
        return [r["video_id"] for r in self.records().values() if r.get("status") == status]

    def failures(self) -> dict[str, str]:
        """video id -> the reason it could not be extracted."""
        return {r["video_id"]: r.get("reason", "") for r in self.records().values() if r.get("status") == "failed"}

    def video(self, video_id: str) -> VideoEntry:
        key = schema.video_key(video_id)
        record = self.records().get(key)
        if record is None:
            raise KeyError(f"video {video_id!r} is not in {self.path}")
        if record.get("status") != "done":
            raise KeyError(f"video {video_id!r} failed extraction: {record.get('reason')}")
        return VideoEntry(self, key, record)

    def staged(self) -> list[str]:
        """Interrupted writes, which the next extract run redoes: staging folders of a loose
        store; segments of a packed store whose last publish did not complete."""
        if self.layout == "loose":
            return loose.staged(self.path)
        return [s.name for s in self.segments() if s.tail or self._unindexed_bytes(s)]

    def in_progress_keys(self) -> set[str]:
        """Keys of videos being written now, where the layout can tell (loose stores only: a
        packed segment's unpublished tail names no video)."""
        return {name.split("@")[0] for name in loose.staged(self.path)} if self.layout == "loose" else set()

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

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
        if self.layout == "loose" or name == schema.SIDE_CROPS or not entries:
            return False
        if not out.flags.c_contiguous:  # the reshape below would copy, and the gather land in the copy
            raise ValueError("Cache.gather writes into a C-contiguous array")
        pos = np.asarray(positions, dtype=np.int64).reshape(len(entries), -1)
        where = [self._index[e.key] for e in entries]
        starts = np.array([w["rows"][name][0] for w in where], np.int64)
        counts = np.array([w["rows"][name][1] for w in where], np.int64)
        bad = (pos.min(axis=1) < 0) | (pos.max(axis=1) >= counts) if pos.size else np.zeros(len(entries), bool)
        if pos.shape[1] != out.shape[1] or bad.any():
            i = int(np.argmax(bad))
            raise DamagedStore(f"{self.path}: video {entries[i].video_id!r} has {counts[i]} rows of {name}, asked for "
                               f"{pos.shape[1]} at positions up to {pos[i].max()}; run featcache cache verify {self.path}")
        rows = pos + starts[:, None]  # (V, T) rows of the segment arrays
        flat = out.reshape(len(entries) * pos.shape[1], *out.shape[2:])
        names, which = np.unique([w["segment"] for w in where], return_inverse=True)
        order = np.argsort(which, kind="stable")  # the videos of each segment, grouped: O(V log V)
        for segment, mine in zip(names, np.split(order, np.cumsum(np.bincount(which))[:-1])):
            idx = rows[mine].ravel()
            stored = self._rows(str(segment), name, 0, int(idx.max()) + 1)
            if stored.ndim > 1:
                stored = stored[:, layer % stored.shape[1]]  # (rows, ...) of one layer: a view
            if len(names) == 1 and stored.flags.c_contiguous:  # straight into out (bounds checked above)
                np.take(stored, idx, axis=0, out=flat, mode="clip")
                break
            # several layers per row: a strided layer, which fancy indexing walks
            taken = np.take(stored, idx, axis=0, mode="clip") if stored.flags.c_contiguous else stored[idx]
            flat[(pos.shape[1] * mine[:, None] + np.arange(pos.shape[1])).ravel()] = taken
        return True

    def _stored(self, entry: VideoEntry, name: str) -> np.ndarray | None:
        if self.layout == "loose":
            return loose.read_array(self.path, entry.key, name)
        index = self._index[entry.key]
        where = index["rows"].get(name)
        if where is None:
            return None
        start, count = where
        return packed.from_rows(name, self._rows(index["segment"], name, start, count))

    def _rows(self, segment: str, name: str, start: int, count: int) -> np.ndarray:
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

    def _unindexed_bytes(self, segment: packed.Segment) -> int:
        """Data bytes of an unsealed segment beyond its indexed rows (an interrupted publish)."""
        if segment.sealed:
            return 0
        extra = 0
        for name, plan in packed.row_plan(self.attrs).items():
            path = os.path.join(segment.path, name, packed.DATA)
            if not os.path.exists(path):
                continue
            end = max((e["rows"][name][0] + e["rows"][name][1] for e in segment.entries if name in e["rows"]),
                      default=0)
            extra += max(0, os.path.getsize(path) - end * packed.row_bytes(plan))
        return extra

    # ------------------------------------------------------------------ checks
    def verify(self, check_values: bool = True) -> list[str]:
        """Problems with the published videos (empty = consistent), one line each; never raises
        on a damaged store. Interrupted writes are not problems: the next run redoes them."""
        problems = [f"root attributes lack {k!r}" for k in schema.ROOT_KEYS if k not in self.attrs]
        if problems:
            return problems
        try:
            records = self.records()
        except OSError as exc:
            return [f"cannot list the store: {exc}"]
        for s in self._segments:
            problems += [f"segments/{s.name}/{packed.INDEX_FILE} line {n}: not a valid index entry" for n in s.bad_lines]
        for key, found in self.broken(check_values).items():
            vid = records[key].get("video_id") or key
            problems += [f"{vid}: {p}" for p in found]
        return problems

    def broken(self, check_values: bool = True) -> dict[str, list[str]]:
        """key -> the problems of each published video that has any; never raises."""
        out = {}
        for key, record in self.records().items():
            vid = record.get("video_id")
            try:
                if key != schema.video_key(vid or ""):
                    found = [f"directory name {key!r} does not match video_id {vid!r}"]
                elif record.get("status") == "done":
                    found = self._verify_video(key, record, check_values)
                elif record.get("status") != "failed" or not record.get("reason"):
                    found = [f"status {record.get('status')!r} without a failure reason"]
                else:
                    found = []
            except Exception as exc:  # noqa: BLE001 -- a damaged video is a problem line, never a traceback
                found = [f"unreadable ({type(exc).__name__}: {exc})"]
            if found:
                out[key] = found
        return out

    def _verify_video(self, key: str, record: dict, check_values: bool) -> list[str]:
        missing = [k for k in schema.VIDEO_KEYS if k not in record]
        if missing:
            return [f"record lacks {', '.join(missing)}"]
        t = len(record["frame_indices"])
        n = record["source"]["num_frames"]
        entry = VideoEntry(self, key, record)
        wants_luv = any(p.startswith("keyframes") for p in self.attrs["frames"]["policies"])
        out = []
        for name, shape, _, _ in video_arrays(self.attrs, t, n if wants_luv else None):
            what = "token chunk" if name == schema.TOKENS else name
            try:
                arr = entry.stored(name)
            except (OSError, ValueError) as exc:
                out.append(f"{what} missing or truncated ({exc})")
                continue
            if arr is None or name == schema.LUV_SCORES and len(arr) != n:
                out.append(f"luv_scores missing or not one per source frame ({n})" if name == schema.LUV_SCORES
                           else f"{what} missing")
            elif tuple(arr.shape) != tuple(shape):
                out.append(f"{name} shape {list(arr.shape)} != expected {list(shape)}")
        if out:
            return out
        idx = np.asarray(record["frame_indices"])
        clip_rows = self.attrs["tokens"].get("unit") == "clip"  # rows are clips: their first frames may repeat
        if t == 0 or np.any(np.diff(idx) < (0 if clip_rows else 1)) or idx[0] < 0 or idx[-1] >= n:
            out.append(f"frame_indices not {'sorted' if clip_rows else 'strictly increasing'} within [0, {n})")
        if len(record["timestamps"]) != t or np.any(np.diff(record["timestamps"]) < 0):
            out.append("timestamps do not match the frames")
        for policy in self.attrs["frames"]["policies"]:
            pos = record["policies"].get(policy)
            length = parse_policy(policy).length(n)
            if pos is None or not pos or length not in (None, len(pos)) or min(pos) < 0 or max(pos) >= t:
                out.append(f"policy {policy} positions missing or out of range")
        if check_values and not out and not np.all(np.isfinite(entry.tokens)):
            out.append("tokens contain NaN or inf")
        return out

    def dataset(self, view="uniform:8", split="train", manifest=None, **kw):
        """One split of a view as a torch Dataset of ``(tokens (T, N, C), target)`` for your own
        loop; ``manifest``: labels and splits from a training manifest (None: the store's own).
        See featcache.cache.torch_dataset.CacheDataset for the options and attributes."""
        from featcache.cache.torch_dataset import cache_dataset

        return cache_dataset(self, view, split, manifest, **kw)


class CacheWriter(Cache):
    """Creates or resumes a packed store and publishes videos into a segment of its own.
    Use it as a context manager (or call ``close``) so the segment is sealed."""

    replaced: list[str] = []  # the differing facts of the store this writer replaced (replace=True)

    @classmethod
    def open(cls, path: str, attrs: dict, replace: bool = False, durable: bool = True,
             segment_bytes: int | None = None) -> "CacheWriter":
        """Create or resume the store at ``path``. A store made with other settings is refused,
        or with ``replace`` deleted and created anew; a store whose settings match is never
        deleted. Only a launcher (one process, before any worker starts) passes ``replace``.
        ``durable=False`` skips the fsyncs (benchmarks' set-up only)."""
        attrs = dict(to_json(attrs), fingerprint=schema.fingerprint(attrs), schema_version=schema.SCHEMA_VERSION)
        replaced = []
        if os.path.isdir(path) and os.listdir(path) and replace:
            old = loose.read_json(os.path.join(path, "zarr.json"))
            diff = schema.differing_facts(old.get("attributes", {}), attrs) if old else ["not a featcache store"]
            if diff:
                cls._remove_store(path)
                replaced = diff
        if not os.path.exists(path):
            cls._create(path, attrs)
        elif not os.path.isdir(path) or os.listdir(path) and not os.path.exists(os.path.join(path, "zarr.json")):
            raise FeatcacheError(f"--out {path}: exists and is not a featcache cache; choose another path")
        elif not os.listdir(path):
            os.rmdir(path)
            cls._create(path, attrs)
        writer = cls(path)
        writer.replaced = replaced
        if writer.layout == "loose":
            raise FeatcacheError(
                f"--out {path}: a schema-1 store (one folder per video), which featcache reads but no longer "
                f"writes; convert it with `featcache cache pack {path} --out NEW.zarr` and extract into NEW.zarr")
        diff = schema.differing_facts(writer.attrs, attrs)
        if diff:
            raise FeatcacheError(
                f"--out {path}: the cache was made with different settings ({', '.join(diff)}); "
                "use another --out, or --overwrite to replace it")
        writer.durable = durable
        writer.segment_bytes = segment_bytes or packed.env_number("FEATCACHE_SEGMENT_BYTES", packed.SEGMENT_BYTES)
        writer._segment = packed.SegmentWriter(writer.path, writer.attrs, durable)
        added = [p for p in attrs["frames"]["policies"] if p not in writer.attrs["frames"]["policies"]]
        if added:
            writer._add_policies(added)
        return writer

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Publish what is pending and seal this writer's segment (its arrays become plain Zarr
        arrays); idempotent. PublishError names the videos it could not publish."""
        segment = self._segment
        try:
            segment.seal()
        except OSError as exc:
            self._segment = packed.SegmentWriter(self.path, self.attrs, self.durable)
            why = exc.strerror or exc
            if not segment.lost:  # its videos are published: the segment reads as an interrupted run's
                raise PublishError(f"could not seal this run's segment {segment.path}: {why}; its videos "
                                   "are in the cache all the same") from None
            raise PublishError(f"could not publish the last {len(segment.lost)} video(s) of this run into the cache: "
                               f"{why}; the next extract redoes them", segment.lost) from None

    def _abandon_segment(self) -> list[str]:
        """After a failed publish: seal the segment if it can (publishing the videos written
        before the failure, unless that failure was their commit's); later videos go to a new
        segment. Returns the ids of the videos the old one wrote but never published."""
        segment, self._segment = self._segment, packed.SegmentWriter(self.path, self.attrs, self.durable)
        with contextlib.suppress(OSError):
            segment.seal()
        return segment.lost

    def _add_policies(self, added: list[str]) -> None:
        """Incremental pools: the store's policy list grows (never shrinks); videos gain the new
        policies' frames as extraction reaches them. The root's zarr.json is rewritten whole
        (a temporary file renamed over it: plain rename(2), atomic on NFS, Lustre and GPFS)."""
        if self.attrs["storage"]["dtype"] == "int8":
            raise OptionError("frames", f"{', '.join(added)} cannot be added to the int8 store {self.path} "
                                 "(its per-video scales would change); extract into another --out")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        frames = dict(self.attrs["frames"])
        first = frames.get("added") or {p: self.attrs.get("created_at") for p in frames["policies"]}
        frames["policies"] = [*frames["policies"], *added]
        frames["added"] = {**first, **{p: now for p in added}}
        meta = loose.read_json(os.path.join(self.path, "zarr.json"))
        meta["attributes"] = dict(meta["attributes"], frames=frames)
        tmp = os.path.join(self.path, f"zarr.json.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.path, "zarr.json"))
        self.attrs = meta["attributes"]
        self._segment.attrs = self.attrs

    @staticmethod
    def _create(path: str, attrs: dict) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs = dict(attrs, created_at=attrs.get("created_at") or now, layout=schema.PACKED_LAYOUT)
        tmp = f"{path.rstrip(os.sep)}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(os.path.join(tmp, schema.SEGMENTS))
        packed._write_new(os.path.join(tmp, "zarr.json"), packed.group_metadata(attrs))
        packed._write_new(os.path.join(tmp, schema.SEGMENTS, "zarr.json"), packed.group_metadata({}))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not _lost_race(exc):
                raise FeatcacheError(f"--out {path}: cannot create the cache ({exc.strerror or exc})") from None
            # another worker created it first: theirs is used

    @staticmethod
    def _remove_store(path: str) -> None:
        meta = loose.read_json(os.path.join(path, "zarr.json")) if os.path.isdir(path) else None
        if meta is None or "schema_version" not in meta.get("attributes", {}):
            raise OptionError("overwrite", f"{path} is not a featcache cache; refusing to delete it")
        shutil.rmtree(path)

    def done_keys(self) -> set[str]:
        return {k for k, r in self.records().items() if r.get("status") == "done"}

    # ------------------------------------------------------------------ writing
    def write_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                    cut: np.ndarray | None = None, side_crops: np.ndarray | None = None) -> int | None:
        """Publish one complete video; returns the bytes of token data written, or None when
        the store already holds it done (its copy is kept, ours dropped). Any other failure to
        publish raises PublishError: the video is not in the store."""
        if self.records().get(schema.video_key(record["video_id"]), {}).get("status") == "done":
            return None
        return self._publish_done(record, tokens, luv_scores, cut, side_crops)

    def _next_generation(self, key: str) -> int:
        """0 for a new video; one above the entry it replaces (a failure, a repaired copy)."""
        entry = self._index.get(key)
        return 0 if entry is None else entry.get("generation", 0) + 1

    def replace_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                      cut: np.ndarray | None = None, side_crops: np.ndarray | None = None) -> int | None:
        """Publish a grown version of a done video (incremental pools): appended again with a
        higher generation, which readers take over the old copy. Returns the bytes of token
        data, or None when the published copy already has every policy of ``record``."""
        key = schema.video_key(record["video_id"])
        theirs = self.records().get(key, {})
        if set(record["policies"]) <= set(theirs.get("policies", {})):
            return None
        return self._publish_done(record, tokens, luv_scores, cut, side_crops)

    def _publish_done(self, record: dict, tokens, luv_scores, cut, side_crops) -> int:
        """Append a done video one generation above the copy it replaces; its token bytes."""
        data = {schema.TOKENS: tokens, schema.LUV_SCORES: luv_scores, schema.CUT: cut, schema.SIDE_CROPS: side_crops}
        if self.attrs["storage"]["dtype"] == "int8":
            data[schema.TOKENS], data[schema.TOKEN_SCALES], data[schema.CHANNEL_SCALES] = quant.quantize(tokens)
        self._append(dict(record, status="done", has_luv_scores=luv_scores is not None),
                     packed.video_rows(self.attrs, data), self._next_generation(schema.video_key(record["video_id"])))
        return stage_bytes(tokens, self.attrs)

    def write_failure(self, record: dict, reason: str) -> None:
        key = schema.video_key(record["video_id"])
        if self.records().get(key, {}).get("status") == "done":
            return  # a video done earlier (or by a concurrent writer) stays done
        self._append(dict(record, status="failed", reason=reason), {}, self._next_generation(key))

    def drop(self, video_id: str, reason: str) -> None:
        """Replace a (broken) done video by a failure record, so the next extraction redoes it."""
        key = schema.video_key(video_id)
        record = {k: v for k, v in self.records()[key].items() if k not in ("has_luv_scores", "reason")}
        self._append(dict(record, status="failed", reason=reason), {}, self._next_generation(key))

    def write_raw(self, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """Publish a video's arrays exactly as another store holds them (``cache pack``)."""
        self._append(record, packed.video_rows(self.attrs, arrays), generation=0)

    def _append(self, record: dict, rows: dict[str, np.ndarray], generation: int) -> None:
        record = to_json(record)
        try:
            entry = self._segment.append(record, rows, generation)
        except OSError as exc:
            where = self._segment.path if self._segment.name else os.path.join(self.path, schema.SEGMENTS)
            lost = [v for v in self._abandon_segment() if v != record["video_id"]]  # this one: the error itself
            raise PublishError(f"could not publish into the cache: {exc.strerror or exc} ({where})",
                               lost) from None
        key = schema.video_key(record["video_id"])
        self.records()[key] = record
        self._index[key] = entry
        if self._segment.bytes >= self.segment_bytes:
            self._segment.seal()


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
    for name, (row, kind, dims, _) in packed.row_plan(attrs).items():
        if name == schema.LUV_SCORES:
            if source_frames:
                out.append((name, (source_frames,), kind, dims))
        elif name == schema.CHANNEL_SCALES:
            out.append((name, row, kind, dims[1:]))
        elif name == schema.SIDE_CROPS:
            out.append((name, (2, frames, *row[1:]), kind, ("crop", "frame", *dims[2:])))
        else:
            out.append((name, (frames, *row), kind, dims))
    return out


class PublishError(OSError):
    """A finished video could not be written into the store (it is not there). ``lost``: videos
    written earlier whose group commit failed with it (not there either)."""

    def __init__(self, message: str, lost: list[str] | None = None):
        super().__init__(message)
        self.lost = list(lost or [])


def _lost_race(exc: OSError) -> bool:
    """The rename failed only because the destination now exists: another writer was first."""
    import errno

    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY)


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
