"""Clip policies of video encoders (``clips:N``, ``fps:F,windows:W/S``): the type a ``--frames``
string with a clip policy parses into, and the parsing. Pure (``re`` and dataclasses only): it
belongs with the frame policies' vocabulary (``Policy``, ``parse_policies``), which calls
:func:`parse_clip_parts` first; the index maths is in :mod:`featcache.video.clips`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CLIP_KINDS = ("clips", "windows")


@dataclass(frozen=True)
class ClipPolicy:
    """``clips:N`` (count = N) or ``windows:W/S@fps:F`` (count = W, stride = S, fps = F)."""

    kind: str
    count: int
    stride: int = 0
    fps: int = 0

    def __str__(self) -> str:
        if self.kind == "clips":
            return f"clips:{self.count}"
        return f"windows:{self.count}/{self.stride}@fps:{self.fps}"

    @property
    def fixed(self) -> bool:
        """True when every video yields the same number of clips (``clips:N``)."""
        return self.kind == "clips"

    def length(self, num_frames: int) -> int | None:
        """Clips this policy yields for a video (None for windows: it depends on the timestamps)."""
        return self.count if self.fixed else None


def is_clip_policy_text(part: str) -> bool:
    return part.split(":", 1)[0] in CLIP_KINDS


def parse_clip_parts(parts: list[str]) -> tuple[list[ClipPolicy], list[str]]:
    """The clip policies among ``--frames`` parts and the parts left (frame policies). An
    ``fps:F`` part next to a ``windows:W/S`` part is the windows' pool and is consumed; raises
    ValueError naming the bad part (not the option: the caller names it)."""
    clip_parts = [p for p in parts if is_clip_policy_text(p)]
    if not clip_parts:
        return [], parts
    rest = [p for p in parts if not is_clip_policy_text(p)]
    out = []
    for part in clip_parts:
        m = re.fullmatch(r"clips:(\d+)", part) or re.fullmatch(r"windows:(\d+)/(\d+)(?:@fps:(\d+))?", part)
        if not m:
            raise ValueError(f"unknown clip policy {part!r}; expected clips:N or windows:W/S "
                             "(with an fps:F pool, e.g. fps:4,windows:8/8)")
        values = [int(v) for v in m.groups() if v is not None]
        if min(values) < 1:
            raise ValueError(f"{part!r}: every number must be at least 1")
        if part.startswith("clips"):
            out.append(ClipPolicy("clips", values[0]))
            continue
        fps = values[2] if len(values) == 3 else None
        if fps is None:
            pools = [p for p in rest if re.fullmatch(r"fps:\d+", p)]
            if len(pools) != 1:
                raise ValueError(f"{part!r} needs one fps:F pool to cut its windows from, "
                                 "e.g. --frames fps:4,windows:8/8")
            rest.remove(pools[0])
            fps = int(pools[0].split(":")[1])
            if fps < 1:
                raise ValueError(f"{pools[0]!r}: F must be at least 1")
        out.append(ClipPolicy("windows", values[0], values[1], fps))
    if len(out) > 1 or rest:
        raise ValueError(f"a video encoder caches one clip policy (clips:N, or fps:F,windows:W/S), "
                         f"got {','.join(parts)}")
    return out, rest
