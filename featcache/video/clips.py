"""Clip policies for video encoders: pure functions from frame counts / timestamps to clips.

A video encoder (``--model tv:NAME``) sees clips, not frames; the cache holds one row per clip.

- ``clips:N``: N evenly spaced clips of the model's own frame count T at its own sampling rate R
  (frames per second, from its weights' metadata), as torchvision's video classification
  reference samples them:
  the video is resampled to R frames per second (``VideoClips.compute_clips_for_video`` and
  ``_resample_video_idx``, torchvision/datasets/video_utils.py L207-230 and L280-289: ``step =
  fps / R``; an integer step takes every step-th frame, otherwise ``floor(arange(floor(n * R /
  fps)) * step)`` in float32), every run of T consecutive resampled frames is a candidate clip
  (``unfold`` with step 1, L25-42), and N of them are taken evenly
  (``UniformClipSampler``, torchvision/datasets/samplers/clip_sampler.py L133:
  ``linspace(0, count - 1, N).floor()``, float32). torchvision skips a video shorter than one
  clip; featcache keeps it as one clip that repeats its last resampled frame.
- ``windows:W/S`` over an ``fps:F`` pool (written ``fps:F,windows:W/S`` on the command line,
  ``windows:W/S@fps:F`` in the store): the frames nearest to ``0, 1/F, 2/F, ...`` seconds
  (``select.fps_indices``), then windows of W consecutive pool frames starting every S pool
  frames while a whole window fits (the Charades video transformers study's sliding windows, counted in pool frames
  as ``featcache eval --window`` does); a pool shorter than W is one window of ``uniform:W``
  over it (repeated frames).

Identical clips (a short video's repeats) are stored once: a policy's positions may repeat a
row, as frame policies repeat frames of short videos. Rows are sorted by their frame indices.

Each kind's selection is registered by its policy class with ``select.register_selection``
(``(policy, num_frames, fps, stamps, frames, rate) -> (clips (K, T), short)``) and dispatched once,
in :func:`policy_clips`.

Pure: numpy only (``select`` for the pool of ``windows``); the policy types and their parsing are in
:mod:`featcache.spec.clip_policy` (no numpy: the policy vocabulary must load without it).
"""
from __future__ import annotations

import numpy as np

from featcache.spec.clip_policy import ClipsPolicy, WindowsPolicy
from featcache.spec.frame_policy import FramePolicy
from featcache.video.select import fps_indices, register_selection, selection, uniform_indices


# ------------------------------------------------------------------ torchvision's index maths
def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps) in float32 as its CPU kernel computes it (the first half
    counts up from start, the second half down from end; the step in float32). Its floors, which
    UniformClipSampler takes, match torch's (tests/test_clips.py); the floats may differ by 1 ulp."""
    if steps == 1:
        return np.array([start], dtype=np.float32)
    step = np.float32((end - start) / (steps - 1))
    i = np.arange(steps)
    half = steps // 2
    up = np.float32(start) + step * i.astype(np.float32)
    down = np.float32(end) - step * (steps - i - 1).astype(np.float32)
    return np.where(i < half, up, down).astype(np.float32)


def resample_indices(num_frames: int, fps: float, rate: float) -> np.ndarray:
    """Source frames of a video of ``num_frames`` at ``fps`` resampled to ``rate`` frames per
    second (torchvision ``VideoClips.compute_clips_for_video`` + ``_resample_video_idx``)."""
    step = fps / rate
    if float(step).is_integer():
        return np.arange(0, num_frames, int(step), dtype=np.int64)  # video_pts[::step]
    total = int(np.floor(num_frames * rate / fps))
    return np.floor(np.arange(total, dtype=np.float32) * np.float32(step)).astype(np.int64)


def clips_indices(num_frames: int, fps: float, frames: int, rate: float, count: int) -> tuple[np.ndarray, bool]:
    """(count, frames) source frame indices of ``clips:count`` clips of ``frames`` frames at
    ``rate`` frames per second, and whether the video was shorter than one clip."""
    if num_frames < 1:
        raise ValueError("clips_indices: the video has no frames")
    resampled = resample_indices(num_frames, fps, rate)
    if len(resampled) == 0:
        resampled = np.zeros(1, dtype=np.int64)
    candidates = len(resampled) - frames + 1
    if candidates < 1:  # shorter than one clip: one clip, its last frame repeated
        clip = resampled[np.minimum(np.arange(frames), len(resampled) - 1)]
        return np.repeat(clip[None], count, axis=0), True
    starts = np.floor(_linspace_f32(0, candidates - 1, count)).astype(np.int64)
    return resampled[starts[:, None] + np.arange(frames)[None, :]], False


def windows_indices(pool: np.ndarray, width: int, stride: int) -> tuple[np.ndarray, bool]:
    """(K, width) source frame indices of the windows over a frame pool (source indices, in
    order, repeats allowed), and whether the pool was shorter than one window."""
    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) < width:
        return pool[uniform_indices(len(pool), width)][None], True
    starts = np.arange(0, len(pool) - width + 1, stride)
    return pool[starts[:, None] + np.arange(width)[None, :]], False


@register_selection(ClipsPolicy)
def select_clips(policy: ClipsPolicy, num_frames: int, fps: float, stamps: np.ndarray, frames: int,
                 rate: float) -> tuple[np.ndarray, bool]:
    return clips_indices(num_frames, fps, frames, rate, policy.clips)


@register_selection(WindowsPolicy)
def select_windows(policy: WindowsPolicy, num_frames: int, fps: float, stamps: np.ndarray, frames: int,
                   rate: float) -> tuple[np.ndarray, bool]:
    pool = fps_indices(np.asarray(stamps, dtype=np.float64), policy.fps)
    return windows_indices(pool, policy.width, policy.stride)


def policy_clips(policy: FramePolicy, num_frames: int, fps: float, stamps: np.ndarray,
                 frames: int, rate: float) -> tuple[np.ndarray, bool]:
    """(K, T) source frame indices of every clip ``policy`` picks, in policy order, and whether
    the video was short. ``frames`` / ``rate``: the model's clip length and sampling rate
    (``clips:N``); windows have their own length W and the pool's rate F."""
    return selection(policy)(policy, num_frames, fps, stamps, frames, rate)


def unique_clips(clips: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The distinct clips of (K, T) indices, sorted, and each input clip's position among them."""
    rows, positions = np.unique(clips, axis=0, return_inverse=True)
    return rows, np.asarray(positions).reshape(-1).tolist()


def spread(positions: list[int], count: int) -> list[int]:
    """``count`` of a video's cached clip positions, evenly (``uniform:count`` over them): the
    clips a ``clips:K`` view takes from a clip cache."""
    return [positions[i] for i in uniform_indices(len(positions), count)]
