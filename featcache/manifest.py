"""Read and validate manifests: CSV or JSONL with ``video_id,path,label,split``.

``label`` may hold several labels separated by ``;`` (multi-label) and may be empty for
unlabelled videos. Relative paths resolve against the manifest's folder. Extra columns are kept
and stored with each video. Lines starting with ``#`` are comments (for hand-written files);
converted manifests are plain CSV with their provenance beside them in ``NAME.csv.json``.
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
    """Rows with the file's own line numbers (comment lines are skipped, not renumbered)."""
    with open(path, newline="", encoding="utf-8") as f:
        kept = [(number, text) for number, text in enumerate(f, start=1) if not text.startswith("#")]
    reader = csv.DictReader(text for _, text in kept)
    _check_columns(path, reader.fieldnames or [])
    rows = []
    for row in reader:
        line = kept[reader.line_num - 1][0]  # line_num counts the kept lines read so far
        if None in row or any(v is None for v in row.values()):
            raise FeatcacheError(f"{path}:{line}: expected {len(reader.fieldnames)} columns")
        rows.append((line, row))
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


def provenance_path(manifest: str) -> str:
    """Where a converted manifest's provenance lives: ``NAME.csv.json`` beside it."""
    return f"{manifest}.json"


def write_manifest(rows: list[dict], out: str, root: str, notes: list[str], source: dict | None = None) -> None:
    """Write converter rows (paths relative to ``root``) as a plain CSV manifest that any CSV
    reader takes with default options; paths are written relative to the manifest's folder.
    ``notes`` (how the split was made) and ``source`` go to :func:`provenance_path`."""
    seen = set()
    for r in rows:
        if r["video_id"] in seen:
            raise FeatcacheError(f"duplicate video_id {r['video_id']!r} in the converted split files")
        seen.add(r["video_id"])
    extra = sorted({k for r in rows for k in r} - set(REQUIRED_COLUMNS))
    base = os.path.dirname(os.path.abspath(out))
    os.makedirs(base, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*REQUIRED_COLUMNS, *extra])
        writer.writeheader()
        for r in rows:
            path = os.path.relpath(os.path.join(os.path.abspath(root), r["path"]), base)
            writer.writerow({**r, "path": path})
    from featcache import __version__

    with open(provenance_path(out), "w", encoding="utf-8") as f:
        json.dump({"manifest": os.path.basename(out), "notes": notes, "dataset_root": os.path.abspath(root),
                   "videos": len(rows), "featcache_version": __version__, **(source or {})}, f, indent=2)
        f.write("\n")


def check_manifest(path: str) -> tuple[dict, list[str]]:
    """Facts about a manifest and the errors in it (missing files, classes without training
    videos). Structural problems (duplicate ids, bad columns) raise FeatcacheError."""
    from collections import Counter

    items = read_manifest(path)
    missing = [it for it in items if not os.path.isfile(it.path)]
    per_split = {s: [it for it in items if it.split == s] for s in SPLITS}
    labels = {s: sorted({lb for it in its for lb in it.labels}) for s, its in per_split.items()}
    train_counts = Counter(lb for it in per_split["train"] for lb in it.labels)
    no_train = sorted((set(labels["val"]) | set(labels["test"])) - set(labels["train"]))
    errors = [f"missing file: {it.video_id}: {it.path}" for it in missing]
    errors += [f"class {c!r} has no training videos (it appears only in val/test)" for c in no_train]
    if not per_split["train"]:
        errors.append("no videos in the train split")
    facts = {
        "videos": len(items),
        "per_split": {s: len(its) for s, its in per_split.items()},
        "missing_files": len(missing),
        "classes": len({lb for ls in labels.values() for lb in ls}),
        "classes_per_split": {s: len(ls) for s, ls in labels.items()},
        "multi_label": any(len(it.labels) > 1 for it in items),
        "unlabelled": sum(1 for it in items if not it.labels),
        "smallest_classes": sorted(train_counts.items(), key=lambda kv: (kv[1], kv[0]))[:3],
        "largest_classes": sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3],
    }
    return facts, errors
