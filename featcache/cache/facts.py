"""The store's stored facts as frozen types, parsed once: :class:`StoreAttrs` (the root group's
attributes: provenance, shapes, policies) and :class:`VideoRecord` (one video's record, a JSON
line of a segment's index or a schema-1 video group's attributes).

As zarr-python does with its own metadata (``src/zarr/core/metadata/v3.py``:
``ArrayV3Metadata.from_dict`` / ``to_dict``, frozen dataclasses parsed once from the JSON
document), each type has ``from_json(dict)`` and ``to_json() -> dict``. Unlike zarr's, these
keep what they do not know: keys of newer (or older) writers go to ``unknown`` and come back
from ``to_json`` in their place, so ``X.from_json(d).to_json() == d``, key order included, for
every store featcache wrote (tests/cache/test_facts.py checks the round-2 fixtures and fresh
stores). Values are frozen on the way in (lists -> tuples, objects -> read-only mappings) and
thawed on the way out.

Only ``featcache/cache/`` reads the JSON: everything above it takes these types (the spec layer
takes the plain values of :meth:`StoreAttrs.shape`, a ``featcache.spec.view.CacheShape``).

Pure: standard library, the store's pure naming module and the spec's CacheShape (no numpy,
zarr or torch).

Long module: one short declaration per stored section (root attributes and video records), all
parsed by the one ``from_json``/``to_json`` pair above them; split when a third document joins.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from featcache.cache import schema
from featcache.spec.pts import decode_pts
from featcache.spec.view import CacheShape

_EMPTY: Mapping = MappingProxyType({})
_SCALARS = (str, int, float, type(None))  # bool is an int


def freeze(value: Any) -> Any:
    """A JSON value made immutable: lists -> tuples, objects -> read-only mappings."""
    if isinstance(value, Facts):
        return value
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):  # frame indices, timestamps: scalars, copied as they are
        return tuple(v if isinstance(v, _SCALARS) else freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """:func:`freeze` undone: the plain JSON value (dicts and lists, key order kept)."""
    if isinstance(value, Facts):
        return value.to_json()
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, _SCALARS) else thaw(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Facts:
    """A JSON object as a frozen dataclass. Subclasses declare the keys they know as fields
    (default None: absent); ``_sections`` names the fields that are themselves Facts."""

    _sections: ClassVar[dict[str, type[Facts]]] = {}
    _required: ClassVar[tuple[str, ...]] = ()  # keys a valid document holds (``missing``)
    unknown: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False)  # keys no field knows, in their place
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the keys read, in order

    def __post_init__(self):
        for name in self.known():
            value = getattr(self, name)
            section = self._sections.get(name)
            if section is not None and isinstance(value, Mapping) and not isinstance(value, Facts):
                object.__setattr__(self, name, section.from_json(value))
            else:
                object.__setattr__(self, name, freeze(value))
        object.__setattr__(self, "unknown", freeze(self.unknown))

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """The JSON keys this type has fields for."""
        return tuple(_defaults(cls))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]):
        """Parse a JSON object; keys without a field go to ``unknown``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        # what __init__ + __post_init__ would store, written straight into the instance (every
        # record of a store is parsed: the dataclass machinery would cost twice the parse)
        obj = object.__new__(cls)
        fields, unknown = dict(_defaults(cls)), {}
        for k, v in data.items():
            if k not in fields:
                unknown[k] = freeze(v)
            elif k in cls._sections and isinstance(v, Mapping):
                fields[k] = cls._sections[k].from_json(v)
            else:
                fields[k] = freeze(v)
        obj.__dict__.update(fields, unknown=MappingProxyType(unknown), key_order=tuple(data))
        return obj

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the keys read, in their order, then fields set since (for a type built
        in code: every field, declared order), then unknown keys."""
        known = _defaults(type(self))  # field -> default
        order = list(self.key_order)
        order += [n for n, default in known.items()
                  if n not in order and (not self.key_order or getattr(self, n) != default)]
        order += [k for k in self.unknown if k not in order]
        return {k: thaw(getattr(self, k)) if k in known else thaw(self.unknown[k])
                for k in order if k in known or k in self.unknown}

    def __reduce__(self):  # read-only mappings do not pickle: a copy travels as its JSON
        return type(self).from_json, (self.to_json(),)

    def missing(self) -> list[str]:
        """The required keys (``_required``) the document read lacks."""
        present = set(self.key_order) or {k for k in self.known() if getattr(self, k) is not None}
        return [k for k in self._required if k not in present and k not in self.unknown]


@functools.cache
def _defaults(cls: type[Facts]) -> dict[str, Any]:
    """JSON key -> default of each field of a Facts type (its known keys, declared order)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in ("unknown", "key_order")}


# ---------------------------------------------------------------------------------------- root
@dataclass(frozen=True, kw_only=True)
class WeightsFacts(Facts):
    """Where the model's weights came from (``model.weights``)."""

    source: str | None = None  # file, hub or random
    path: str | None = None  # source file: the weights file
    sha256: str | None = None  # source file: its hash (a frozen tail refuses another file)
    hf_hub_id: str | None = None
    url: str | None = None
    enum: str | None = None  # torchvision weights enum (video encoders)
    seed: int | None = None  # source random


@dataclass(frozen=True, kw_only=True)
class ModelFacts(Facts):
    _sections: ClassVar = {"weights": WeightsFacts}
    name: str | None = None  # timm name (or tv:NAME, hf:ID)
    args: Mapping | None = None  # create_model kwargs
    weights: WeightsFacts | None = None
    num_params: int | None = None
    kind: str | None = None  # vit, video encoder, ...


@dataclass(frozen=True, kw_only=True)
class PreprocessFacts(Facts):
    input_size: tuple[int, int, int] | None = None  # (C, H, W)
    resize_short_side: int | None = None
    crop: str | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resizer: str | None = None  # "pil": extract --resize pil (PIL's resize of source-size frames); None: swscale
    # video encoders (featcache/extract/video_encoders.py)
    clip_len: int | None = None
    frame_rate: float | None = None
    resize: str | None = None
    resize_size: Any = None
    crop_size: tuple[int, int] | None = None
    preset: str | None = None


@dataclass(frozen=True, kw_only=True)
class TokenFacts(Facts):
    num_prefix_tokens: int | None = None
    grid: tuple[int, int] | None = None  # patch grid (H', W') as stored
    num_tokens: int | None = None
    dim: int | None = None
    final_norm: bool | None = None
    unit: str | None = None  # "clip": one row per clip of a video encoder; absent: one per frame
    pool: str | None = None  # patches pooled from the model's grid
    model_grid: tuple[int, int] | None = None
    clip_grid: tuple[int, int, int] | None = None  # (T', H', W') of a clip's tokens


@dataclass(frozen=True, kw_only=True)
class ComputeFacts(Facts):
    precision: str | None = None
    device_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class FrameFacts(Facts):
    policies: tuple[str, ...] = ()  # the cached frame policies (the pool is their union); grows, never shrinks
    added: Mapping | None = None  # policy -> when it was added (incremental pools)
    luv_size: tuple[int, int] | None = None
    luv_score: str | None = None
    short_videos: str | None = None
    clip_policy: str | None = None  # a video encoder's clip policy
    clip: Mapping | None = None  # its clip spec


@dataclass(frozen=True, kw_only=True)
class StorageFacts(Facts):
    dtype: str | None = None  # float16, float32 or int8
    tokens_dims: tuple[str, ...] | None = None
    token_order: str | None = None
    table_arrays: tuple[str, ...] | None = None  # the start/count/crc columns of the index table (index.table_of)


@dataclass(frozen=True, kw_only=True)
class CutFacts(Facts):
    """``extract --cut-block J``: the residual stream entering block ``block`` of ``depth``."""

    block: int | None = None
    depth: int | None = None


@dataclass(frozen=True, kw_only=True)
class CropFacts(Facts):
    """``extract --crops 3``: side crops stored beside the centre one."""

    count: int | None = None
    positions: tuple[str, ...] | None = None
    offsets: str | None = None
    stored: str | None = None


@dataclass(frozen=True, kw_only=True)
class ViewsFacts(Facts):
    """``extract --train-views K``: K augmented views of every cached frame (``cache.views.views_attrs``)."""

    count: int | None = None
    recipe: str | None = None
    seed: int | None = None
    source: str | None = None
    frame: str | None = None
    stored: str | None = None


@dataclass(frozen=True, kw_only=True)
class ManifestFacts(Facts):
    path: str | None = None  # the manifest the store was extracted from


@dataclass(frozen=True, kw_only=True)
class StoreAttrs(Facts):
    """The root group's attributes: how the store was made and what its rows mean."""

    _sections: ClassVar = {"model": ModelFacts, "preprocess": PreprocessFacts, "tokens": TokenFacts,
                           "compute": ComputeFacts, "frames": FrameFacts, "storage": StorageFacts, "cut": CutFacts,
                           "crops": CropFacts, "manifest": ManifestFacts, "views": ViewsFacts}
    _required: ClassVar = schema.ROOT_KEYS
    featcache_version: str | None = None
    model: ModelFacts | None = None
    preprocess: PreprocessFacts | None = None
    layers: tuple[int, ...] = ()  # the cached blocks
    layers_requested: tuple[int, ...] | None = None
    tokens: TokenFacts | None = None
    compute: ComputeFacts | None = None
    cut: CutFacts | None = None
    frames: FrameFacts | None = None
    manifest: ManifestFacts | None = None
    storage: StorageFacts | None = None
    crops: CropFacts | None = None
    views: ViewsFacts | None = None
    fingerprint: str | None = None
    schema_version: int | None = None  # 1: loose, 2: packed
    created_at: str | None = None
    layout: str | None = None
    store_id: str | None = None

    @property
    def policies(self) -> tuple[str, ...]:
        """The cached frame policies."""
        return self.frames.policies if self.frames else ()

    @property
    def clip_rows(self) -> bool:
        """True when rows are clips of a video encoder, not frames."""
        return bool(self.tokens and self.tokens.unit == "clip")

    @property
    def dtype(self) -> str | None:
        """How tokens are stored: float16, float32 or int8."""
        return self.storage.dtype if self.storage else None

    @property
    def manifest_path(self) -> str | None:
        return self.manifest.path if self.manifest else None

    @functools.cached_property
    def shape(self) -> CacheShape:
        """What a ``View`` is checked and laid out against (plain values: the spec layer does not
        know this JSON)."""
        t = self.tokens or TokenFacts()
        return CacheShape(policies=self.policies, layers=self.layers, grid=tuple(t.grid or (0, 0)),
                          num_prefix_tokens=t.num_prefix_tokens or 0, dim=t.dim or 0, clip_rows=self.clip_rows,
                          crops=bool(self.crops), cut=bool(self.cut))



# ---------------------------------------------------------------------------------------- videos
@dataclass(frozen=True, kw_only=True)
class StreamClock(Facts):
    """The decoded stream's clock (a source's ``clock``, featcache.video.decode.stream_clock): what
    SlowFast's decoding backends seek by. Rates and the time base as ``"num/den"``; ``pts``: every
    decoded frame's, display order, as featcache.spec.pts stores them (None: not recorded)."""

    time_base: str | None = None
    duration: int | None = None  # the stream header's, in time-base units
    frames: int | None = None  # the stream header's frame count (0: absent)
    average_rate: str | None = None
    guessed_rate: str | None = None  # av_guess_frame_rate: torchvision's video_reader fps
    pts: tuple | str | None = None

    def frame_pts(self) -> list[int] | None:
        """Every decoded frame's pts."""
        return decode_pts(self.pts)


@dataclass(frozen=True, kw_only=True)
class SourceFacts(Facts):
    """What decoding found (a record's ``source``)."""

    _sections: ClassVar = {"clock": StreamClock}

    num_frames: int | None = None  # frames decoded
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    decoder: str | None = None
    decoder_note: str | None = None
    expected_frames: int | None = None
    truncated: bool | None = None
    clock: StreamClock | None = None


@dataclass(frozen=True, kw_only=True)
class VideoRecord(Facts):
    """One video's record: the manifest's row, what decoding found, the cached frames and their
    positions per policy, and whether it was extracted."""

    _sections: ClassVar = {"source": SourceFacts}
    _required: ClassVar = schema.VIDEO_KEYS
    video_id: str | None = None
    path: str | None = None
    split: str | None = None
    labels: tuple[str, ...] = ()
    extra: Mapping | None = None  # the manifest's other columns
    source: SourceFacts | None = None
    frame_indices: tuple[int, ...] = ()  # source frame of each cached row (the pool)
    timestamps: tuple[float, ...] = ()
    policies: Mapping | None = None  # policy -> positions in the pool
    clips: tuple | None = None  # a video encoder's clips (frame indices per clip)
    num_cached_frames: int | None = None
    short: bool | None = None
    status: str | None = None  # done or failed
    has_luv_scores: bool | None = None
    reason: str | None = None  # why a failed video failed

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def displayed_size(self) -> tuple[int | None, int | None]:
        """The video's size as displayed (the display matrix applied): what frames are resized from."""
        src = self.source
        if src is None:
            return None, None
        return src.unknown.get("display_width", src.width), src.unknown.get("display_height", src.height)

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def key(self) -> str:
        """The store's key of the video (``schema.video_key``)."""
        return schema.video_key(self.video_id or "")

    @property
    def num_frames(self) -> int | None:
        """Frames decoded from the source video."""
        return self.source.num_frames if self.source else None

    @property
    def decoder(self) -> str | None:
        return self.source.decoder if self.source else None


def store_attrs(value: Mapping | StoreAttrs) -> StoreAttrs:
    """``value`` as StoreAttrs: itself, ``Cache.attrs``'s parsed facts, or a root-attributes dict parsed."""
    if isinstance(value, StoreAttrs):
        return value
    return value.facts if isinstance(value, AttrsDict) else StoreAttrs.from_json(value)


class AttrsDict(dict):
    """``Cache.attrs``: the root attributes as the plain dict on disk, kept for readers not yet
    converted to :class:`StoreAttrs`. It is parsed once (``facts``) and answers the attributes
    of ``featcache.spec.view.CacheShape`` from it, so ``view.check(cache.attrs)`` reads no JSON
    key outside the cache layer. Not to be changed in place (a new dict is assigned instead)."""

    def __reduce__(self):  # a copy (DataLoader workers) parses its facts again, once
        return AttrsDict, (dict(self),)

    @property
    def facts(self) -> StoreAttrs:
        facts = self.__dict__.get("_facts")
        if facts is None:
            facts = self._facts = StoreAttrs.from_json(self)
        return facts

    def __getattr__(self, name: str):
        if name in CacheShape.__dataclass_fields__:
            return getattr(self.facts.shape, name)
        raise AttributeError(name)
