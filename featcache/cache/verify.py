"""Checking a store: its index files against each other, every published video against its
record, and its rows against their checksums. Never raises on a damaged store: each problem is
one line naming the segment and row, or the video.

What is checked (docs/cache-format.md, "Faults"):

- each table row's own crc32c (an edited or garbage row), and that its offsets lie inside the
  index files (a truncated ``index``, ``ids`` or ``brief``);
- each row against its JSON line: the line's crc32c, the video id, generation, status and rows
  (an edited row range in either file);
- sealed segments: the table and JSON lines as long as their ``zarr.json`` says (a truncated
  table), and no complete JSON line without its table row (a dropped row);
- each video used by readers: its record, the shapes of its arrays, frame indices, timestamps
  and policies, the crc32c of its rows (``deep``), and finite tokens (``check_values``).

JSON lines without a table row at the end of an unsealed segment are an interrupted commit, not
damage: the next extraction redoes their videos, and ``cache repair`` re-indexes those whose
rows are intact.
"""
from __future__ import annotations

import json
import os

import numpy as np

from featcache.cache import index, packed, schema
from featcache.cache.facts import VideoRecord
from featcache.spec.policy import scores_needed
from featcache.spec.view import parse_policy


def index_problems(cache) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(one line per damaged or inconsistent index row or file, video id -> what is wrong with the
    index entry readers use for it (``cache repair`` marks those failed), notes on damage that
    loses nothing)."""
    out, bad, notes = [], {}, []
    for number, seg in enumerate(cache.segments()):
        where = f"segments/{seg.name}"
        out += [f"{where}/{packed.INDEX_FILE} line {n}: not a valid index entry" for n in seg.bad_lines]
        if seg.legacy:
            continue
        try:
            _segment_problems(cache, seg, where, out, bad, notes, cache.index.used(number))
        except OSError as exc:
            out.append(f"{where}: cannot read its index ({exc})")
    return out, bad, notes


def _segment_problems(cache, seg: index.SegmentIndex, where: str, out: list, bad: dict, notes: list,
                      used: np.ndarray) -> None:
    t = seg.table
    ok = index.rows_intact(t)
    sizes = {w: _size(seg.file(w)) for w in index.FILES[:-1]}
    sizes["positions"] //= 4  # int32 values
    beyond = np.zeros(len(t), bool)
    for which, (off, length) in {"index": ("line", "line_len"), "ids": ("ids", "id_len"),
                                 "labels": ("labels", "labels_len"),
                                 "positions": ("positions", "positions_len")}.items():
        past = ok & (t[off].astype(np.int64) + t[length] > sizes[which])
        beyond |= past
        out += [f"{where}/table/0 row {i}: points beyond the end of {which}/0 (truncated)" for i in np.flatnonzero(past)]
    good = np.flatnonzero(ok & ~beyond & used)  # rows readers use; superseded copies are left to pack
    with open(seg.file("index"), "rb") as f:
        data = f.read()
    ids = seg.ids(good) if len(good) else []
    for i, vid in zip(good.tolist(), ids):
        row = index.Table(t[i])
        line = data[int(row.line):int(row.line) + int(row.line_len)]
        found = _row_vs_line(row, line, vid)
        if found:
            bad[vid] = found
            out += [f"{where}/table/0 row {i} ({vid}): {p}" for p in found]
    healed = _unindexed_lines(cache, seg, where, data, t[ok], out, notes)
    damaged = [f"{where}/table/0 row {i}: damaged (its check does not match its words)" for i in np.flatnonzero(~ok)]
    if len(damaged) > healed:  # more damaged rows than videos served again from their JSON lines
        out += [f"{d}; featcache cache repair re-indexes its video from its JSON line" for d in damaged]
    else:
        notes += [f"{d}; no video is affected (served by another copy)" for d in damaged]
    if seg.sealed:  # what a size change costs is named above (lost rows, lines past an end); this says where
        for which in index.FILES:
            meta = _sealed_size(os.path.join(seg.path, which, "zarr.json"))
            meta = meta * 4 if meta is not None and which == "positions" else meta  # int32 values
            size = _size(seg.file(which))
            if meta is not None and meta != size:
                notes.append(f"{where}/{which}/0: {size} bytes where its seal recorded {meta} (truncated or appended to)")


def _row_vs_line(row: index.Table, line: bytes, vid: str) -> list[str]:
    """Disagreements between a table row and the JSON line it points to."""
    if index.crc32c(line) != row.line_crc:
        return ["its JSON line changed since it was written (checksum)"]
    try:
        entry = index.IndexEntry.from_json(json.loads(line))
        record = VideoRecord.from_json(entry.record)
    except (ValueError, KeyError, TypeError):
        return ["its JSON line is not an index entry"]
    out = []
    if record.video_id != vid or index.key_hash(schema.video_key(vid)) != row.hash:
        out.append(f"the JSON line names {record.video_id!r}")
    if entry.generation != row.generation:
        out.append(f"generation {row.generation} in the table, {entry.generation} in the JSON line")
    if record.done != (row.status == index.DONE):
        out.append("status differs between the table and the JSON line")
    starts, counts = row.starts.tolist(), row.counts.tolist()
    rows = {n: [starts[i], counts[i]] for i, n in enumerate(row.arrays) if counts[i]}
    theirs = {n: list(v) for n, v in entry.rows.items() if v[1]}
    if rows != theirs:
        out.append(f"rows {rows} in the table, {theirs} in the JSON line")
    return out


def _unindexed_lines(cache, seg: index.SegmentIndex, where: str, data: bytes, table: np.ndarray, out: list,
                     notes: list) -> int:
    """Complete JSON lines no valid table row points to. A line that is no index entry loses
    nothing (a note); an entry whose video the store does not hold done is a lost video, unless
    it is an unsealed segment's last, interrupted commit (the next extraction redoes it).
    Returns how many entries are served by another copy (re-indexed by repair)."""
    t = index.Table(table)
    last = int((t.line + t.line_len).max()) if len(table) else 0
    lost = []
    for offset, line in orphan_lines(data, table):
        vid = _line_video(line)
        if vid is None:
            notes.append(f"{where}/{packed.INDEX_FILE} byte {offset}: a line that is no index entry (no video is "
                         "affected; featcache cache pack writes a clean copy)")
            continue
        if seg.sealed or offset < last:
            lost.append((offset, vid))
    held = cache.statuses([v for _, v in lost]) if lost else []
    out += [f"{where}/{packed.INDEX_FILE} byte {o}: video {v!r} is published but its table row is lost; featcache "
            "cache repair re-indexes it" for (o, v), st in zip(lost, held) if st != "done"]
    return sum(st == "done" for st in held)


def orphan_lines(data: bytes, table: np.ndarray) -> list[tuple[int, bytes]]:
    """(offset, line) of every complete JSON line of ``data`` that no row of ``table`` points to."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, np.int64)
    used = set(index.Table(table).line.tolist())
    return [(int(s), data[s:e + 1]) for s, e in zip(starts.tolist(), ends.tolist()) if s not in used and e > s]


def _line_video(line: bytes) -> str | None:
    """The video id of an index entry's JSON line; None for a line that is no entry."""
    try:
        return VideoRecord.from_json(index.IndexEntry.from_json(json.loads(line)).record).video_id
    except (ValueError, KeyError, TypeError):
        return None


def interrupted(cache) -> dict[str, list[str]]:
    """segment -> ids of videos an interrupted commit wrote (complete JSON lines at the end of an
    unsealed segment, without their table rows) that the store does not hold done now: what the
    next extraction redoes. Empty once they are done elsewhere."""
    out = {}
    for seg in cache.segments():
        if seg.legacy or seg.sealed:
            continue
        try:
            with open(seg.file("index"), "rb") as f:
                data = f.read()
        except OSError:
            continue
        last = int((seg.cols.line + seg.cols.line_len).max()) if len(seg.table) else 0
        ids = []
        for offset, line in orphan_lines(data, seg.table):
            vid = _line_video(line) if offset >= last else None
            if vid is not None:
                ids.append(vid)
        left = [v for v, s in zip(ids, cache.statuses(ids)) if s != "done"] if ids else []
        if left:
            out[seg.name] = left
    return out


def video_problems(cache, check_values: bool = True, deep: bool = True) -> dict[str, list[str]]:
    """video id -> the problems of each published video readers use; never raises."""
    out = {}
    rows = cache.index_rows(status=None)
    try:
        entries = cache.index.entries(rows)
    except (OSError, ValueError) as exc:
        entries = [None] * len(rows)
        out["(index)"] = [f"its JSON lines cannot be read ({exc})"]
    for row, entry in zip(rows.tolist(), entries):
        record = (entry.record if entry is not None else None) or {}
        typed = VideoRecord.from_json(record if isinstance(record, dict) else {})
        key = typed.video_id or f"(index row {row})"
        try:
            if typed.done:
                found = _video(cache, row, record, typed, check_values, deep)
            elif not typed.failed or not typed.reason:
                found = [f"status {typed.status!r} without a failure reason"]
            else:
                found = []
        except Exception as exc:  # noqa: BLE001 -- a damaged video is a problem line, never a traceback
            found = [f"unreadable ({type(exc).__name__}: {exc})"]
        if found:
            out[key] = found
    return out


def _video(cache, row: int, record: dict, typed: VideoRecord, check_values: bool, deep: bool) -> list[str]:
    missing = typed.missing()
    if missing:
        return [f"record lacks {', '.join(missing)}"]
    t = len(typed.frame_indices)
    n = typed.num_frames
    if n is None:
        return ["record lacks source.num_frames"]
    entry = cache.entry_at(row, record)
    wants_luv = scores_needed(parse_policy(p) for p in cache.facts.policies)
    out = []
    for name, shape, _, _ in packed.video_arrays(cache.attrs, t, n if wants_luv else None):
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
    if deep and cache.layout == "packed" and not cache.index.segments[int(cache.index.seg[row])].legacy:
        out += [f"{name}: checksum mismatch (its bytes changed since they were written)"
                for name in cache.checksum_mismatches(entry)]
    idx = np.asarray(typed.frame_indices)
    clip_rows = cache.facts.clip_rows  # rows are clips: their first frames may repeat
    if t == 0 or np.any(np.diff(idx) < (0 if clip_rows else 1)) or idx[0] < 0 or idx[-1] >= n:
        out.append(f"frame_indices not {'sorted' if clip_rows else 'strictly increasing'} within [0, {n})")
    if len(typed.timestamps) != t or np.any(np.diff(typed.timestamps) < 0):
        out.append("timestamps do not match the frames")
    for policy in cache.facts.policies:
        pos = (typed.policies or {}).get(policy)
        length = parse_policy(policy).length(n)
        if pos is None or not pos or length not in (None, len(pos)) or min(pos) < 0 or max(pos) >= t:
            out.append(f"policy {policy} positions missing or out of range")
    if check_values and not out and not np.all(np.isfinite(entry.tokens)):
        out.append("tokens contain NaN or inf")
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _sealed_size(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(json.loads(f.read())["shape"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
