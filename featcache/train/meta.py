"""What a run directory and a checkpoint record about a run, as frozen types parsed once.

``config.yaml`` and every checkpoint (``best.pt``, ``last.pt``) hold the same run metadata
(:class:`RunMeta`): the cache trained on (:class:`CacheRef`), the classes, single or multi-label,
the resolved training config, where the head's class came from (:class:`HeadSource`), the labels
and splits used (:class:`ManifestRef`), and per kind of run the splits streamed from disk, the
pretext task of a pre-training (:class:`Pretext`) or the closed-form probe's choice
(:class:`ProbeChoice`). A checkpoint adds the head and its weights (:class:`Checkpoint`);
``metrics.json`` holds the final scores (:class:`Metrics`).

Each type reads its stored form with ``from_json`` and writes it with ``to_json``, as zarr-python
parses its metadata (``zarr/core/metadata/v3.py``, ``from_dict`` / ``to_dict``): keys a type does
not know are kept in ``extra`` and written back, in the order they were read, so
``to_json(from_json(d)) == d`` for files of older and newer featcache versions alike, and a record
built here writes the same bytes the hand-built dicts did (tests/train/test_meta.py).

Long module: one short declaration per stored document of a run (config.yaml, the checkpoints and
last.pt's resume state, metrics.json, log.jsonl), all on the one ``Record`` base above them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from featcache.errors import FeatcacheError


@dataclass(frozen=True, kw_only=True)
class Record:
    """A stored JSON/YAML object: known keys as fields, the rest in ``extra``.

    ``KEYS`` are the known keys in the order a new record writes them; ``ATTRS`` maps a key to its
    field where they differ (``class`` -> ``cls``); ``NESTED`` the keys held as records;
    ``LISTS`` the keys stored as lists and held as tuples; ``OPTIONAL`` the keys a new record
    leaves out while None. ``order`` is the key order read (empty for a record built here)."""

    KEYS: ClassVar[tuple[str, ...]] = ()
    ATTRS: ClassVar[dict[str, str]] = {}
    NESTED: ClassVar[dict[str, type]] = {}
    LISTS: ClassVar[frozenset[str]] = frozenset()
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    extra: dict = field(default_factory=dict)
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise FeatcacheError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        values = {}
        for key in cls.KEYS:
            if key not in data:
                continue
            value = data[key]
            if value is not None and key in cls.NESTED:
                value = cls.NESTED[key].from_json(value)
            elif value is not None and key in cls.LISTS:
                value = tuple(value)
            values[cls.ATTRS.get(key, key)] = value
        extra = {k: v for k, v in data.items() if k not in cls.KEYS}
        return cls(**values, extra=extra, order=tuple(data))

    def to_json(self) -> dict:
        known = {}
        for key in self.KEYS:
            value = getattr(self, self.ATTRS.get(key, key))
            if value is None and (key in self.OPTIONAL or (self.order and key not in self.order)):
                continue  # left out when new, or absent from the file read
            known[key] = _dump(value, key in self.LISTS)
        parts = {**known, **self.extra}
        first = [k for k in self.order if k in parts]
        return {**{k: parts[k] for k in first}, **{k: v for k, v in parts.items() if k not in first}}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _dump(value, as_list: bool = False):
    if isinstance(value, Record):
        return value.to_json()
    if as_list and isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, kw_only=True)
class CacheRef(Record):
    """The cache a run was trained on: its path and fingerprint (what ``featcache eval`` checks)."""

    KEYS = ("path", "fingerprint")

    path: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, kw_only=True)
class HeadSource(Record):
    """Where a head's class came from (:func:`featcache.heads.registry.head_source`): ``kind``
    builtin, file (``path``, ``cls``, ``sha256``, and the file's source ``text`` that eval falls
    back to once the file changed), module or entry_point (``module``, ``cls``, ``version``,
    ``entry_point``)."""

    KEYS = ("kind", "path", "module", "class", "sha256", "text", "version", "entry_point")
    ATTRS = {"class": "cls"}
    OPTIONAL = frozenset(KEYS)

    kind: str | None = None
    path: str | None = None
    module: str | None = None
    cls: str | None = None
    sha256: str | None = None
    text: str | None = None
    version: str | None = None
    entry_point: str | None = None

    BUILTIN: ClassVar[HeadSource]

    @property
    def builtin(self) -> bool:
        return self.kind == "builtin"

    @property
    def where(self) -> str:
        """The file or module the class came from ("" for a built-in head)."""
        return self.path or self.module or ""


HeadSource.BUILTIN = HeadSource(kind="builtin")


@dataclass(frozen=True, kw_only=True)
class ManifestRef(Record):
    """The labels and splits a run used (:meth:`featcache.data.annotations.Annotations.meta`):
    the manifest's path (None: the store's own) and sha256, videos per split, and how many of its
    ids were missing from the cache, cached but unlisted, or failed."""

    KEYS = ("path", "sha256", "videos", "missing", "unlisted", "failed")

    path: str | None = None
    sha256: str | None = None
    videos: dict | None = None
    missing: int | None = None
    unlisted: int | None = None
    failed: int | None = None


@dataclass(frozen=True, kw_only=True)
class Pretext(Record):
    """A pre-training's pretext task: its ``name`` (stored as ``task``, e.g. ``prp``) and its
    sampling parameters (``extra``: rates, frames, ...)."""

    KEYS = ("task",)
    ATTRS = {"task": "name"}

    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class ProbeChoice(Record):
    """A closed-form baseline (``featcache probe``): the method, the pooled feature and the
    hyper-parameter chosen on val (``extra``: ``knn/k`` and ``knn/T``, or ``logreg/C``)."""

    KEYS = ("method", "feature")

    method: str | None = None
    feature: str | None = None

    @property
    def choice(self) -> dict:
        return dict(self.extra)


@dataclass(frozen=True, kw_only=True)
class RunMeta(Record):
    """What ``config.yaml`` and every checkpoint of a run record (built once per run by
    :func:`run_meta`; the resolved training config stays the dict ``spec.config.to_dict`` wrote)."""

    KEYS = ("cache", "classes", "multi_label", "probe", "config", "head_source", "manifest", "streamed", "pretext")
    NESTED = {"cache": CacheRef, "head_source": HeadSource, "manifest": ManifestRef, "pretext": Pretext,
              "probe": ProbeChoice}
    LISTS = frozenset({"classes", "streamed"})
    OPTIONAL = frozenset({"probe", "head_source", "streamed", "pretext"})

    cache: CacheRef | None = None
    classes: tuple[str, ...] | None = None
    multi_label: bool | None = None
    probe: ProbeChoice | None = None
    config: dict | None = None
    head_source: HeadSource | None = None
    manifest: ManifestRef | None = None
    streamed: tuple[str, ...] | None = None
    pretext: Pretext | None = None

    @property
    def fingerprint(self) -> str | None:
        return self.cache.fingerprint if self.cache else None

    @property
    def manifest_sha256(self) -> str | None:
        return self.manifest.sha256 if self.manifest else None

    def source(self) -> HeadSource:
        """The head's provenance; a run recorded before provenance was kept had a built-in head."""
        return self.head_source or HeadSource.BUILTIN


def source_of(head: str) -> HeadSource:
    """Where the head ``head`` comes from (:func:`featcache.heads.registry.head_source`), parsed."""
    from featcache.heads.registry import head_source

    return HeadSource.from_json(head_source(head))


def run_meta(cache, classes, multi_label: bool, cfg=None, *, head: bool = True, **more) -> RunMeta:
    """The metadata of a new run on an annotated ``cache`` (``cache.path``, ``cache.fingerprint``,
    ``cache.annotations.meta()``): the one place a run's record is assembled (train, pretrain,
    probe). ``cfg`` is the :class:`~featcache.spec.config.TrainConfig`; ``head`` records its
    head's provenance; ``more`` sets ``probe``, ``streamed`` or ``pretext``."""
    from featcache.spec.config import to_dict

    return RunMeta(cache=CacheRef(path=cache.path, fingerprint=cache.fingerprint), classes=tuple(classes),
                   multi_label=bool(multi_label), config=to_dict(cfg),
                   head_source=source_of(cfg.head) if head else None,
                   manifest=ManifestRef.from_json(cache.annotations.meta()), **more)


# what last.pt adds to best.pt: the state a --resume continues from (the training loop's own)
RESUME_KEYS = ("optimizer", "scheduler", "best", "best_epoch", "stale", "rng", "cuda_rng", "active", "batches")
_HEAD_KEYS = ("head", "head_args", "state_dict", "epoch")


@dataclass(frozen=True)
class ResumeState:
    """What ``last.pt`` adds to ``best.pt`` (:data:`RESUME_KEYS`): the optimiser's and schedule's
    states, the selection so far (``best``, ``best_epoch``, ``stale``), the head's RNG streams,
    whether it still trains, and the batches source's state."""

    optimizer: dict
    scheduler: dict
    best: Any
    best_epoch: int
    stale: int
    rng: Any
    cuda_rng: Any = None
    active: bool = True
    batches: dict | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResumeState:
        lacking = [k for k in RESUME_KEYS[:6] if k not in data]
        if lacking:
            raise FeatcacheError(f"last.pt lacks {', '.join(lacking)}: not a checkpoint to resume from")
        return cls(**{k: data[k] for k in RESUME_KEYS if k in data})

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in RESUME_KEYS}


@dataclass(frozen=True)
class Checkpoint:
    """A head checkpoint: the head's name, constructor arguments, trainable weights and epoch,
    the run's :class:`RunMeta`, and in ``last.pt`` the loop's resume state (``resume``)."""

    head: str | None
    head_args: dict
    state_dict: dict
    epoch: int | None
    meta: RunMeta
    resume: dict | None = None
    order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checkpoint:
        if isinstance(data, cls):
            return data
        rest = {k: v for k, v in data.items() if k not in _HEAD_KEYS and k not in RESUME_KEYS}
        resume = {k: data[k] for k in RESUME_KEYS if k in data}
        return cls(data.get("head"), data.get("head_args") or {}, data.get("state_dict") or {}, data.get("epoch"),
                   RunMeta.from_json(rest), resume or None, tuple(data))

    def to_json(self) -> dict:
        head = {"head": self.head, "head_args": self.head_args, "state_dict": self.state_dict, "epoch": self.epoch}
        head = {k: v for k, v in head.items() if not self.order or k in self.order}
        parts = {**head, **self.meta.to_json(), **(self.resume or {})}
        first = [k for k in self.order if k in parts]
        return {**{k: parts[k] for k in first}, **{k: v for k, v in parts.items() if k not in first}}

    @property
    def resume_state(self) -> ResumeState | None:
        """``last.pt``'s resume state, parsed (None in ``best.pt``)."""
        return ResumeState.from_json(self.resume) if self.resume else None

    @property
    def is_pretraining(self) -> bool:
        return self.meta.pretext is not None


@dataclass(frozen=True, kw_only=True)
class Metrics(Record):
    """``metrics.json``: the selected epoch, the head's parameter count, and the scores
    (``scores``: ``val/top1``, ``test/mean_class_acc``, ``knn/k``, ...; the keys this type does not
    name)."""

    KEYS = ("best_epoch", "params")

    best_epoch: int | None = None
    params: int | None = None

    @property
    def scores(self) -> dict:
        return dict(self.extra)

    def get(self, name: str, default=None):
        """A score by name (``val/top1``), ``best_epoch`` or ``params``."""
        if name in self.KEYS:
            value = getattr(self, name)
            return default if value is None else value
        return self.extra.get(name, default)


@dataclass(frozen=True, kw_only=True)
class EpochRecord(Record):
    """One line of ``log.jsonl``: the epoch, its wall time (``seconds``), and its values
    (``values``: ``train/loss``, ``lr``, ``val/top1``, ...; the keys this type does not name)."""

    KEYS = ("epoch", "seconds")

    epoch: int | None = None
    seconds: float | None = None

    @property
    def values(self) -> dict:
        return dict(self.extra)

    def numbers(self) -> dict:
        """The values that are numbers (booleans left out): what a logger plots."""
        return {k: v for k, v in self.extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
