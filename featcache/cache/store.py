"""The only module that reads or writes Zarr. See schema.py for the layout.

Atomicity: a video is written completely under ``.staging/`` and then renamed into
``videos/<key>`` (a directory rename is atomic on POSIX file systems), so readers never see a
half-written video and a killed run leaves at most a stale staging directory, which the next
run removes. The root group is created the same way. Per-video records are read straight from
each group's ``zarr.json`` (10x faster than opening thousands of groups through zarr).
"""
from __future__ import annotations

import datetime
import errno
import json
import mmap
import os
import sys
import shutil
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from featcache.cache import quant, schema
from featcache.errors import FeatcacheError
from featcache.view import parse_policy

_CHUNK_KEYS = {"name": "v2", "separator": "."}  # "0.0.0.0": one file, no nested chunk dirs


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


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None


@dataclass
class VideoEntry:
    """One cached video. ``tokens`` is read on first access."""

    cache_path: str
    key: str
    record: dict

    @property
    def video_id(self) -> str:
        return self.record["video_id"]

    @cached_property
    def tokens(self) -> np.ndarray:
        """(T, L, N, C): frames, layers, tokens (prefix/CLS first), channels; int8 stores are
        dequantized to float16."""
        tokens = self._array(schema.TOKENS)
        if tokens.dtype != np.int8:
            return tokens
        return quant.dequantize(tokens, self._array(schema.TOKEN_SCALES), self._array(schema.CHANNEL_SCALES)[:, None])

    def read_frames_into(self, out: np.ndarray, positions: list[int], layer: int) -> None:
        """``out[t] = tokens[positions[t], layer]`` for a C-contiguous (T, N, C) ``out``.

        featcache writes each video's tokens as one uncompressed little-endian chunk, so a frame
        of one layer is one contiguous byte range of the chunk file: read it straight into
        ``out`` (one copy, no zarr overhead). Any other layout goes through zarr.
        """
        layout = self._plain_chunk()
        int8 = layout is not None and layout[2] == np.int8
        if layout is None or layout[2] != out.dtype and not int8:
            out[...] = self.tokens[np.asarray(positions), layer]
            return
        path, shape, dtype = layout
        itemsize, layer = dtype.itemsize, layer % shape[1]
        dest = np.empty(out.shape, np.int8) if int8 else out
        if len(positions) * 2 >= shape[0] and hasattr(mmap, "MAP_POPULATE"):
            _copy_mapped(dest, path, shape, itemsize, positions, layer)
        else:
            _read_ranges(dest, path, shape, itemsize, positions, layer)
        if int8:  # the scales are small: (T, L, N) and (L, C), each one plain chunk like the tokens
            scales = self._plain_array(schema.TOKEN_SCALES)[np.asarray(positions), layer]
            out[...] = quant.dequantize(dest, scales, self._plain_array(schema.CHANNEL_SCALES)[layer], out.dtype)

    def _plain_array(self, name: str) -> np.ndarray:
        """A small array read straight from its single chunk file (through zarr for any other layout)."""
        layout = self._plain_chunk(name)
        if layout is None:
            return self._array(name)
        path, shape, dtype = layout
        return np.fromfile(path, dtype=dtype).reshape(shape)

    def _plain_chunk(self, name: str = schema.TOKENS) -> tuple[str, list[int], np.dtype] | None:
        folder = os.path.join(self.cache_path, schema.VIDEOS, self.key, name)
        meta = _read_json(os.path.join(folder, "zarr.json")) or {}
        codecs = meta.get("codecs", [])
        plain = (len(codecs) == 1 and codecs[0].get("name") == "bytes"
                 and codecs[0].get("configuration", {}).get("endian", "little") == "little"
                 and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == meta.get("shape")
                 and meta.get("chunk_key_encoding") == {"name": "v2", "configuration": {"separator": "."}})
        if not plain or not sys.byteorder == "little":
            return None
        return os.path.join(folder, ".".join("0" * len(meta["shape"]))), meta["shape"], np.dtype(meta["data_type"])

    @property
    def frame_indices(self) -> np.ndarray:
        return np.asarray(self.record["frame_indices"], dtype=np.int64)

    @property
    def timestamps(self) -> np.ndarray:
        return np.asarray(self.record["timestamps"], dtype=np.float64)

    @cached_property
    def luv_scores(self) -> np.ndarray | None:
        """One score per source frame, or None when no keyframes policy was run."""
        return self._array(schema.LUV_SCORES) if self.record.get("has_luv_scores") else None

    @cached_property
    def side_crops(self) -> np.ndarray:
        """(2, T, L, N, C): the first and last of three spatial crops (extract --crops 3)."""
        return self._array(schema.SIDE_CROPS)

    @cached_property
    def cut(self) -> np.ndarray:
        """(T, N, C) float16: the residual stream entering the cut block (extract --cut-block)."""
        return self._array(schema.CUT)

    @property
    def policies(self) -> dict[str, list[int]]:
        return self.record["policies"]

    @property
    def labels(self) -> list[str]:
        return self.record["labels"]

    @property
    def split(self) -> str:
        return self.record["split"]

    def _array(self, name: str) -> np.ndarray:
        import zarr

        path = os.path.join(self.cache_path, schema.VIDEOS, self.key, name)
        return zarr.open_array(path, mode="r")[...]


class Cache:
    """Read-only view of a featcache store (``featcache.open_cache``)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        meta = _read_json(os.path.join(self.path, "zarr.json"))
        if meta is None:
            raise FeatcacheError(f"{path}: not a featcache cache (no zarr.json); create one with featcache extract")
        attrs = meta.get("attributes", {})
        if "schema_version" not in attrs:
            raise FeatcacheError(f"{path}: a Zarr store, but not one featcache wrote (no schema_version)")
        if attrs["schema_version"] > schema.SCHEMA_VERSION:
            raise FeatcacheError(
                f"{path}: cache schema {attrs['schema_version']} is newer than this featcache "
                f"understands ({schema.SCHEMA_VERSION}); upgrade featcache")
        self.attrs: dict = attrs
        self._records: dict[str, dict] | None = None

    # ------------------------------------------------------------------ listing
    def records(self) -> dict[str, dict]:
        """key -> record of every published video (done or failed)."""
        if self._records is None:
            self._records = {}
            videos = os.path.join(self.path, schema.VIDEOS)
            if os.path.isdir(videos):
                for entry in sorted(os.scandir(videos), key=lambda e: e.name):
                    meta = _read_json(os.path.join(entry.path, "zarr.json")) if entry.is_dir() else None
                    if meta is not None:
                        self._records[entry.name] = meta.get("attributes", {})
        return self._records

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
        return VideoEntry(self.path, key, record)

    def staged(self) -> list[str]:
        """Leftovers of interrupted writes (removed by the next extract run)."""
        staging = os.path.join(self.path, schema.STAGING)
        return sorted(os.listdir(staging)) if os.path.isdir(staging) else []

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of every per-frame array (tokens, their scales, cut, side crops) for one frame."""
        return frame_bytes(self.attrs)

    def size_on_disk(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total


    # ------------------------------------------------------------------ checks
    def verify(self, check_values: bool = True) -> list[str]:
        """Problems with the published videos (empty = consistent). Staged leftovers of an
        interrupted run are not problems: the next run redoes those videos."""
        problems = [f"root attributes lack {k!r}" for k in schema.ROOT_KEYS if k not in self.attrs]
        if problems:
            return problems
        for key, record in self.records().items():
            if key != schema.video_key(record.get("video_id", "")):
                problems.append(f"{key}: directory name does not match video_id {record.get('video_id')!r}")
            elif record.get("status") == "done":
                problems += [f"{record['video_id']}: {p}" for p in self._verify_video(key, record, check_values)]
            elif record.get("status") != "failed" or not record.get("reason"):
                problems.append(f"{key}: status {record.get('status')!r} without a failure reason")
        return problems

    def _verify_video(self, key: str, record: dict, check_values: bool) -> list[str]:
        missing = [k for k in schema.VIDEO_KEYS if k not in record]
        if missing:
            return [f"record lacks {', '.join(missing)}"]
        t = len(record["frame_indices"])
        tok = self.attrs["tokens"]
        expected = (t, len(self.attrs["layers"]), tok["num_tokens"], tok["dim"])
        out = []
        meta = _read_json(os.path.join(self.path, schema.VIDEOS, key, schema.TOKENS, "zarr.json")) or {}
        if tuple(meta.get("shape", ())) != expected:
            return [f"tokens shape {meta.get('shape')} != expected {list(expected)}"]
        chunk = os.path.join(self.path, schema.VIDEOS, key, schema.TOKENS, "0.0.0.0")
        nbytes = int(np.prod(expected)) * np.dtype(self.attrs["storage"]["dtype"]).itemsize
        if not os.path.isfile(chunk) or os.path.getsize(chunk) != nbytes:
            out.append(f"token chunk missing or truncated (expected {nbytes} bytes)")
        idx, n = np.asarray(record["frame_indices"]), record["source"]["num_frames"]
        if t == 0 or np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= n:
            out.append(f"frame_indices not strictly increasing within [0, {n})")
        if len(record["timestamps"]) != t or np.any(np.diff(record["timestamps"]) < 0):
            out.append("timestamps do not match the frames")
        for policy in self.attrs["frames"]["policies"]:
            pos = record["policies"].get(policy)
            length = parse_policy(policy).length(n)
            if pos is None or not pos or length not in (None, len(pos)) or min(pos) < 0 or max(pos) >= t:
                out.append(f"policy {policy} positions missing or out of range")
        if self.attrs.get("crops"):
            side = _read_json(os.path.join(self.path, schema.VIDEOS, key, schema.SIDE_CROPS, "zarr.json")) or {}
            if tuple(side.get("shape", ())) != (2, *expected):
                out.append(f"side_crops shape {side.get('shape')} != expected {[2, *expected]}")
        if self.attrs["storage"]["dtype"] == "int8":
            scales = _read_json(os.path.join(self.path, schema.VIDEOS, key, schema.TOKEN_SCALES, "zarr.json")) or {}
            if tuple(scales.get("shape", ())) != expected[:3]:
                out.append(f"token_scales shape {scales.get('shape')} != expected {list(expected[:3])}")
        if self.attrs.get("cut"):
            cut = _read_json(os.path.join(self.path, schema.VIDEOS, key, schema.CUT, "zarr.json")) or {}
            if tuple(cut.get("shape", ())) != (t, expected[2], expected[3]):
                out.append(f"cut shape {cut.get('shape')} != expected {[t, expected[2], expected[3]]}")
        entry = VideoEntry(self.path, key, record)
        wants_luv = any(p.startswith("keyframes") for p in self.attrs["frames"]["policies"])
        if wants_luv and (entry.luv_scores is None or len(entry.luv_scores) != n):
            out.append(f"luv_scores missing or not one per source frame ({n})")
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
    """Creates or resumes a store and publishes videos atomically."""

    replaced: list[str] = []  # the differing facts of the store this writer replaced (replace=True)

    @classmethod
    def open(cls, path: str, attrs: dict, replace: bool = False) -> "CacheWriter":
        """Create or resume the store at ``path``. A store made with other settings is refused,
        or with ``replace`` deleted and created anew; a store whose settings match is never
        deleted. Only a launcher (one process, before any worker starts) passes ``replace``."""
        attrs = dict(to_json(attrs), fingerprint=schema.fingerprint(attrs), schema_version=schema.SCHEMA_VERSION)
        replaced = []
        if os.path.isdir(path) and os.listdir(path) and replace:
            old = _read_json(os.path.join(path, "zarr.json"))
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
        diff = schema.differing_facts(writer.attrs, attrs)
        if diff:
            raise FeatcacheError(
                f"--out {path}: the cache was made with different settings ({', '.join(diff)}); "
                "use another --out, or --overwrite to replace it")
        writer._clean_staging()
        added = [p for p in attrs["frames"]["policies"] if p not in writer.attrs["frames"]["policies"]]
        if added:
            writer._add_policies(added)
        return writer

    def _add_policies(self, added: list[str]) -> None:
        """Incremental pools: the store's policy list grows (never shrinks); videos gain the new
        policies' frames as extraction reaches them. The root is rewritten atomically."""
        if self.attrs["storage"]["dtype"] == "int8":
            raise FeatcacheError(f"--frames: {', '.join(added)} cannot be added to the int8 store {self.path} "
                                 "(its per-video scales would change); extract into another --out")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        frames = dict(self.attrs["frames"])
        first = frames.get("added") or {p: self.attrs.get("created_at") for p in frames["policies"]}
        frames["policies"] = [*frames["policies"], *added]
        frames["added"] = {**first, **{p: now for p in added}}
        meta = _read_json(os.path.join(self.path, "zarr.json"))
        meta["attributes"] = dict(meta["attributes"], frames=frames)
        tmp = os.path.join(self.path, f"zarr.json.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        os.replace(tmp, os.path.join(self.path, "zarr.json"))
        self.attrs = meta["attributes"]

    @staticmethod
    def _create(path: str, attrs: dict) -> None:
        import zarr

        attrs = dict(attrs, created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        tmp = f"{path.rstrip(os.sep)}.tmp-{uuid.uuid4().hex[:8]}"
        root = zarr.create_group(zarr.storage.LocalStore(tmp), attributes=attrs)
        root.create_group(schema.VIDEOS)
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
        meta = _read_json(os.path.join(path, "zarr.json")) if os.path.isdir(path) else None
        if meta is None or "schema_version" not in meta.get("attributes", {}):
            raise FeatcacheError(f"--overwrite: {path} is not a featcache cache; refusing to delete it")
        shutil.rmtree(path)

    def _clean_staging(self) -> None:
        """Remove stale staging directories (their writer is gone: same host and pid dead)."""
        staging = os.path.join(self.path, schema.STAGING)
        for name in self.staged():
            parts = name.split("@")  # key@host@pid-random, see _stage_dir
            if len(parts) != 3 or parts[1] != os.uname().nodename:
                continue  # another host's writer may still be alive
            pid = parts[2].split("-")[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)

    def done_keys(self) -> set[str]:
        return {k for k, r in self.records().items() if r.get("status") == "done"}

    # ------------------------------------------------------------------ writing
    def write_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                    cut: np.ndarray | None = None, side_crops: np.ndarray | None = None) -> int | None:
        """Publish one complete video; returns the bytes of token data written, or None when
        another writer published this video first (its copy is kept, ours dropped). Any other
        failure to publish raises PublishError: the video is not in the store."""
        stage, record = self._stage(record, tokens, luv_scores, cut, side_crops)
        return stage_bytes(tokens, self.attrs) if self._publish(stage, record) else None

    def _stage(self, record: dict, tokens, luv_scores, cut, side_crops) -> tuple[str, dict]:
        """Write a complete video under .staging/; returns its folder and its published record."""
        import zarr

        record = dict(record, status="done", has_luv_scores=luv_scores is not None)
        stage = self._stage_dir(record["video_id"])
        group = zarr.create_group(zarr.storage.LocalStore(stage), attributes=to_json(record))
        data = {schema.TOKENS: tokens, schema.LUV_SCORES: luv_scores, schema.CUT: cut, schema.SIDE_CROPS: side_crops}
        if self.attrs["storage"]["dtype"] == "int8":
            data[schema.TOKENS], data[schema.TOKEN_SCALES], data[schema.CHANNEL_SCALES] = quant.quantize(tokens)
        for name, shape, kind, dims in video_arrays(self.attrs, len(tokens), luv_scores is not None and len(luv_scores)):
            arr = group.create_array(name, shape=shape, chunks=shape, dtype=kind, compressors=None,
                                     chunk_key_encoding=_CHUNK_KEYS, dimension_names=dims)  # one chunk file each
            arr[...] = data[name].astype(kind, copy=False)
        return stage, record

    def replace_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                      cut: np.ndarray | None = None, side_crops: np.ndarray | None = None) -> int | None:
        """Publish a grown version of a done video in place of the old one (incremental pools):
        the two directories are swapped in one ``renameat2(RENAME_EXCHANGE)``, so readers see the
        old or the new video, never none. Returns the bytes of token data, or None when the
        published copy already has every policy of ``record`` (another writer got there first)."""
        key = schema.video_key(record["video_id"])
        dest = os.path.join(self.path, schema.VIDEOS, key)
        theirs = (_read_json(os.path.join(dest, "zarr.json")) or {}).get("attributes", {})
        if set(record["policies"]) <= set(theirs.get("policies", {})):
            return None  # checked before writing anything; a grower racing past it swaps in an equal copy
        stage, record = self._stage(record, tokens, luv_scores, cut, side_crops)
        try:
            _exchange(stage, dest)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise PublishError(f"could not replace the video in the cache: {exc.strerror or exc} ({dest})") from None
        shutil.rmtree(stage, ignore_errors=True)  # now the old copy
        if self._records is not None:
            self._records[key] = to_json(record)
        return stage_bytes(tokens, self.attrs)

    def write_failure(self, record: dict, reason: str) -> None:
        import zarr

        record = dict(record, status="failed", reason=reason)
        stage = self._stage_dir(record["video_id"])
        zarr.create_group(zarr.storage.LocalStore(stage), attributes=to_json(record))
        self._publish(stage, record)

    def _stage_dir(self, video_id: str) -> str:
        name = f"{schema.video_key(video_id)}@{os.uname().nodename}@{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return os.path.join(self.path, schema.STAGING, name)

    def _publish(self, stage: str, record: dict) -> bool:
        """Rename the staged video into videos/; False when a done copy is already there."""
        key = schema.video_key(record["video_id"])
        dest = os.path.join(self.path, schema.VIDEOS, key)
        old = _read_json(os.path.join(dest, "zarr.json"))
        if old is not None and old.get("attributes", {}).get("status") == "done":
            shutil.rmtree(stage)  # already published (by an earlier or concurrent run)
            return False
        if old is not None or os.path.isdir(dest):
            shutil.rmtree(dest, ignore_errors=True)  # an earlier failure is replaced by this attempt
        try:
            os.rename(stage, dest)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            theirs = (_read_json(os.path.join(dest, "zarr.json")) or {}).get("attributes", {})
            if _lost_race(exc) and (theirs.get("status") == "done" or record["status"] == "failed"):
                return False  # a concurrent writer published the same video first: theirs stands
            raise PublishError(f"could not publish into the cache: {exc.strerror or exc} ({dest})") from None
        if self._records is not None:
            self._records[key] = to_json(record)
        return True


def stage_bytes(tokens: np.ndarray, attrs: dict) -> int:
    """Bytes of a video's arrays other than its LUV scores (what summaries call token data)."""
    return arrays_bytes(video_arrays(attrs, len(tokens)))


def arrays_bytes(plan: list[tuple], skip: tuple[str, ...] = ()) -> int:
    """Data bytes of a ``video_arrays`` plan (uncompressed single chunks), without ``skip``."""
    return sum(int(np.prod(shape)) * np.dtype(kind).itemsize for name, shape, kind, _ in plan if name not in skip)


def frame_bytes(attrs: dict) -> int:
    """Bytes per cached frame of a store with root attributes ``attrs`` (the per-video channel
    scales of int8 stores left out)."""
    return arrays_bytes(video_arrays(attrs, 1), skip=(schema.CHANNEL_SCALES,))


def _exchange(a: str, b: str) -> None:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err) + " (renameat2 RENAME_EXCHANGE: adding policies needs a local "
                                              "Linux file system that supports it)")


def video_arrays(attrs: dict, frames: int, source_frames: int | None = None) -> list[tuple]:
    """(name, shape, dtype, dimension names) of every array a video of ``frames`` cached frames
    holds in a store with root attributes ``attrs`` (``source_frames``: LUV scores, when kept).
    The writer and ``featcache estimate`` both use it."""
    tok, dtype = attrs["tokens"], attrs["storage"]["dtype"]
    shape = (frames, len(attrs["layers"]), tok["num_tokens"], tok["dim"])
    dims = ("frame", "layer", "token", "channel")
    out = [(schema.TOKENS, shape, dtype, dims)]
    if dtype == "int8":
        out += [(schema.TOKEN_SCALES, shape[:3], "float16", dims[:3]),
                (schema.CHANNEL_SCALES, (shape[1], shape[3]), "float32", ("layer", "channel"))]
    if source_frames:
        out.append((schema.LUV_SCORES, (source_frames,), "float32", ("source_frame",)))
    if attrs.get("cut"):
        out.append((schema.CUT, (frames, tok["num_tokens"], tok["dim"]), "float16", ("frame", "token", "channel")))
    if attrs.get("crops"):
        out.append((schema.SIDE_CROPS, (2, *shape), dtype, ("crop", *dims)))
    return out


class PublishError(OSError):
    """A finished video could not be renamed into the store (it is not there)."""


def _lost_race(exc: OSError) -> bool:
    """The rename failed only because the destination now exists: another writer was first."""
    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY)


def _runs(positions: list[int], stride: int):
    """(t, length) runs of consecutive cached frames; with several cached layers a frame of one
    layer is not adjacent to the next frame's, so every run is one frame long."""
    t = 0
    while t < len(positions):
        run = 1
        while stride == 1 and t + run < len(positions) and positions[t + run] == positions[t] + run:
            run += 1
        yield t, run
        t += run


def _copy_mapped(out, path, shape, itemsize, positions, layer) -> None:
    """Most frames wanted: map the whole chunk with its page tables populated in one call and
    copy runs of frames out (large copies are the fast ones; faster than a numpy memmap here)."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    if len(mapped) != int(np.prod(shape)) * itemsize:
        raise OSError(f"{path}: truncated token chunk; run featcache cache verify")
    tokens = np.frombuffer(mapped, dtype=out.dtype).reshape(shape)  # (T_pool, L, N, C)
    for t, run in _runs(positions, shape[1]):
        out[t:t + run] = tokens[positions[t]:positions[t] + run, layer]
    del tokens


def _read_ranges(out, path, shape, itemsize, positions, layer) -> None:
    """Few frames wanted: read just their byte ranges."""
    frame_bytes = int(np.prod(shape[2:])) * itemsize
    fd = os.open(path, os.O_RDONLY)
    try:
        for t, run in _runs(positions, shape[1]):
            offset = (positions[t] * shape[1] + layer) * frame_bytes
            if os.preadv(fd, [memoryview(out[t:t + run]).cast("B")], offset) != run * frame_bytes:
                raise OSError(f"{path}: truncated token chunk; run featcache cache verify")
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_cache(path: str) -> Cache:
    """Open a featcache store read-only."""
    return Cache(path)
