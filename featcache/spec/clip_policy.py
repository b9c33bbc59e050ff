"""Clip policies of video encoders (``clips:N``, ``fps:F,windows:W/S``): the ``FramePolicy`` kinds
a ``--frames`` string with a clip policy parses into (:mod:`featcache.spec.frame_policy`). Pure
(``re`` and dataclasses only); their selection (the index maths) is in :mod:`featcache.video.clips`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from featcache.spec.frame_policy import FramePolicy, register_policy


@register_policy
@dataclass(frozen=True)
class ClipsPolicy(FramePolicy):
    """``clips:N``: N evenly spaced clips of the model's own length and rate."""

    prefix = "clips"
    form = "clips:N"
    unit = "clip"
    served_from = "clips"
    clips: int

    @classmethod
    def parse(cls, part: str, rest: list[str]) -> FramePolicy | None:
        m = re.fullmatch(r"clips:(\d+)", part)
        if not m:
            return None
        if int(m.group(1)) < 1:
            raise ValueError(f"{part!r}: every number must be at least 1")
        return cls(int(m.group(1)))

    @property
    def fixed_length(self) -> int:
        return self.clips


@register_policy
@dataclass(frozen=True)
class WindowsPolicy(FramePolicy):
    """``windows:W/S@fps:F``: windows of W consecutive frames of an ``fps:F`` pool, every S pool
    frames (written ``fps:F,windows:W/S`` on the command line)."""

    prefix = "windows"
    form = "windows:W/S (with an fps:F pool, e.g. fps:4,windows:8/8)"
    unit = "clip"
    served_from = "itself"
    width: int
    stride: int
    fps: int

    def __str__(self) -> str:
        return f"windows:{self.width}/{self.stride}@fps:{self.fps}"

    @classmethod
    def parse(cls, part: str, rest: list[str]) -> FramePolicy | None:
        """``windows:W/S@fps:F``, or ``windows:W/S`` taking the one ``fps:F`` part of ``rest``."""
        m = re.fullmatch(r"windows:(\d+)/(\d+)(?:@fps:(\d+))?", part)
        if not m:
            return None
        values = [int(v) for v in m.groups() if v is not None]
        if min(values) < 1:
            raise ValueError(f"{part!r}: every number must be at least 1")
        if len(values) == 3:
            return cls(*values)
        pools = [p for p in rest if re.fullmatch(r"fps:\d+", p)]
        if len(pools) != 1:
            raise ValueError(f"{part!r} needs one fps:F pool to cut its windows from, "
                             "e.g. --frames fps:4,windows:8/8")
        rest.remove(pools[0])
        fps = int(pools[0].split(":")[1])
        if fps < 1:
            raise ValueError(f"{pools[0]!r}: F must be at least 1")
        return cls(values[0], values[1], fps)

    def clip_shape(self, frames: int | None, rate: float | None) -> tuple[int, float]:
        return self.width, self.fps  # its own windows of the fps:F pool

    def clock(self, source_fps: float) -> tuple[float, int, int]:
        return float(self.fps), self.stride, self.width  # window i starts at pool frame i * S
