"""Read and validate manifests: CSV or JSONL with ``video_id,path,label,split``.

``label`` may hold several labels separated by ``;`` (multi-label) and may be empty for
unlabelled videos. Relative paths resolve against the manifest's folder. Extra columns are kept
and stored with each video.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

from featcache.errors import FeatcacheError

REQUIRED_COLUMNS = ("video_id", "path", "label", "split")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoItem:
    """One manifest row."""

    video_id: str
    path: str  # absolute
    labels: tuple[str, ...]
    split: str
    extra: dict = field(default_factory=dict)


def read_manifest(path: str) -> list[VideoItem]:
    """Parse and validate a manifest; raise FeatcacheError naming the file, line and problem."""
    if not os.path.isfile(path):
        raise FeatcacheError(f"manifest not found: {path}")
    rows = _read_jsonl(path) if path.endswith((".jsonl", ".json")) else _read_csv(path)
    if not rows:
        raise FeatcacheError(f"{path}: the manifest lists no videos")
    base = os.path.dirname(os.path.abspath(path))
    items, seen = [], {}
    for line, row in rows:
        item = _to_item(path, line, row, base)
        if item.video_id in seen:
            raise FeatcacheError(
                f"{path}:{line}: duplicate video_id {item.video_id!r} (first on line {seen[item.video_id]})"
            )
        seen[item.video_id] = line
        items.append(item)
    return items


def _read_csv(path: str) -> list[tuple[int, dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        lines = [ln for ln in f if not ln.startswith("#")]  # '#' lines carry provenance notes
    reader = csv.DictReader(lines)
    _check_columns(path, reader.fieldnames or [])
    rows = []
    for i, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise FeatcacheError(f"{path}:{i}: expected {len(reader.fieldnames)} columns")
        rows.append((i, row))
    return rows


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FeatcacheError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise FeatcacheError(f"{path}:{i}: each line must be a JSON object")
            _check_columns(path, list(row), line=i)
            rows.append((i, row))
    return rows


def _check_columns(path: str, columns: list[str], line: int | None = None) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        where = f"{path}:{line}" if line else path
        raise FeatcacheError(
            f"{where}: missing column(s) {', '.join(missing)}; a manifest needs {','.join(REQUIRED_COLUMNS)}"
        )


def _to_item(path: str, line: int, row: dict, base: str) -> VideoItem:
    video_id = str(row["video_id"]).strip()
    if not video_id:
        raise FeatcacheError(f"{path}:{line}: empty video_id")
    split = str(row["split"]).strip()
    if split not in SPLITS:
        raise FeatcacheError(f"{path}:{line}: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    video_path = str(row["path"]).strip()
    if not video_path:
        raise FeatcacheError(f"{path}:{line}: empty path for video {video_id!r}")
    label = row["label"]
    labels = label if isinstance(label, list) else str(label).split(";")
    labels = tuple(str(x).strip() for x in labels if str(x).strip())
    extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}
    return VideoItem(video_id, os.path.normpath(os.path.join(base, video_path)), labels, split, extra)
