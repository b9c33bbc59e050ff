"""Frame selection: pure functions from frame counts / pixels to frame indices.

Conventions (documented in docs/decoding.md, relied on by the tests):
- ``uniform:N`` takes the centre of each of N equal segments, ``floor((i + 0.5) * n / N)``.
  A video with fewer than N frames repeats frames (the TSN test-time convention), so every
  policy always yields exactly N positions.
- ``keyframes:K`` scores frame i by the mean absolute difference between its CIE-LUV image and
  frame i-1's; frame 0 has no predecessor and scores 0. The K highest scores win, ties going to
  the earlier frame. Frames that score 0 (nothing changed) are never ranked: when fewer than K
  frames changed at all (static footage), the remaining picks are spread uniformly over the
  frames not yet chosen. A video with fewer than K frames falls back to ``uniform:K``.
  The result is returned in temporal order.
- ``fps:F`` takes the frame nearest to each of the times ``0, 1/F, 2/F, ...`` up to the last
  frame's timestamp: a pool at a fixed rate of video time (Charades' sliding windows count
  their length and stride in frames of such a pool).
- ``stride:S`` takes every S-th frame, ``0, S, 2S, ...`` (a dense pool: its length follows the
  video's). Frame tokens do not depend on the playback rate, so one ``stride:1`` pool serves every
  rate of a playback-rate pretext task, and ``uniform:N`` views are served from it exactly.

Selection is dispatched once, by the policy's class: each kind's selection function is registered
here with ``@register_selection(ItsPolicyClass)`` (a kind of your own registers its own, e.g. in
its module or a test). A frame policy's function takes ``(policy, num_frames, scores, stamps)``
and returns the source frame indices; a clip policy's (:mod:`featcache.video.clips`) takes
``(policy, num_frames, fps, stamps, frames, rate)`` and returns its clips.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from featcache.spec.policy import (  # noqa: F401  (Policy, parse_policies re-exported)
    FpsPolicy,
    FramePolicy,
    KeyFramePolicy,
    Policy,
    StridePolicy,
    UniformPolicy,
    parse_policies,
)

# sRGB (D65) -> CIE XYZ, IEC 61966-2-1.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ],
    dtype=np.float64,
)
_WHITE = _RGB_TO_XYZ.sum(axis=1)  # D65 white point (Xn, Yn=1, Zn)
_UN = 4 * _WHITE[0] / (_WHITE[0] + 15 * _WHITE[1] + 3 * _WHITE[2])
_VN = 9 * _WHITE[1] / (_WHITE[0] + 15 * _WHITE[1] + 3 * _WHITE[2])


def uniform_indices(num_frames: int, count: int) -> np.ndarray:
    """Centres of ``count`` equal segments of ``range(num_frames)``; repeats when too short."""
    if num_frames < 1:
        raise ValueError("uniform_indices: the video has no frames")
    i = np.arange(count, dtype=np.float64)
    return np.floor((i + 0.5) * num_frames / count).astype(np.int64)


# sRGB decoding of every uint8 level, computed as rgb_to_luv always did (a lookup, same values)
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_LINEAR = np.where(_LEVELS <= 0.04045, _LEVELS / 12.92, ((_LEVELS + 0.055) / 1.055) ** 2.4)


def rgb_to_luv(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> float32 CIE L*u*v* (..., 3), D65 white (L in [0, 100])."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        linear = _LINEAR[rgb]
    else:
        c = rgb.astype(np.float64) / 255.0
        linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T  # (..., 3)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    y_rel = y / _WHITE[1]
    lum = np.where(y_rel > (6 / 29) ** 3, 116 * np.cbrt(y_rel) - 16, (29 / 3) ** 3 * y_rel)
    denom = x + 15 * y + 3 * z
    safe = np.where(denom > 0, denom, 1.0)
    u_prime = np.where(denom > 0, 4 * x / safe, _UN)
    v_prime = np.where(denom > 0, 9 * y / safe, _VN)
    u = 13 * lum * (u_prime - _UN)
    v = 13 * lum * (v_prime - _VN)
    return np.stack([lum, u, v], axis=-1).astype(np.float32)


class LuvScorer:
    """Streaming key-frame scores: call with each frame (uint8 (H, W, 3)) in order; returns its
    mean |LUV - previous frame's LUV| (0 for the first frame), as float32."""

    def __init__(self):
        self.prev = None

    def __call__(self, frame: np.ndarray) -> np.float32:
        luv = rgb_to_luv(frame)
        score = np.float32(0.0) if self.prev is None else np.float32(np.abs(luv - self.prev).mean())
        self.prev = luv
        return score


def luv_scores(frames: np.ndarray) -> np.ndarray:
    """Score each frame of uint8 (T, H, W, 3) by its mean |LUV - previous LUV|; frame 0 scores 0."""
    scorer = LuvScorer()  # frame by frame: bounded memory on long videos
    return np.array([scorer(frame) for frame in frames], dtype=np.float32).reshape(len(frames))


class BestFrames:
    """The ``k`` frames a streaming decode must keep so that ``keyframe_indices(scores, k)`` can be
    answered at the end without decoding again: the ``k`` best by (score descending, index
    ascending) among frames that scored > 0, each with a payload (the decoded frame). Offer frames
    in index order. Static footage (fewer than ``k`` changed frames) and videos shorter than ``k``
    also pick frames outside this set; the decoder fetches those afterwards."""

    def __init__(self, k: int):
        self.k, self.heap = k, []  # min-heap of (score, -index, payload): the root is the worst kept

    def offer(self, index: int, score: float, payload) -> None:
        if self.k <= 0 or not score > 0:
            return
        entry = (float(score), -index, payload)  # (score, -index) is unique: payloads are never compared
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:  # a later frame with an equal score loses the tie
            heapq.heapreplace(self.heap, entry)

    def kept(self) -> dict:
        """{index: payload} of the frames kept."""
        return {-neg: payload for _, neg, payload in self.heap}


def keyframe_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` key frames of a video given every frame's score (see module docstring)."""
    n = len(scores)
    if n < count:
        return uniform_indices(n, count)
    changed = np.flatnonzero(scores > 0)
    order = np.lexsort((changed, -scores[changed]))  # score descending, then index ascending
    chosen = changed[order][:count]
    if len(chosen) < count:
        rest = np.setdiff1d(np.arange(n), chosen)
        chosen = np.concatenate([chosen, rest[uniform_indices(len(rest), count - len(chosen))]])
    return np.sort(chosen).astype(np.int64)


def fps_indices(stamps: np.ndarray, rate: int) -> np.ndarray:
    """The frame nearest in time to each of ``0, 1/rate, 2/rate, ...`` up to the last timestamp."""
    times = np.arange(0.0, stamps[-1] + 1e-9, 1.0 / rate)
    pos = np.clip(np.searchsorted(stamps, times), 1, max(1, len(stamps) - 1))
    if len(stamps) == 1:
        return np.zeros(len(times), dtype=np.int64)
    left, right = stamps[pos - 1], stamps[pos]
    return np.where(times - left <= right - times, pos - 1, pos).astype(np.int64)


_SELECTIONS: dict[type, Callable] = {}


def register_selection(policy_class: type[FramePolicy]):
    """Decorator: ``fn`` selects the frames (clips) of ``policy_class``'s policies."""
    def register(fn: Callable) -> Callable:
        _SELECTIONS[policy_class] = fn
        return fn
    return register


def selection(policy: FramePolicy) -> Callable:
    """The selection function registered for ``policy``'s class (or the nearest base class)."""
    for cls in type(policy).__mro__:
        if cls in _SELECTIONS:
            return _SELECTIONS[cls]
    raise ValueError(f"no selection registered for {policy} ({type(policy).__name__}); "
                     "register one with featcache.video.select.register_selection")


@register_selection(UniformPolicy)
def select_uniform(policy: UniformPolicy, num_frames: int, scores=None, stamps=None) -> np.ndarray:
    return uniform_indices(num_frames, policy.frames)


@register_selection(StridePolicy)
def select_stride(policy: StridePolicy, num_frames: int, scores=None, stamps=None) -> np.ndarray:
    return np.arange(0, num_frames, policy.step, dtype=np.int64)


@register_selection(FpsPolicy)
def select_fps(policy: FpsPolicy, num_frames: int, scores=None, stamps=None) -> np.ndarray:
    if stamps is None:
        raise ValueError("fps policy needs the frames' timestamps")
    return fps_indices(np.asarray(stamps, dtype=np.float64), policy.rate)


@register_selection(KeyFramePolicy)
def select_keyframes(policy: KeyFramePolicy, num_frames: int, scores=None, stamps=None) -> np.ndarray:
    if scores is None:
        raise ValueError("keyframes policy needs LUV scores")
    return keyframe_indices(scores, policy.frames)


def policy_indices(policy: FramePolicy, num_frames: int, scores: np.ndarray | None = None,
                   stamps: np.ndarray | None = None) -> np.ndarray:
    """The source frames one frame policy picks, by its registered selection: key frames need the
    LUV ``scores``, ``fps:F`` the frames' timestamps ``stamps`` (seconds)."""
    return np.asarray(selection(policy)(policy, num_frames, scores, stamps), dtype=np.int64)


def select_frames(
    policies: tuple[FramePolicy, ...], num_frames: int, scores: np.ndarray | None, stamps: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Union of all policies' frames (sorted, unique source indices) and, per policy,
    its positions into that pool (length = the policy's count, repeats allowed)."""
    picked = {str(policy): policy_indices(policy, num_frames, scores, stamps) for policy in policies}
    pool = np.unique(np.concatenate(list(picked.values())))
    positions = {name: np.searchsorted(pool, idx).tolist() for name, idx in picked.items()}
    return pool, positions
