"""Manifests from the official folder trees and split files of standard datasets.

Each converter returns ``(rows, notes)``: :class:`~featcache.data.manifest.ManifestRow` rows
(``video_id, path, label, split`` + extra columns), paths relative to the dataset root, and notes recording how the split was made (written
beside the manifest, in ``NAME.csv.json``, so the manifest itself stays plain CSV). Where the official split has no validation set, one
is carved from train deterministically: a training video goes to val when
``sha256(f"{seed}:{group}")`` falls below ``val_fraction``, so the carve is stable when videos are
added or reordered; for UCF101 the group is the class + performer group (``gXX``), so clips of one
group never straddle train and val.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re

from featcache.data.manifest import ManifestRow
from featcache.errors import FeatcacheError, OptionError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv")


def _unit(seed: int, key: str) -> float:
    """A deterministic number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def carve_val(rows: list[ManifestRow], fraction: float, seed: int,
              group=lambda r: r.video_id) -> list[ManifestRow]:
    """The rows with about ``fraction`` of the train rows moved to val, by group."""
    if not 0 <= fraction < 1:
        raise OptionError("val_fraction", f"must be in [0, 1), got {fraction}")
    return [row.replace(split="val") if row.split == "train" and _unit(seed, group(row)) < fraction else row
            for row in rows]


def _lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FeatcacheError(f"split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


def _load_json(path: str):
    if not os.path.isfile(path):
        raise FeatcacheError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise FeatcacheError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def video_files(root: str) -> list[str]:
    """Paths, relative to ``root``, of every video below it, sorted."""
    if not os.path.isdir(root):
        raise FeatcacheError(f"dataset root not found: {root}")
    out = []
    for folder, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(folder, n), root) for n in files
                if os.path.splitext(n)[1].lower() in VIDEO_EXTENSIONS]
    return sorted(out)


def index_videos(root: str) -> dict[str, str]:
    """File stem -> path relative to ``root`` (the first in sorted order when stems repeat)."""
    out = {}
    for rel in video_files(root):
        out.setdefault(os.path.splitext(os.path.basename(rel))[0], rel)
    return out


def _check_split_id(split_id: int) -> None:
    if split_id not in (1, 2, 3):
        raise OptionError("split_id", f"expected 1, 2 or 3, got {split_id}")


# ------------------------------------------------------------------------------------ datasets
def ucf101(root: str, splits_dir: str, split_id: int = 1, val_fraction: float = 0.1, seed: int = 0):
    """UCF101: classInd.txt, trainlist0N.txt ("Class/v_Class_gXX_cYY.avi 1"), testlist0N.txt."""
    _check_split_id(split_id)
    classes = {}
    for line in _lines(os.path.join(splits_dir, "classInd.txt")):
        index, name = line.split()
        classes[name] = int(index)
    rows = []
    for split, name in (("train", f"trainlist0{split_id}.txt"), ("test", f"testlist0{split_id}.txt")):
        for line in _lines(os.path.join(splits_dir, name)):
            rel = line.split()[0]
            label = rel.split("/")[0]
            if label not in classes:
                raise FeatcacheError(f"{name}: class {label!r} is not in classInd.txt")
            rows.append(ManifestRow(os.path.splitext(os.path.basename(rel))[0], rel, label, split))

    def group(row):
        m = re.search(r"_g(\d+)_c\d+$", row.video_id)
        return f"{row.label}:g{m.group(1) if m else row.video_id}"

    rows = carve_val(rows, val_fraction, seed, group)
    notes = [f"UCF101 official split {split_id} (trainlist0{split_id}/testlist0{split_id}); "
             f"val = train groups (class, gXX) with sha256(seed={seed}) < {val_fraction}"]
    return rows, notes


def hmdb51(root: str, splits_dir: str, split_id: int = 1, val_fraction: float = 0.1, seed: int = 0):
    """HMDB51: <class>_test_split<N>.txt with lines "video.avi 0|1|2" (unused/train/test)."""
    _check_split_id(split_id)
    suffix = f"_test_split{split_id}.txt"
    files = sorted(f for f in os.listdir(splits_dir) if f.endswith(suffix)) if os.path.isdir(splits_dir) else []
    if not files:
        raise FeatcacheError(f"no *{suffix} files in {splits_dir}")
    rows = []
    for name in files:
        label = name[: -len(suffix)]
        for line in _lines(os.path.join(splits_dir, name)):
            video, mark = line.split()
            split = {"1": "train", "2": "test"}.get(mark)
            if split:
                rows.append(ManifestRow(os.path.splitext(video)[0], f"{label}/{video}", label, split))
    rows = carve_val(rows, val_fraction, seed)
    notes = [f"HMDB51 official split {split_id} (marks 1=train, 2=test, 0 unused); "
             f"val = train videos with sha256(seed={seed}) < {val_fraction}"]
    return rows, notes


def kinetics(root: str, csv_files: list[str]):
    """Kinetics-400/600/700: CSVs of label,youtube_id,time_start,time_end,split; files named
    <youtube_id>_<start:06d>_<end:06d>.<ext> anywhere below root."""
    videos = index_videos(root)
    rows = []
    for path in csv_files:
        if not os.path.isfile(path):
            raise FeatcacheError(f"file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"youtube_id", "time_start", "time_end", "split"} - set(reader.fieldnames or [])
            if missing:
                raise FeatcacheError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            for r in reader:
                stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
                split = {"validate": "val", "valid": "val"}.get(r["split"], r["split"])
                rows.append(ManifestRow(stem, videos.get(stem, f"{split}/{stem}.mp4"), r.get("label", ""), split,
                                        {"time_start": r["time_start"], "time_end": r["time_end"]}))
    return rows, [f"Kinetics from {', '.join(os.path.basename(p) for p in csv_files)} (official train/val/test)"]


def ssv2(root: str, labels_json: str, train_json: str, val_json: str, test_json: str | None = None):
    """Something-Something v2: JSON lists of {id, template, ...}; the class is the template with
    its brackets removed, as in the labels JSON; videos <id>.webm."""
    labels = _load_json(labels_json)
    videos = index_videos(root)
    rows = []
    for split, path in (("train", train_json), ("val", val_json), ("test", test_json)):
        if path is None:
            continue
        for item in _load_json(path):
            vid = str(item["id"])
            label = item.get("template", "").replace("[", "").replace("]", "")
            if label and label not in labels:
                raise FeatcacheError(f"{path}: template {label!r} of video {vid} is not in {labels_json}")
            rows.append(ManifestRow(vid, videos.get(vid, f"{vid}.webm"), label, split))
    return rows, ["Something-Something v2 official train/validation(/test) JSON; the test set has no labels"]


def diving48(root: str, train_json: str, test_json: str, val_fraction: float = 0.1, seed: int = 0):
    """Diving48: JSON lists of {vid_name, label, start_frame, end_frame}; videos <vid_name>.mp4."""
    videos = index_videos(root)
    rows = []
    for split, path in (("train", train_json), ("test", test_json)):
        for item in _load_json(path):
            vid = item["vid_name"]
            rows.append(ManifestRow(vid, videos.get(vid, f"{vid}.mp4"), str(item["label"]), split))
    rows = carve_val(rows, val_fraction, seed)
    return rows, [f"Diving48 official train/test; val = train videos with sha256(seed={seed}) < {val_fraction}"]


def charades(root: str, train_csv: str, test_csv: str, classes_txt: str, val_fraction: float = 0.1, seed: int = 0):
    """Charades: CSVs with id and actions ("c092 11.90 21.20;c147 0.00 12.60"), the class list
    (c000 ...); multi-label: every class with an action in the video. The official test CSV
    (Charades_v1_test.csv, the usual evaluation set) becomes test."""
    known = {line.split()[0] for line in _lines(classes_txt)}
    videos = index_videos(root)
    rows = []
    for split, path in (("train", train_csv), ("test", test_csv)):
        if not os.path.isfile(path):
            raise FeatcacheError(f"file not found: {path}")
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                actions = [a.split() for a in (r.get("actions") or "").split(";") if a.strip()]
                labels = sorted({a[0] for a in actions})
                unknown = [c for c in labels if c not in known]
                if unknown:
                    raise FeatcacheError(f"{path}: video {r['id']}: class {unknown[0]} is not in {classes_txt}")
                rows.append(ManifestRow(r["id"], videos.get(r["id"], f"{r['id']}.mp4"), ";".join(labels), split,
                                        {"actions": r.get("actions", "")}))
    rows = carve_val(rows, val_fraction, seed)
    return rows, [f"Charades official train/test CSVs (multi-label); val = train videos with "
                  f"sha256(seed={seed}) < {val_fraction}"]


def folder(root: str, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0):
    """root/<class>/<video>: a seeded split by hash of the path, stable under additions."""
    if not 0 <= val_fraction + test_fraction < 1:
        raise FeatcacheError("--val-fraction + --test-fraction must be below 1")
    rows = []
    for rel in video_files(root):
        parts = rel.split(os.sep)
        if len(parts) < 2:
            continue  # videos directly under root have no class folder
        u = _unit(seed, rel)
        split = "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"
        rows.append(ManifestRow(os.path.splitext(rel)[0].replace(os.sep, "__"), rel, parts[0], split))
    if not rows:
        raise FeatcacheError(f"no videos in class folders under {root} (expected root/<class>/<video>)")
    return rows, [f"folder layout root/<class>/<video>; split by sha256(seed={seed}, path): "
                  f"test < {test_fraction}, val < {test_fraction + val_fraction}"]
