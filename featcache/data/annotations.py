"""Labels and splits at training time: features apart from annotations.

Cached tokens depend on the video and the model, never on its labels or split, so one
extraction serves every official split, relabelling and class subset of the same videos (as
mmaction2 and dinov2's evaluation keep annotation files apart from the data). A training manifest
(``video_id,label,split``; ``path`` optional) is matched against the cache's records by
``video_id``; the records the training readers see carry the manifest's labels and split:

- a video of the manifest without a done video in the cache (never extracted, or failed) is
  *missing*: counted and named in the summary, not trained on;
- a done video of the cache that the manifest does not list is *unlisted*: it belongs to no
  split (its split reads ``""``), counted and named too.

Without a manifest the store's own annotations (those of its extraction manifest) apply.
:func:`annotate` wraps a Cache in an :class:`AnnotatedCache`, which answers ``records()`` (each
video an :class:`Annotated`, parsed once from the cache's briefs) and ``done_videos(split)`` (the
cache's typed records) with the effective labels and splits, and passes everything else
(``facts``, ``video()``, ``fingerprint`` ...) to the cache, whose own records are never changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from featcache.data.manifest import SPLITS, read_manifest
from featcache.errors import FeatcacheError

SHOWN = 10  # ids named in a summary line before "... and N more"


@dataclass(frozen=True)
class Annotated:
    """One cached video as training sees it: its id and extraction status (the store's), its
    labels and split (the manifest's, or the store's own), and the positions of each cached frame
    policy when the cache's brief carried them."""

    video_id: str
    status: str | None
    split: str = ""
    labels: tuple[str, ...] = ()
    policies: Mapping | None = None

    @classmethod
    def of_brief(cls, brief: Mapping) -> Annotated:
        """A video's brief (``Cache.briefs``: the index columns video_id, status, split, labels,
        policies), parsed once."""
        return cls(brief.get("video_id", ""), brief.get("status"), brief.get("split") or "",
                   tuple(brief.get("labels") or ()), brief.get("policies"))

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class Annotations:
    """The effective records of a cache under a training manifest (or the store's own)."""

    path: str | None  # absolute path of the manifest; None: the store's own annotations
    sha256: str | None  # of the manifest file's bytes
    records: dict[str, Annotated]  # video id -> the video with its effective labels and split
    missing: list[str] = field(default_factory=list)  # manifest ids without a done video in the cache
    unlisted: list[str] = field(default_factory=list)  # done cache ids the manifest does not list
    failed: list[str] = field(default_factory=list)  # ids (of the manifest, or of the store) that failed extraction

    def done(self, split: str) -> list[Annotated]:
        """Done videos of ``split``, sorted by video id (the order views use)."""
        return sorted((r for r in self.records.values() if r.done and r.split == split), key=lambda r: r.video_id)

    def counts(self) -> dict[str, int]:
        return {s: len(self.done(s)) for s in SPLITS}

    def classes(self) -> list[str]:
        """Every label of the done videos of train, val and test (what a run's class list is)."""
        return sorted({c for s in SPLITS for r in self.done(s) for c in r.labels})

    def meta(self) -> dict:
        """What a run records about its annotations (config.yaml, checkpoints)."""
        return {"path": self.path, "sha256": self.sha256, "videos": self.counts(), "missing": len(self.missing),
                "unlisted": len(self.unlisted), "failed": len(self.failed)}

    def summary(self) -> list[str]:
        """Lines for the start of a run: where labels and splits come from, counts per split, and
        every video left out, by name."""
        source = (f"{self.path} (sha256 {self.sha256[:12]})" if self.path
                  else "the store's own (its extraction manifest)")
        counts = ", ".join(f"{s} {n}" for s, n in self.counts().items())
        lines = [f"labels and splits: {source}; videos: {counts}"]
        if self.missing:
            lines.append(f"{len(self.missing)} video(s) of the manifest are not in the cache (not extracted or "
                         f"failed), left out: {name_some(self.missing)}")
        if self.unlisted:
            lines.append(f"{len(self.unlisted)} cached video(s) are not in the manifest, left out: "
                         f"{name_some(self.unlisted)}")
        if self.failed:
            lines.append(f"{len(self.failed)} video(s) failed at extraction, left out: {name_some(self.failed)} "
                         "(featcache cache info lists the reasons)")
        return lines


def name_some(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" ... and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def carve_val(ann: Annotations, fraction: float) -> Annotations:
    """Annotations without a val split get one: each train video goes to val when
    ``sha256("val:" + video_id)`` falls below ``fraction`` (stable under added videos and any
    seed; the converters' carve, which keeps performer groups together, is better where it exists)."""
    if not fraction:
        return ann
    if ann.done("val"):
        raise FeatcacheError(f"val_fraction={fraction}: the annotations already have a val split "
                             f"({len(ann.done('val'))} videos); val_fraction carves one only where there is none")
    records = {}
    for key, r in ann.records.items():
        digest = hashlib.sha256(f"val:{r.video_id}".encode()).digest()
        moved = r.split == "train" and int.from_bytes(digest[:8], "big") / 2**64 < fraction
        records[key] = dataclasses.replace(r, split="val") if moved else r
    return Annotations(ann.path, ann.sha256, records, ann.missing, ann.unlisted, ann.failed)


def load_annotations(cache, manifest: str | None = None, val_fraction: float = 0.0) -> Annotations:
    """The cache's records with labels and splits from ``manifest`` (None or "": the store's),
    val carved from train by ``val_fraction`` when there is no val split."""
    return carve_val(_load(cache, manifest), val_fraction)


def _load(cache, manifest: str | None) -> Annotations:
    records = {key: Annotated.of_brief(brief) for key, brief in cache.briefs(status=None).items()}
    if not manifest:
        failed = sorted(r.video_id for r in records.values() if r.failed)
        return Annotations(None, None, records, failed=failed)
    items = {it.video_id: it for it in read_manifest(manifest, annotations=True)}
    effective, status = {}, {}
    for key, record in records.items():
        item = items.get(record.video_id)
        status[record.video_id] = record.status
        if item is None:  # in no split: the readers never see it
            effective[key] = dataclasses.replace(record, labels=(), split="")
        else:
            effective[key] = dataclasses.replace(record, labels=tuple(item.labels), split=item.split)
    missing = sorted(v for v in items if status.get(v) != "done")
    unlisted = sorted(v for v, s in status.items() if s == "done" and v not in items)
    failed = sorted(v for v in items if status.get(v) == "failed")
    return Annotations(os.path.abspath(manifest), file_sha256(manifest), effective, missing, unlisted, failed)


class AnnotatedCache:
    """A Cache seen through a training manifest: ``records()`` and ``done_records(split)`` give
    the effective labels and splits; everything else is the cache's own."""

    def __init__(self, cache, annotations: Annotations):
        self.cache, self.annotations = cache, annotations

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def records(self) -> dict[str, Annotated]:
        """video id -> the video under the manifest (its labels and split)."""
        return self.annotations.records

    def done_records(self, split: str) -> list[dict]:
        """Full records of the split's done videos, with the manifest's labels and split (as
        stored: readers take :meth:`done_videos`)."""
        done = self.annotations.done(split)
        full = self.cache.records_of([r.video_id for r in done])
        return [dict(f, labels=list(r.labels), split=r.split) for f, r in zip(full, done)]

    def done_videos(self, split: str) -> list[tuple]:
        """(VideoEntry, its typed record with the manifest's labels and split) of each done video
        of the split, sorted by video id."""
        done = self.annotations.done(split)
        entries = self.cache.entries([r.video_id for r in done])
        return [(entry, dataclasses.replace(entry.facts, labels=r.labels, split=r.split))
                for entry, r in zip(entries, done)]

    def done_labels(self, splits) -> list[list[str]]:
        return [list(r.labels) for sp in splits for r in self.annotations.done(sp)]

    def split_columns(self, split: str):
        """(index rows, video ids, labels) of the split's done videos under the manifest, or None."""
        done = self.annotations.done(split)
        ids = [r.video_id for r in done]
        rows = self.cache.rows_of(ids) if self.cache.layout == "packed" and not self.cache.fresh else None
        return None if rows is None else (rows, ids, [list(r.labels) for r in done])

    def done_entries(self, split: str) -> list:
        """The split's done videos (the cache's VideoEntry) with the manifest's labels and split."""
        done = self.annotations.done(split)
        entries = self.cache.entries([r.video_id for r in done])
        for entry, r in zip(entries, done):
            entry._brief = dict(entry.brief, labels=list(r.labels), split=r.split)
        return entries


def annotate(cache, manifest: str | None = None, val_fraction: float = 0.0) -> AnnotatedCache:
    """``cache`` (a Cache, or one already annotated: its own cache is used) with labels and
    splits from ``manifest`` (None or "": the store's own), see :func:`load_annotations`."""
    base = cache.cache if isinstance(cache, AnnotatedCache) else cache
    return AnnotatedCache(base, load_annotations(base, manifest, val_fraction))


def check_selection(ann: Annotations, select: str, metric: str = "") -> None:
    """Refuse to select on val (``select: val``, or a val/ sweep metric) where there is no val."""
    if ann.done("val") or (select != "val" and not metric.startswith("val/")):
        return
    where = f"--manifest {ann.path}" if ann.path else "the store's annotations"
    what = f"the sweep metric {metric}" if metric.startswith("val/") else "select: val"
    raise FeatcacheError(f"no videos in the val split ({where}) for {what}; carve one from train with "
                         "--set val_fraction=0.1, or keep the last epoch with --set select=last")


def check_same_manifest(sha256: str | None, path: str) -> None:
    """Refuse a run's manifest that changed on disk since it was trained: ``sha256`` (its hash
    then, as the run recorded it) differs from the file's now."""
    if sha256 and os.path.isfile(path) and file_sha256(path) != sha256:
        raise FeatcacheError(f"{path}: the manifest this run was trained with has changed since (sha256 "
                             f"{sha256[:12]} then); give --manifest {path} to evaluate with it as it is now")
