"""The one writer of a store: :class:`CacheWriter` creates or resumes a packed store and
publishes videos into a segment of its own (``packed.SegmentWriter``); readers are in
``store.py``.

Long module: opening a store for writing (create, replace, refuse), publishing (done, grown,
failed, raw copies) and giving up a segment after an I/O error are one contract with the
segment writer; split it when a second writer kind arrives.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import uuid

import numpy as np

from featcache.cache import loose, packed, quant, schema
from featcache.cache.facts import store_attrs
from featcache.cache.store import Cache, to_json
from featcache.errors import FeatcacheError, OptionError


class CacheWriter(Cache):
    """Creates or resumes a packed store and publishes videos into a segment of its own.
    Use it as a context manager (or call ``close``) so the segment is sealed."""

    replaced: list[str] = []  # the differing facts of the store this writer replaced (replace=True)

    @classmethod
    def open(cls, path: str, attrs: dict, replace: bool = False, durable: bool = True,
             segment_bytes: int | None = None, task: str | None = None) -> "CacheWriter":
        """Create or resume the store at ``path``. A store made with other settings is refused,
        or with ``replace`` deleted and created anew, unless another writer is alive in it; a
        store whose settings match is never deleted. Only a launcher (one process, before any
        worker starts) passes ``replace``. ``task`` names what this writer extracts (a manifest and
        shard): a live writer of the same task is refused. ``durable=False`` skips the fsyncs
        (benchmarks' set-up only)."""
        if task is not None and os.path.isdir(path):
            live = packed.live_writers(path, task)
            if live:
                raise FeatcacheError(f"--out {path}: {task} is being extracted already, by {live[0]}; a second run "
                                     "would redo its videos: wait for it to finish, or stop it first")
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
        writer.durable, writer.task, writer.warnings = durable, task, []
        writer.segment_bytes = segment_bytes or packed.env_number("FEATCACHE_SEGMENT_BYTES", packed.SEGMENT_BYTES)
        writer._segment = packed.SegmentWriter(writer.path, writer.attrs, durable, task)
        added = [p for p in store_attrs(attrs).policies if p not in writer.facts.policies]
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
            self._segment = packed.SegmentWriter(self.path, self.attrs, self.durable, self.task)
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
        segment, self._segment = self._segment, packed.SegmentWriter(self.path, self.attrs, self.durable, self.task)
        with contextlib.suppress(OSError):
            segment.seal()
        if not segment.rows and segment.last_name:  # ours, and it publishes nothing: no reader needs it
            shutil.rmtree(segment.path, ignore_errors=True)
        return segment.lost

    def _add_policies(self, added: list[str]) -> None:
        """Incremental pools: the store's policy list grows (never shrinks); videos gain the new
        policies' frames as extraction reaches them. The root's zarr.json is rewritten whole
        (a temporary file renamed over it: plain rename(2), atomic on NFS, Lustre and GPFS)."""
        if self.facts.dtype == "int8":
            raise OptionError("frames", f"{', '.join(added)} cannot be added to the int8 store {self.path} "
                                 "(its per-video scales would change); extract into another --out")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        frames = self.facts.frames.to_json()
        first = frames.get("added") or {p: self.facts.created_at for p in self.facts.policies}
        frames = dict(frames, policies=[*self.facts.policies, *added], added={**first, **{p: now for p in added}})
        meta = loose.read_json(os.path.join(self.path, "zarr.json"))
        attributes = dict(meta.get("attributes"), frames=frames)
        meta = dict(meta, attributes=attributes)  # the same keys, in the same order
        packed.write_replacing(os.path.join(self.path, "zarr.json"), json.dumps(meta, indent=2).encode("utf-8"))
        self.attrs = attributes
        self._segment.attrs = self.attrs

    @staticmethod
    def _create(path: str, attrs: dict) -> None:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        attrs = dict(attrs, created_at=attrs.get("created_at") or now, layout=schema.PACKED_LAYOUT,
                     store_id=uuid.uuid4().hex)  # a writer notices a store replaced under it by this id
        tmp = f"{path.rstrip(os.sep)}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            os.makedirs(os.path.join(tmp, schema.SEGMENTS))
            packed._write_new(os.path.join(tmp, "zarr.json"), packed.group_metadata(attrs))
            packed._write_new(os.path.join(tmp, schema.SEGMENTS, "zarr.json"), packed.group_metadata({}))
            os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-created is left behind
            if not _lost_race(exc):
                raise FeatcacheError(f"--out {path}: cannot create the cache ({exc.strerror or exc})") from None
            # another worker created it first: theirs is used

    @staticmethod
    def _remove_store(path: str) -> None:
        meta = loose.read_json(os.path.join(path, "zarr.json")) if os.path.isdir(path) else None
        if meta is None or "schema_version" not in meta.get("attributes", {}):
            raise OptionError("overwrite", f"{path} is not a featcache cache; refusing to delete it")
        live = packed.live_writers(path)
        if live and os.environ.get("FEATCACHE_OVERWRITE_LIVE") != "1":
            raise OptionError("overwrite", f"{path} is being written by {live[0]}{' and others' if len(live) > 1 else ''}"
                              "; refusing to delete it under a live writer. Stop that run first (a crashed writer "
                              f"on another host goes stale {packed.HEARTBEAT_SECONDS:.0f} s after its last "
                              "heartbeat), or set FEATCACHE_OVERWRITE_LIVE=1 to delete it all the same")
        shutil.rmtree(path)

    def done_keys(self) -> set[str]:
        return {schema.video_key(v) for v in self.video_ids()}

    # ------------------------------------------------------------------ writing
    def write_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                    cut: np.ndarray | None = None, side_crops: np.ndarray | None = None,
                    views: np.ndarray | None = None) -> int | None:
        """Publish one complete video; returns the bytes of token data written, or None when
        the store already holds it done (its copy is kept, ours dropped). Any other failure to
        publish raises PublishError: the video is not in the store."""
        if record["video_id"] in self:  # done (by us, earlier, or by a concurrent writer)
            return None
        return self._publish_done(record, tokens, luv_scores, cut, side_crops, views)

    def _next_generation(self, key: str) -> int:
        """0 for a new video; one above the entry it replaces (a failure, a repaired copy)."""
        if key in self.fresh:
            return self.fresh[key].generation + 1
        row = int(self.index.find([key])[0])
        return 0 if row < 0 else int(self.index.cols.generation[row]) + 1

    def replace_video(self, record: dict, tokens: np.ndarray, luv_scores: np.ndarray | None,
                      cut: np.ndarray | None = None, side_crops: np.ndarray | None = None,
                      views: np.ndarray | None = None) -> int | None:
        """Publish a grown version of a done video (incremental pools): appended again with a
        higher generation, which readers take over the old copy. Returns the bytes of token
        data, or None when the published copy already has every policy of ``record``."""
        theirs = self.record(record["video_id"]) or {}
        if set(record["policies"]) <= set(theirs.get("policies", {})):
            return None
        return self._publish_done(record, tokens, luv_scores, cut, side_crops, views)

    def _publish_done(self, record: dict, tokens, luv_scores, cut, side_crops, views=None) -> int:
        """Append a done video one generation above the copy it replaces; its token bytes.
        ``views``: (K, T, L, N, C) training views, required in a store with views."""
        count = self.facts.views.count if self.facts.views else None
        if count and (views is None or len(views) != count):
            raise ValueError(f"{record.get('video_id')}: a store with {count} training views takes every video's views")
        data = {schema.TOKENS: tokens, schema.LUV_SCORES: luv_scores, schema.CUT: cut, schema.SIDE_CROPS: side_crops,
                schema.VIEWS: views}
        if self.facts.dtype == "int8":
            data[schema.TOKENS], data[schema.TOKEN_SCALES], data[schema.CHANNEL_SCALES] = quant.quantize(tokens)
            if views is not None:  # the views' own per-token scales, over the video's channel scales
                from featcache.cache.views import quantize_views

                data[schema.VIEWS], data[schema.VIEW_SCALES] = quantize_views(views, data[schema.CHANNEL_SCALES])
        self._append(dict(record, status="done", has_luv_scores=luv_scores is not None),
                     packed.video_rows(self.attrs, data), self._next_generation(schema.video_key(record["video_id"])))
        return packed.stage_bytes(tokens, self.attrs)

    def write_failure(self, record: dict, reason: str) -> None:
        key = schema.video_key(record["video_id"])
        if record["video_id"] in self:
            return  # a video done earlier (or by a concurrent writer) stays done
        self._append(dict(record, status="failed", reason=reason), {}, self._next_generation(key))

    def drop(self, video_id: str, reason: str) -> None:
        """Replace a (broken) done video by a failure record, so the next extraction redoes it."""
        key = schema.video_key(video_id)
        record = {k: v for k, v in self.record(video_id).items() if k not in ("has_luv_scores", "reason")}
        self._append(dict(record, status="failed", reason=reason), {}, self._next_generation(key))

    def write_raw(self, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """Publish a video's arrays exactly as another store holds them (``cache pack``)."""
        self._append(record, packed.video_rows(self.attrs, arrays), generation=0)

    def republish(self, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """Publish a video's arrays as they are, above any copy the index holds (``cache repair``
        re-indexing a video whose table row was lost)."""
        key = schema.video_key(record["video_id"])
        self._append(record, packed.video_rows(self.attrs, arrays), self._next_generation(key))

    def _append(self, record: dict, rows: dict[str, np.ndarray], generation: int) -> None:
        record = to_json(record)
        try:
            entry = self._segment.append(record, rows, generation)
        except ValueError as exc:  # a video id the index cannot hold
            raise PublishError(f"could not publish into the cache: {exc}") from None
        except OSError as exc:
            where = self._segment.path if self._segment.name else os.path.join(self.path, schema.SEGMENTS)
            lost = [v for v in self._abandon_segment() if v != record["video_id"]]  # this one: the error itself
            raise PublishError(f"could not publish into the cache: {exc.strerror or exc} ({where})",
                               lost, exc) from None
        self.fresh[schema.video_key(record["video_id"])] = entry
        if self._segment.bytes >= self.segment_bytes:  # roll over: the next video opens a new segment
            segment, self._segment = self._segment, packed.SegmentWriter(self.path, self.attrs, self.durable, self.task)
            try:
                segment.seal()
            except OSError as exc:
                if segment.lost:
                    raise PublishError(f"could not publish the last {len(segment.lost)} video(s) into the cache: "
                                       f"{exc.strerror or exc} ({segment.path})", segment.lost, exc) from None
                self.warnings.append(f"could not seal the full segment {segment.path}: {exc.strerror or exc}; its "
                                     "videos are in the cache all the same (featcache cache pack seals it)")


class PublishError(OSError):
    """A finished video could not be written into the store (it is not there). ``lost``: videos
    written earlier whose group commit failed with it (not there either). ``fatal``: later videos
    cannot be written either (a full disk or quota, a read-only or forbidden store, the store
    replaced under this run): an extraction stops."""

    _FATAL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

    def __init__(self, message: str, lost: list[str] | None = None, cause: OSError | None = None):
        super().__init__(message)
        self.lost = list(lost or [])
        self.replaced = isinstance(cause, packed.StoreReplaced)  # stop at once: nothing here is ours any more
        self.fatal = self.replaced or getattr(cause, "errno", None) in self._FATAL


def _lost_race(exc: OSError) -> bool:
    """The rename failed only because the destination now exists: another writer was first."""
    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY)


