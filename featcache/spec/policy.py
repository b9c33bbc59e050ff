"""Frame policies: the built-in kinds an image model's ``--frames`` string is parsed into, once,
and that travel from the CLI to the store, the views and the estimate: ``uniform:N``,
``keyframes:K``, ``stride:S``, ``fps:F`` (here) and a video encoder's ``clips:N`` and
``windows:W/S@fps:F`` (:mod:`featcache.spec.clip_policy`), all ``FramePolicy`` subclasses
registered by prefix (:mod:`featcache.spec.frame_policy`). Each class carries its capabilities;
its selection maths is registered by class in :mod:`featcache.video.select`, whose docstring
states each policy's convention. Pure (no numpy).

Adding a kind: one class here (or in your own module) with ``@register_policy``, its selection
with ``@register_selection`` in ``video/select.py``, and tests (CONTRIBUTING.md, "Recipe: a frame
policy").
"""
from __future__ import annotations

from dataclasses import dataclass

from featcache.spec.clip_policy import ClipsPolicy, WindowsPolicy  # noqa: F401  (registers them; re-exported)
from featcache.spec.frame_policy import (  # noqa: F401  (the policy vocabulary, re-exported)
    FramePolicy,
    parse_registered,
    policy_classes,
    register_policy,
    scores_needed,
    short_below,
)


@register_policy
@dataclass(frozen=True)
class UniformPolicy(FramePolicy):
    """``uniform:N``: the centres of N equal segments of the video."""

    prefix = "uniform"
    form = "uniform:N"
    frames: int

    @property
    def fixed_length(self) -> int:
        return self.frames

    def multiview_pool(self, views: int) -> FramePolicy:
        return UniformPolicy(self.frames * views)  # V interleaved uniform:N views of uniform:N*V


@register_policy
@dataclass(frozen=True)
class KeyFramePolicy(FramePolicy):
    """``keyframes:K``: the K frames that change most (LUV scores)."""

    prefix = "keyframes"
    form = "keyframes:N"
    needs_scores = True
    frames: int

    @property
    def fixed_length(self) -> int:
        return self.frames


@register_policy
@dataclass(frozen=True)
class StridePolicy(FramePolicy):
    """``stride:S``: every S-th frame (a dense pool: its length follows the video)."""

    prefix = "stride"
    form = "stride:S"
    served_from = "itself"
    step: int

    def length(self, num_frames: int) -> int:
        return -(-num_frames // self.step)

    def clock(self, source_fps: float) -> tuple[float, int, int]:
        return float(source_fps), self.step, 1  # frames 0, S, 2S, ... of the source's rate


@register_policy
@dataclass(frozen=True)
class FpsPolicy(FramePolicy):
    """``fps:F``: the frames nearest to 0, 1/F, 2/F, ... seconds (a pool at a fixed rate of time)."""

    prefix = "fps"
    form = "fps:F"
    served_from = "itself"
    rate: int

    def clock(self, source_fps: float) -> tuple[float, int, int]:
        return float(self.rate), 1, 1  # the frame nearest to i / F seconds


# the view a cache serves when none is given: its first cached policy of this class, else this one
DEFAULT_VIEWS = {"frame": UniformPolicy(8), "clip": ClipsPolicy(8)}


def parse_policies(text: str) -> tuple[FramePolicy, ...]:
    """Parse ``"uniform:16,keyframes:8"``; raise ValueError naming the bad part (the caller names its
    option). A clip policy of a video encoder (``clips:N``, ``fps:F,windows:W/S``) stands alone."""
    return parse_registered(text)


def parse_policy(text: str) -> FramePolicy:
    """Exactly one frame policy (``uniform:8``, ``keyframes:4``); ValueError otherwise."""
    policies = parse_policies(text)
    if len(policies) != 1:
        raise ValueError(f"expected one frame policy such as uniform:8, got {text!r}")
    return policies[0]


def default_view(cached: list[str], unit: str = "frame") -> str:
    """The view a cache holding the policies ``cached`` (strings) of ``unit`` serves as it is:
    its first cached ``uniform:N`` (``clips:N`` for a video encoder's cache), else ``uniform:8``
    (``clips:8``) served from its pool."""
    fallback = DEFAULT_VIEWS[unit]
    return next((p for p in cached if type(parse_policy(p)) is type(fallback)), str(fallback))


def Policy(kind: str, *numbers: int) -> FramePolicy:
    """The policy of ``kind`` with these numbers, e.g. ``Policy("uniform", 8)`` = ``UniformPolicy(8)``
    (``uniform:8``): the constructor ``Policy`` was before each kind had its class."""
    for cls in policy_classes():
        if cls.prefix == kind:
            return cls(*numbers)
    raise ValueError(f"unknown policy kind {kind!r}")
