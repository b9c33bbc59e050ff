"""The frame-policy type: ``FramePolicy``, the base of one class per kind (``uniform:N``,
``keyframes:K``, ``stride:S``, ``fps:F``, ``clips:N``, ``windows:W/S@fps:F``), each registered by
the prefix of its string form as heads are by name; and the parsing of a ``--frames`` string
through that registry.

A kind's class says what the rest of featcache needs to know about it, so that nothing outside
the policy modules asks which kind a policy is:

- ``unit``: ``"frame"`` (its picks are frames of an image model) or ``"clip"`` (clips of a video
  encoder; one cached row per clip);
- ``needs_scores``: its selection ranks frames by their LUV change scores (key frames): the
  decoder scores every frame and the store keeps the scores;
- ``fixed_length``: how many frames (clips) every video gets, or None for a pool whose length
  follows the video (``stride``, ``fps``, ``windows``);
- ``served_from``: how a view with this policy is read from a cache that does not hold it as
  such: ``"frames"`` (selected from the video's cached frames), ``"clips"`` (evenly over the
  video's cached clips) or ``"itself"`` (only a cache that holds this very policy).

The built-in kinds are in :mod:`featcache.spec.policy` (frames) and
:mod:`featcache.spec.clip_policy` (clips); their selection (policy, frame count, scores,
timestamps -> source indices) is registered by class in :mod:`featcache.video.select`, which the
pure vocabulary here may not import. Pure: ``re`` and dataclasses only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

_REGISTRY: dict[str, type[FramePolicy]] = {}


@dataclass(frozen=True)
class FramePolicy:
    """One frame-selection policy. A subclass is a dataclass whose fields are the numbers of its
    string form; one with a single integer field gets ``prefix:N`` parsing and formatting from here."""

    prefix: ClassVar[str] = ""  # the string form's ``prefix:`` (the registry key)
    form: ClassVar[str] = ""  # the syntax, as error messages name it: ``uniform:N``
    unit: ClassVar[str] = "frame"  # "frame" or "clip"
    needs_scores: ClassVar[bool] = False
    served_from: ClassVar[str] = "frames"  # "frames", "clips" or "itself" (module docstring)

    @property
    def kind(self) -> str:
        """The kind's name (its prefix), for messages; dispatch on the class's capabilities instead."""
        return self.prefix

    def __str__(self) -> str:
        (field,) = fields(self)
        return f"{self.prefix}:{getattr(self, field.name)}"

    @classmethod
    def parse(cls, part: str, rest: list[str]) -> FramePolicy | None:
        """The policy ``part`` writes, or None when it is not this kind's syntax; ValueError for a
        number out of range. ``rest``: the other parts of the ``--frames`` string that are not
        clip policies; a kind that consumes one of them (``windows:W/S`` its ``fps:F`` pool)
        removes it."""
        m = re.fullmatch(rf"{re.escape(cls.prefix)}:(\d+)", part)
        if not m:
            return None
        count = int(m.group(1))
        if count < 1:
            raise ValueError(f"{part!r} asks for {count} frames; N must be at least 1")
        return cls(count)

    @property
    def fixed_length(self) -> int | None:
        """Frames (clips) every video gets, or None when the count follows the video."""
        return None

    @property
    def fixed(self) -> bool:
        """True when every video yields the same number of frames (a policy a head trains on
        directly; the others are pools, served through windows or pre-training)."""
        return self.fixed_length is not None

    def length(self, num_frames: int) -> int | None:
        """How many frames (clips) this policy picks from a video of ``num_frames`` frames (None
        when that depends on the timestamps)."""
        return self.fixed_length

    @property
    def scored_frames(self) -> int:
        """How many of a video's best-scoring frames the selection may take: the streaming decoder
        keeps that many while it scores (0 for a policy that takes no scores)."""
        return (self.fixed_length or 0) if self.needs_scores else 0

    def multiview_pool(self, views: int) -> FramePolicy | None:
        """The policy whose every ``views``-th frame from the v-th is the v-th of ``views``
        temporal test views of this one (multi-view testing), or None when it has none."""
        return None

    def clip_shape(self, frames: int | None, rate: float | None) -> tuple[int | None, float | None]:
        """Clip policies: the length and rate (frames per second) of its clips, given the model's
        own (a policy that cuts its own windows overrides them)."""
        return frames, rate

    def clock(self, source_fps: float) -> tuple[float, int, int] | None:
        """``(rate R, stride S, frames per pick)`` when the picks are evenly spaced in time, pick
        i at ``i * S / R`` seconds (what temporal-localisation loaders assume), else None (the
        spacing follows the video's length)."""
        return None


def register_policy(cls: type[FramePolicy]) -> type[FramePolicy]:
    """Class decorator: make ``cls`` the kind its ``prefix`` names in ``--frames`` strings."""
    if not re.fullmatch(r"[a-z]+", cls.prefix or ""):
        raise ValueError(f"frame policy {cls.__name__}: prefix must be lowercase letters, got {cls.prefix!r}")
    if cls.unit not in ("frame", "clip") or cls.served_from not in ("frames", "clips", "itself"):
        raise ValueError(f"frame policy {cls.__name__}: unit {cls.unit!r} / served_from {cls.served_from!r} unknown")
    held = _REGISTRY.get(cls.prefix)
    if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"frame policy prefix {cls.prefix!r} is taken by {held.__module__}.{held.__qualname__}")
    _REGISTRY[cls.prefix] = cls
    return cls


def policy_classes(unit: str | None = None) -> list[type[FramePolicy]]:
    """The registered kinds (of one ``unit``), in registration order."""
    return [c for c in _REGISTRY.values() if unit is None or c.unit == unit]


def _class_of(part: str) -> type[FramePolicy] | None:
    return _REGISTRY.get(part.split(":", 1)[0])


def _forms(unit: str) -> str:
    forms = [c.form or f"{c.prefix}:N" for c in policy_classes(unit)]
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def parse_registered(text: str) -> tuple[FramePolicy, ...]:
    """Parse ``"uniform:16,keyframes:8"`` with the registered kinds; raise ValueError naming the
    bad part (the caller names its option). A clip policy (a video encoder's) stands alone."""
    parts = [p.strip() for p in text.split(",")]
    clip_parts = [p for p in parts if getattr(_class_of(p), "unit", "") == "clip"]
    if clip_parts:
        return _parse_clips(parts, clip_parts)
    policies = []
    for part in parts:
        cls = _class_of(part)
        policy = cls.parse(part, []) if cls else None
        if policy is None:
            raise ValueError(f"unknown policy {part!r}; expected {_forms('frame')}")
        if policy in policies:
            raise ValueError(f"policy {part!r} given twice")
        policies.append(policy)
    return tuple(policies)


def _parse_clips(parts: list[str], clip_parts: list[str]) -> tuple[FramePolicy, ...]:
    rest = [p for p in parts if p not in clip_parts]
    out = []
    for part in clip_parts:
        policy = _class_of(part).parse(part, rest)
        if policy is None:
            raise ValueError(f"unknown clip policy {part!r}; expected {_forms('clip')}")
        out.append(policy)
    if len(out) > 1 or rest:
        raise ValueError(f"a video encoder caches one clip policy (clips:N, or fps:F,windows:W/S), "
                         f"got {','.join(parts)}")
    return tuple(out)


# ---------------------------------------------------------------------- over a set of policies
def scores_needed(policies) -> bool:
    """True when any of ``policies`` ranks frames by their LUV scores (the store keeps them)."""
    return any(p.needs_scores for p in policies)


def short_below(policies) -> int:
    """A video with fewer frames than this is short (its frames repeat): the most frames a
    fixed-length policy takes, 1 when none does (dense pools are never short)."""
    return max([p.fixed_length for p in policies if p.fixed] or [1])
