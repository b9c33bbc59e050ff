"""A video's frame pts, stored compactly and exactly (a record's ``source.clock.pts``).

Every decoded frame's pts (stream time-base units, display order) is what SlowFast's decoders
seek by (featcache.train.clips). Stored as, the first that fits:

- runs ``[first, step, count]`` of equal integer steps (at most MAX_RUNS): a constant-rate MP4 or
  AVI is one run;
- one rational run ``[first, num, den, count]``: ``pts_i = first + round(i num / den)``, halves up,
  as a muxer rescales a constant rate into a coarser time base (29.97 fps in Matroska's 1 ms:
  steps of 33 and 34);
- ``"z:" + base64(zlib(steps))``: the first pts and every step as little-endian int64, for any other
  (variable-rate) video.

Pure: standard library only.
"""
from __future__ import annotations

import base64
import struct
import zlib
from fractions import Fraction

MAX_RUNS = 16


def _runs(pts: list[int]) -> list[list[int]] | None:
    runs, i = [], 0
    while i < len(pts):
        step = pts[i + 1] - pts[i] if i + 1 < len(pts) else 0
        j = i + 1
        while j < len(pts) and pts[j] - pts[j - 1] == step:
            j += 1
        runs.append([pts[i], step, j - i])
        if len(runs) > MAX_RUNS:
            return None
        i = j
    return runs


def rational_run(first: int, step: Fraction, count: int) -> list[int]:
    """``first + round(i * step)`` for ``i < count``, halves up (a muxer's av_rescale_q of a constant rate)."""
    return [first + (2 * i * step.numerator + step.denominator) // (2 * step.denominator) for i in range(count)]


def encode_pts(pts: list[int], step: Fraction | None = None) -> list | str | None:
    """The stored form of ``pts`` (None when a frame has no pts). ``step`` (time-base units per
    frame at the stream's rate) is the rational run tried before the compressed steps."""
    if not pts or any(p is None for p in pts):
        return None
    pts = [int(p) for p in pts]
    runs = _runs(pts)
    if runs is not None:
        return runs
    if step and rational_run(pts[0], step, len(pts)) == pts:
        return [pts[0], step.numerator, step.denominator, len(pts)]
    steps = [pts[0]] + [b - a for a, b in zip(pts, pts[1:])]
    return "z:" + base64.b64encode(zlib.compress(struct.pack(f"<{len(steps)}q", *steps), 9)).decode()


def decode_pts(stored) -> list[int] | None:
    """:func:`encode_pts` undone: every frame's pts."""
    if stored is None:
        return None
    if isinstance(stored, str):
        raw = zlib.decompress(base64.b64decode(stored[2:]))
        steps = struct.unpack(f"<{len(raw) // 8}q", raw)
        out, at = [], 0
        for s in steps:
            at += s
            out.append(at)
        return out
    if stored and len(stored) == 4 and not isinstance(stored[0], (list, tuple)):
        first, num, den, count = stored
        return rational_run(first, Fraction(num, den), count)
    return [first + step * i for first, step, count in stored for i in range(count)]
