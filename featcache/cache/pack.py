"""`featcache cache pack` and `cache repair`.

``pack`` converts a schema-1 store into the packed layout, or compacts a packed store's many small
segments (one per array task, say) into few large ones. ``repair`` marks the broken videos of a
packed store as failed (an appended record; nothing is deleted), so the next extraction redoes them.

The new store gets every video's arrays byte for byte (int8 tokens and their scales included)
and its record unchanged; superseded copies (grown videos, racing duplicates) and unpublished
tails are left behind. STORE itself is only read.
"""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

import numpy as np

from featcache.cache import index, packed, schema, verify
from featcache.cache.facts import VideoRecord
from featcache.cache.store import Cache, open_cache
from featcache.cache.writer import CacheWriter
from featcache.errors import FeatcacheError


@dataclass
class PackSummary:
    videos: int = 0
    failed: int = 0
    segments_before: int = 0  # segments of a packed store; 0 for a loose one
    segments_after: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # video id -> why; recorded as failed in NEW


def pack(src: str, out: str, segment_bytes: int | None = None, show_progress: bool = False) -> PackSummary:
    cache = open_cache(src)
    if os.path.abspath(out) == cache.path:
        raise FeatcacheError(f"--out {out}: pack writes a new store and leaves {src} as it is; give a new path")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FeatcacheError(f"--out {out}: exists; give a new path (pack never writes into an existing store)")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    attrs = {**{k: v for k, v in cache.attrs.items() if k not in ("fingerprint", "schema_version", "layout")},
             "packed": {"from": cache.path, "from_schema": cache.facts.schema_version, "at": now}}
    summary = PackSummary(segments_before=len(cache.segments()), files_before=cache.file_count(),
                          bytes_before=cache.size_on_disk())
    order, records = _read_order(cache), cache.video_records()
    from rich.progress import Progress

    with Progress(disable=not show_progress) as progress, \
            CacheWriter.open(out, attrs, segment_bytes=segment_bytes) as writer:
        if writer.fingerprint != cache.fingerprint:
            raise FeatcacheError(f"{src}: its provenance does not reproduce its fingerprint; it was altered")
        task = progress.add_task("pack", total=len(order))
        for key in order:
            _copy(cache, writer, records[key], summary)
            progress.advance(task)
    new = open_cache(out)
    summary.segments_after, summary.files_after, summary.bytes_after = (len(new.segments()), new.file_count(),
                                                                        new.size_on_disk())
    return summary


@dataclass
class RepairSummary:
    dropped: dict[str, list[str]] = field(default_factory=dict)  # video id -> problems; recorded as failed
    reindexed: list[str] = field(default_factory=list)  # videos whose index row was lost, published again
    unrecoverable: dict[str, str] = field(default_factory=dict)  # orphan line -> why its rows cannot serve
    root_rebuilt: str = ""  # the segment whose copy of the root attributes rebuilt a lost root zarr.json


def repair(path: str, check_values: bool = True) -> RepairSummary:
    """Heal the packed store at ``path`` without deleting anything: a lost or corrupt root
    ``zarr.json`` is rebuilt from a segment's copy of it; videos whose index rows were lost or
    damaged (their JSON lines intact, their rows matching their checksums) are published again;
    every broken done video is recorded as failed (its problems as the reason), so the next
    extraction redoes it."""
    out = RepairSummary()
    out.root_rebuilt = rebuild_root(path)
    cache = open_cache(path)
    if cache.layout != "packed":
        raise FeatcacheError(f"{path}: a schema-1 store, which featcache no longer writes; `featcache cache pack "
                             f"{path} --out NEW.zarr` copies it and records its unreadable videos as failed")
    attrs = {k: v for k, v in cache.attrs.items() if k not in ("fingerprint", "schema_version", "layout")}
    orphans = _orphans(cache)
    with CacheWriter.open(path, attrs) as writer:
        for record, arrays, why in orphans:
            if why:
                out.unrecoverable[record.video_id] = why
            elif record.video_id not in writer:
                writer.republish(record.to_json(), arrays)
                out.reindexed.append(record.video_id)
    cache = open_cache(path)
    broken = {v: p for v, p in cache.broken(check_values).items() if v in cache}
    _, damaged, _ = verify.index_problems(cache)
    for vid, problems in damaged.items():  # its JSON line (the record) no longer matches what was written
        if vid in cache:
            broken.setdefault(vid, []).extend(problems)
    if broken:
        with CacheWriter.open(path, attrs) as writer:
            for vid, problems in broken.items():
                writer.drop(vid, "removed by featcache cache repair: " + "; ".join(problems))
                out.dropped[vid] = problems
    return out


def _orphans(cache: Cache) -> list[tuple[VideoRecord, dict, str]]:
    """(record, arrays, "" or why not) of each complete JSON line no valid table row points to,
    with its arrays read from its segment and checked against the line's checksums."""
    out = []
    for seg in cache.segments():
        if seg.legacy:
            continue
        valid = seg.table[index.rows_intact(seg.table)]
        try:
            with open(seg.file("index"), "rb") as f:
                data = f.read()
        except OSError:
            continue
        for _, line in verify.orphan_lines(data, valid):
            try:
                entry = json.loads(line)
                record, rows, crcs = VideoRecord.from_json(entry["record"]), entry["rows"], entry.get("crc") or {}
            except (ValueError, KeyError, TypeError):
                continue  # not an entry: nothing to recover
            if record.video_id is None:
                continue
            if not record.done:
                continue  # a failure record: the next extraction redoes it anyway
            arrays, why = {}, ""
            for name, (start, count) in rows.items():
                try:
                    block = cache._segment_rows(seg.name, name, start, count)
                except OSError as exc:
                    why = f"{name} rows unreadable ({exc})"
                    break
                if name not in crcs or index.crc32c(np.ascontiguousarray(block).tobytes()) != int(crcs[name], 16):
                    why = f"{name} rows do not match the line's checksum"
                    break
                arrays[name] = packed.from_rows(name, np.array(block))
            out.append((record, arrays, why))
    return out


def rebuild_root(path: str) -> str:
    """Write a lost or unreadable root ``zarr.json`` back from the copy of the root attributes
    that every segment keeps; returns the segment used ("" when the root was fine)."""
    root = os.path.join(path, "zarr.json")
    try:
        with open(root, "rb") as f:
            if "schema_version" in json.loads(f.read()).get("attributes", {}):
                return ""
    except (OSError, ValueError, AttributeError):
        pass
    folder = os.path.join(path, schema.SEGMENTS)
    names = sorted(os.listdir(folder), reverse=True) if os.path.isdir(folder) else []
    for name in names:  # the newest segment holds the newest policy list
        try:
            with open(os.path.join(folder, name, "zarr.json"), "rb") as f:
                attrs = json.loads(f.read())["attributes"]["featcache_segment"]["store"]
            attrs["schema_version"]  # noqa: B018
        except (OSError, ValueError, KeyError, TypeError):
            continue
        packed.write_replacing(root, packed.group_metadata(attrs))
        return name
    raise FeatcacheError(f"{path}: its root zarr.json is lost or corrupt and no segment keeps a copy of it "
                         "(segments written before featcache 0.1's columnar index do not); it cannot be rebuilt")


def _copy(cache: Cache, writer: CacheWriter, record: VideoRecord, summary: PackSummary) -> None:
    """One video (or failure record) into the new store; an unreadable video becomes a failure
    record there, so the next extraction redoes it. The record is written as read (its JSON
    round-trips exactly)."""
    if not record.done:
        writer.write_raw(record.to_json(), {})
        summary.failed += 1
        return
    try:
        arrays = cache.video(record.video_id).arrays()
    except (OSError, ValueError) as exc:
        reason = f"unreadable in {cache.path} ({exc}); the next extract run redoes it"
        summary.unreadable[record.video_id] = reason
        summary.failed += 1
        kept = {k: v for k, v in record.to_json().items() if k != "has_luv_scores"}
        writer.write_raw(dict(kept, status="failed", reason=reason), {})
        return
    writer.write_raw(record.to_json(), arrays)
    summary.videos += 1


def _read_order(cache: Cache) -> list[str]:
    """Keys in the order their bytes lie on disk (long sequential reads), failures first: from the
    index columns (segment, first token row), no record read again."""
    if cache.layout == "loose":
        return sorted(cache.records())
    rows, t = cache.index_rows(status=None), cache.index.cols
    order = np.lexsort((t.starts[rows, 0], cache.index.seg[rows], t.status[rows] == index.DONE))
    return [schema.video_key(v) for v in cache.index.ids(rows[order])]
