"""Frame policies: the one type (``Policy``) a ``--frames`` string is parsed into, once, and that
travels from the CLI to the store, the views and the estimate. Pure (no numpy): the selection
maths lives in :mod:`featcache.video.select`, whose docstring states each policy's convention.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from featcache.spec.clip_policy import parse_clip_parts

POLICY_KINDS = ("uniform", "keyframes", "stride", "fps")


@dataclass(frozen=True)
class Policy:
    """One frame-selection policy such as ``uniform:16``."""

    kind: str
    count: int  # frames for uniform/keyframes; the step S for stride; frames per second for fps

    def __str__(self) -> str:
        return f"{self.kind}:{self.count}"

    @property
    def fixed(self) -> bool:
        """True when every video yields the same number of frames (not a stride pool)."""
        return self.kind not in ("stride", "fps")

    def length(self, num_frames: int) -> int | None:
        """How many frames this policy picks from a video of ``num_frames`` frames (None for
        fps:F, which depends on the timestamps)."""
        if self.kind == "fps":
            return None
        return self.count if self.fixed else -(-num_frames // self.count)


def parse_policies(text: str) -> tuple:
    """Parse ``"uniform:16,keyframes:8"``; raise ValueError naming the bad part (the caller names its
    option). Clip policies of video encoders (``clips:N``, ``fps:F,windows:W/S``) parse to
    ClipPolicy (:mod:`featcache.spec.clip_policy`)."""
    clip_policies, parts = parse_clip_parts([p.strip() for p in text.split(",")])
    if clip_policies:
        return tuple(clip_policies)
    policies = []
    for part in parts:
        m = re.fullmatch(r"([a-z]+):(\d+)", part)
        if not m or m.group(1) not in POLICY_KINDS:
            raise ValueError(f"unknown policy {part!r}; expected uniform:N, keyframes:N, stride:S or fps:F")
        count = int(m.group(2))
        if count < 1:
            raise ValueError(f"{part!r} asks for {count} frames; N must be at least 1")
        policy = Policy(m.group(1), count)
        if policy in policies:
            raise ValueError(f"policy {part!r} given twice")
        policies.append(policy)
    return tuple(policies)
