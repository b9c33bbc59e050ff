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
import os
from dataclasses import dataclass, field

from featcache.cache.store import Cache, CacheWriter, open_cache
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
    attrs = {k: v for k, v in cache.attrs.items() if k not in ("fingerprint", "schema_version", "layout")}
    attrs["packed"] = {"from": cache.path, "from_schema": cache.attrs["schema_version"], "at": now}
    summary = PackSummary(segments_before=len(cache.segments()), files_before=cache.file_count(),
                          bytes_before=cache.size_on_disk())
    order = _read_order(cache)
    from rich.progress import Progress

    with Progress(disable=not show_progress) as progress, \
            CacheWriter.open(out, attrs, segment_bytes=segment_bytes) as writer:
        if writer.fingerprint != cache.fingerprint:
            raise FeatcacheError(f"{src}: its provenance does not reproduce its fingerprint; it was altered")
        task = progress.add_task("pack", total=len(order))
        for key in order:
            _copy(cache, writer, cache.records()[key], summary)
            progress.advance(task)
    new = open_cache(out)
    summary.segments_after, summary.files_after, summary.bytes_after = (len(new.segments()), new.file_count(),
                                                                        new.size_on_disk())
    return summary


def repair(path: str, check_values: bool = True) -> dict[str, list[str]]:
    """Record every broken done video of the packed store at ``path`` as failed, with its
    problems as the reason; returns video id -> problems."""
    cache = open_cache(path)
    if cache.layout != "packed":
        raise FeatcacheError(f"{path}: a schema-1 store, which featcache no longer writes; `featcache cache pack "
                             f"{path} --out NEW.zarr` copies it and records its unreadable videos as failed")
    broken = {k: p for k, p in cache.broken(check_values).items() if cache.records()[k].get("status") == "done"}
    if not broken:
        return {}
    attrs = {k: v for k, v in cache.attrs.items() if k not in ("fingerprint", "schema_version", "layout")}
    out = {}
    with CacheWriter.open(path, attrs) as writer:
        for key, problems in broken.items():
            vid = cache.records()[key]["video_id"]
            writer.drop(vid, "removed by featcache cache repair: " + "; ".join(problems))
            out[vid] = problems
    return out


def _copy(cache: Cache, writer: CacheWriter, record: dict, summary: PackSummary) -> None:
    """One video (or failure record) into the new store; an unreadable video becomes a failure
    record there, so the next extraction redoes it."""
    if record.get("status") != "done":
        writer.write_raw(record, {})
        summary.failed += 1
        return
    try:
        arrays = cache.video(record["video_id"]).arrays()
    except (OSError, ValueError) as exc:
        reason = f"unreadable in {cache.path} ({exc}); the next extract run redoes it"
        summary.unreadable[record["video_id"]] = reason
        summary.failed += 1
        record = {k: v for k, v in record.items() if k != "has_luv_scores"}
        writer.write_raw(dict(record, status="failed", reason=reason), {})
        return
    writer.write_raw(record, arrays)
    summary.videos += 1


def _read_order(cache: Cache) -> list[str]:
    """Keys in the order their bytes lie on disk (long sequential reads), failures first."""
    records = cache.records()
    if cache.layout == "loose":
        return sorted(records)
    names = {s.name: i for i, s in enumerate(cache.segments())}
    index = cache.index_entries()

    def where(key: str):
        entry = index[key]
        rows = entry["rows"].get("tokens", [-1, 0])
        return (records[key].get("status") == "done", names[entry["segment"]], rows[0])

    return sorted(records, key=where)
