"""Read and validate manifests: CSV or JSONL with ``video_id,path[,label,split]``, or a plain list
of video paths (one per line, as video_features takes; ids from the file names).

Extraction needs only ``video_id,path``: frozen features do not depend on annotations.
``label`` may hold several labels separated by ``;`` (multi-label) and may be empty for
unlabelled videos; ``split`` may be empty (or absent) at extraction, and training then takes
labels and splits from a manifest given with ``--manifest`` (:mod:`featcache.data.annotations`).
A *training* manifest (``annotations=True``) needs ``video_id,label,split`` (``path`` optional).
Relative paths resolve against the manifest's folder. Extra columns are kept and stored with
each video. Lines starting with ``#`` are comments (for hand-written files); converted manifests
are plain CSV with their provenance beside them in ``NAME.csv.json``. Files are read as UTF-8
(a byte-order mark, as Excel's "CSV UTF-8" writes, and CRLF line ends are fine).

Long module: reading, writing, checking and group-splitting manifests share the row format and
its line-numbered errors.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from featcache.errors import FeatcacheError

REQUIRED_COLUMNS = ("video_id", "path", "label", "split")  # what converters write
EXTRACT_COLUMNS = ("video_id", "path")  # what extraction needs
TRAIN_COLUMNS = ("video_id", "label", "split")  # what training needs
SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv", ".3gp",
                    ".ts", ".ogv", ".vob")
PATH_LIST_HINT = "a CSV with video_id,path (label,split optional) or a text file with one video path per line"


@dataclass(frozen=True)
class VideoItem:
    """One manifest row as read (:func:`read_manifest`): the path made absolute, the labels split."""

    video_id: str
    path: str  # absolute ("" in a training manifest without paths)
    labels: tuple[str, ...]  # () when unlabelled or not given
    split: str  # train | val | test, or "" when not given (extraction only)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row as a converter makes it and :func:`write_manifest` writes it: the video's
    id, its ``path`` relative to the dataset root, ``label`` (several joined by ``;``, "" for none)
    and ``split`` as written, and the extra columns (``extra``: Kinetics' ``time_start`` ...)."""

    video_id: str
    path: str
    label: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, row: Mapping[str, Any] | ManifestRow) -> ManifestRow:
        """A row from a mapping of columns (``video_id``, ``path``, ``label``, ``split``, extras)."""
        if isinstance(row, cls):
            return row
        return cls(row["video_id"], row.get("path", ""), row.get("label", ""), row.get("split", ""),
                   {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS})

    def to_json(self) -> dict:
        """The row's columns, the required ones first."""
        return {"video_id": self.video_id, "path": self.path, "label": self.label, "split": self.split, **self.extra}

    def replace(self, **changes) -> ManifestRow:
        """A copy with ``changes``; a key that is not a field sets an extra column."""
        fields = {k: v for k, v in changes.items() if k in REQUIRED_COLUMNS}
        extra = {k: v for k, v in changes.items() if k not in REQUIRED_COLUMNS}
        return dataclasses.replace(self, **fields, extra={**self.extra, **extra}) if extra else \
            dataclasses.replace(self, **fields)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.label.split(";") if x.strip())


def read_manifest(path: str, annotations: bool = False, duplicates: list[str] | None = None) -> list[VideoItem]:
    """Parse and validate a manifest; raise FeatcacheError naming the file, line and problem.
    ``annotations``: a training manifest (every video needs a label column entry and a split).
    ``duplicates``: a list that collects repeated ids' messages (the later rows left out) instead of
    raising on the first (what ``manifest check`` reports)."""
    text = _read_text(path)
    if path.endswith((".jsonl", ".json")):
        rows = _read_jsonl(path, text, annotations)
    elif _is_csv(path, text):
        rows = _read_csv(path, text, annotations)
    else:
        if annotations:
            raise FeatcacheError(f"{path}: a list of paths holds no labels or splits; a training manifest "
                                 f"needs the columns {','.join(TRAIN_COLUMNS)}")
        return _read_path_list(path, text, duplicates)
    if not rows:
        raise FeatcacheError(f"{path}: the manifest lists no videos")
    base = os.path.dirname(os.path.abspath(path))
    items, seen = [], {}
    for line, row in rows:
        item = _to_item(path, line, row, base, annotations)
        if item.video_id in seen:
            message = f"{path}:{line}: duplicate video_id {item.video_id!r} (first on line {seen[item.video_id]})"
            if duplicates is None:
                raise FeatcacheError(message)
            duplicates.append(message)
            continue
        seen[item.video_id] = line
        items.append(item)
    return items


def _read_text(path: str) -> str:
    """The file as text: UTF-8, a byte-order mark dropped; a video, a folder or another encoding
    is one line saying what to give instead."""
    if os.path.isdir(path):
        raise FeatcacheError(f"{path} is a folder, not a manifest; give {PATH_LIST_HINT} "
                             f"(e.g. featcache manifest folder {path} --out m.csv)")
    if not os.path.isfile(path):
        raise FeatcacheError(f"manifest not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if path.lower().endswith(VIDEO_EXTENSIONS) or b"\0" in data[:4096]:
        what = "a video" if path.lower().endswith(VIDEO_EXTENSIONS) else "a binary file"
        raise FeatcacheError(f"{path} is {what}, not a manifest; give {PATH_LIST_HINT} "
                             f"(e.g. ls videos/*.mp4 > videos.txt)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FeatcacheError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the manifest as "
                             f"UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > utf8.csv") from None


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines that are not comments; CRLF, CR and LF all end a line."""
    return [(n, t) for n, t in enumerate(io.StringIO(text, newline=""), start=1) if not t.startswith("#")]


def _is_csv(path: str, text: str) -> bool:
    """A CSV manifest (a header naming video_id, or a .csv/.tsv file), not a list of paths."""
    if path.lower().endswith((".csv", ".tsv")):
        return True
    first = next((t for _, t in _lines(text) if t.strip()), "")
    return "video_id" in [c.strip() for c in next(csv.reader([first]), [])]


def _read_csv(path: str, text: str, annotations: bool) -> list[tuple[int, dict]]:
    """Rows with the file's own line numbers (comment lines are skipped, not renumbered)."""
    kept = _lines(text)
    reader = csv.DictReader(t for _, t in kept)
    if reader.fieldnames:
        reader.fieldnames = [c.strip() for c in reader.fieldnames]
    _check_columns(path, reader.fieldnames or [], annotations)
    rows = []
    for row in reader:
        line = kept[reader.line_num - 1][0]  # line_num counts the kept lines read so far
        if None in row or any(v is None for v in row.values()):
            raise FeatcacheError(f"{path}:{line}: expected {len(reader.fieldnames)} columns")
        rows.append((line, row))
    return rows


def _read_jsonl(path: str, text: str, annotations: bool) -> list[tuple[int, dict]]:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FeatcacheError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise FeatcacheError(f"{path}:{i}: each line must be a JSON object")
        _check_columns(path, list(row), annotations, line=i)
        rows.append((i, row))
    return rows


def _read_path_list(path: str, text: str, duplicates: list[str] | None = None) -> list[VideoItem]:
    """One video path per line (relative to the list's folder); ids are the file names' stems, so
    two files of one name in different folders collide: raised, or collected in ``duplicates``
    (the later line left out) as ``read_manifest``'s repeated ids."""
    base = os.path.dirname(os.path.abspath(path))
    items, seen = [], {}
    for line, t in _lines(text):
        video_path = t.strip()
        if not video_path:
            continue
        video_id = os.path.splitext(os.path.basename(video_path))[0]
        if not video_id:
            raise FeatcacheError(f"{path}:{line}: {video_path!r} names no file")
        if video_id in seen:
            first, first_path = seen[video_id]
            message = (f"{path}:{line}: video id {video_id!r} (from the file name) is also the id of line {first}: "
                       f"{first_path} and {video_path}; give a CSV with a video_id column to tell them apart")
            if duplicates is None:
                raise FeatcacheError(message)
            duplicates.append(message)
            continue
        seen[video_id] = (line, video_path)
        items.append(VideoItem(video_id, os.path.normpath(os.path.join(base, video_path)), (), ""))
    if not items:
        raise FeatcacheError(f"{path}: the manifest lists no videos")
    return items


def _check_columns(path: str, columns: list[str], annotations: bool, line: int | None = None) -> None:
    needed = TRAIN_COLUMNS if annotations else EXTRACT_COLUMNS
    missing = [c for c in needed if c not in columns]
    if missing:
        where = f"{path}:{line}" if line else path
        what = "a training manifest (labels and splits)" if annotations else "a manifest"
        raise FeatcacheError(f"{where}: missing column(s) {', '.join(missing)}; {what} needs {','.join(needed)} "
                             f"(it has {','.join(columns) or 'no header'})")


def _to_item(path: str, line: int, row: dict, base: str, annotations: bool) -> VideoItem:
    video_id = str(row["video_id"]).strip()
    if not video_id:
        raise FeatcacheError(f"{path}:{line}: empty video_id")
    split = str(row.get("split") or "").strip()
    if split not in SPLITS and (split or annotations):
        raise FeatcacheError(f"{path}:{line}: {'unknown split ' + repr(split) if split else 'empty split'} "
                             f"for video {video_id!r}; expected one of {', '.join(SPLITS)}")
    video_path = str(row.get("path") or "").strip()
    if not video_path and not annotations:
        raise FeatcacheError(f"{path}:{line}: empty path for video {video_id!r}")
    label = row.get("label") or ""
    labels = label if isinstance(label, list) else str(label).split(";")
    labels = tuple(str(x).strip() for x in labels if str(x).strip())
    extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}
    full = os.path.normpath(os.path.join(base, video_path)) if video_path else ""
    return VideoItem(video_id, full, labels, split, extra)


def provenance_path(manifest: str) -> str:
    """Where a converted manifest's provenance lives: ``NAME.csv.json`` beside it."""
    return f"{manifest}.json"


def write_manifest(rows: list[ManifestRow], out: str, root: str, notes: list[str], source: dict | None = None) -> None:
    """Write converter rows (paths relative to ``root``) as a plain CSV manifest that any CSV
    reader takes with default options; paths are written relative to the manifest's folder.
    ``notes`` (how the split was made) and ``source`` go to :func:`provenance_path`."""
    rows = [ManifestRow.from_json(r) for r in rows]
    seen = set()
    for r in rows:
        if r.video_id in seen:
            raise FeatcacheError(f"duplicate video_id {r.video_id!r} in the converted split files")
        seen.add(r.video_id)
    extra = sorted({k for r in rows for k in r.extra})
    base = os.path.dirname(os.path.abspath(out))
    os.makedirs(base, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*REQUIRED_COLUMNS, *extra])
        writer.writeheader()
        for r in rows:
            path = os.path.relpath(os.path.join(os.path.abspath(root), r.path), base)
            writer.writerow(r.replace(path=path).to_json())
    from featcache.version import __version__

    with open(provenance_path(out), "w", encoding="utf-8") as f:
        json.dump({"manifest": os.path.basename(out), "notes": notes, "dataset_root": os.path.abspath(root),
                   "videos": len(rows), "featcache_version": __version__, **(source or {})}, f, indent=2)
        f.write("\n")


def split_by_group(rows: list[ManifestRow], pattern: str, val_fraction: float, test_fraction: float,
                   seed: int = 0) -> tuple[list[ManifestRow], str]:
    r"""Re-split ``rows`` (``path`` relative, ``split`` set) so that the videos whose file names
    share the match of ``pattern`` (its first group when it has one, e.g. ``_g(\d+)_`` for UCF101's
    performer groups) share a split: sha256(seed, group) as a fraction of 2**64 against the same
    thresholds as per-video splits (test below test_fraction, then val). Returns the rows re-split,
    each with its ``group`` column, and a note for the provenance; a file name without a match is a
    FeatcacheError naming it."""
    import hashlib
    import re

    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise FeatcacheError(f"--group: {pattern!r} is not a regular expression ({exc})") from None
    out, groups = [], set()
    for row in map(ManifestRow.from_json, rows):
        name = os.path.basename(row.path)
        match = regex.search(name)
        if match is None:
            raise FeatcacheError(f"--group: {name} (of {row.path}) does not match {pattern!r}; every video needs a group")
        key = match.group(1) if regex.groups else match.group(0)
        u = int.from_bytes(hashlib.sha256(f"{seed}:group:{key}".encode()).digest()[:8], "big") / 2**64
        split = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        out.append(row.replace(split=split, group=key))
        groups.add(key)
    return out, (f"split by group: {len(groups)} groups from the file names' match of {pattern!r}, each wholly in one split by "
            f"sha256(seed={seed}, 'group:' + group): test < {test_fraction}, val < {test_fraction + val_fraction}")


def has_paths(path: str) -> bool:
    """Whether a manifest names video files: a list of paths, or a CSV/JSONL with a ``path``
    column (a training manifest, ``video_id,label,split``, has none)."""
    text = _read_text(path)
    if path.endswith((".jsonl", ".json")):
        first = next((ln for ln in text.splitlines() if ln.strip()), "{}")
        try:
            return "path" in json.loads(first)
        except (json.JSONDecodeError, TypeError):
            return True  # read_manifest says what is wrong with it
    if not _is_csv(path, text):
        return True
    header = next(csv.reader(t for _, t in _lines(text)), [])
    return "path" in [c.strip() for c in header]


@dataclass(frozen=True)
class CacheMatch:
    """A manifest's ids matched to a cache (``manifest check --cache``): how many it lists that
    the cache lacks (``missing``) or holds failed, how many done videos it does not list, and a
    note naming those."""

    path: str
    missing: int
    unlisted: int
    failed: int
    note: str | None = None

    def to_json(self) -> dict:
        out = {"path": self.path, "missing": self.missing, "unlisted": self.unlisted, "failed": self.failed}
        return {**out, "note": self.note} if self.note is not None else out


@dataclass(frozen=True)
class ManifestFacts:
    """What ``manifest check`` reports about a manifest (``--json`` prints :meth:`to_json`)."""

    annotated: bool  # any split given (a list of paths to extract from has none)
    videos: int
    per_split: dict[str, int]
    missing_files: int
    unreadable_files: int
    duplicate_ids: int
    paths: bool  # the manifest names video files (a training manifest may not)
    classes: int
    classes_per_split: dict[str, int]
    multi_label: bool
    unlabelled: int
    smallest_classes: list[tuple[str, int]]  # the 3 train classes with the fewest videos
    largest_classes: list[tuple[str, int]]
    cache: CacheMatch | None = None

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "cache"}
        return {**out, "cache": self.cache.to_json()} if self.cache is not None else out

    def replace(self, **changes) -> ManifestFacts:
        return dataclasses.replace(self, **changes)


def check_manifest(path: str, check_video=None, probe=None) -> tuple[ManifestFacts, list[str]]:
    """Facts about a manifest and the errors in it: duplicate ids, missing files, files
    ``check_video(path)`` finds unreadable (it returns a reason or None), classes without training
    videos. A training manifest without paths (``video_id,label,split``) is checked for its labels
    and splits. Bad columns and unreadable text raise FeatcacheError. (``probe`` is the old name of
    ``check_video``, still accepted.)"""
    from collections import Counter

    check_video = check_video or probe

    paths = has_paths(path)
    duplicates: list[str] = []
    items = read_manifest(path, annotations=not paths, duplicates=duplicates)
    missing = [it for it in items if paths and not os.path.isfile(it.path)]
    broken, absent = {}, {it.video_id for it in missing}
    for it in items:
        if check_video is not None and paths and it.video_id not in absent:
            reason = check_video(it.path)
            if reason:
                broken[it.video_id] = reason
    per_split = {s: [it for it in items if it.split == s] for s in SPLITS}
    labels = {s: sorted({lb for it in its for lb in it.labels}) for s, its in per_split.items()}
    train_counts = Counter(lb for it in per_split["train"] for lb in it.labels)
    no_train = sorted((set(labels["val"]) | set(labels["test"])) - set(labels["train"]))
    errors = list(duplicates)
    errors += [f"missing file: {it.video_id}: {it.path}" for it in missing]
    errors += [f"unreadable video: {v}: {reason}" for v, reason in broken.items()]
    errors += [f"class {c!r} has no training videos (it appears only in val/test)" for c in no_train]
    annotated = any(it.split for it in items)  # an extraction manifest (a list of paths) holds no splits
    if annotated and not per_split["train"]:
        errors.append("no videos in the train split")
    facts = ManifestFacts(
        annotated=annotated,
        videos=len(items),
        per_split={s: len(its) for s, its in per_split.items()},
        missing_files=len(missing),
        unreadable_files=len(broken),
        duplicate_ids=len(duplicates),
        paths=paths,
        classes=len({lb for ls in labels.values() for lb in ls}),
        classes_per_split={s: len(ls) for s, ls in labels.items()},
        multi_label=any(len(it.labels) > 1 for it in items),
        unlabelled=sum(1 for it in items if not it.labels),
        smallest_classes=sorted(train_counts.items(), key=lambda kv: (kv[1], kv[0]))[:3],
        largest_classes=sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3],
    )
    return facts, errors
