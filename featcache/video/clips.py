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
  frames while a whole window fits (seed 004's Charades sliding windows, counted in pool frames
  as ``featcache eval --window`` does); a pool shorter than W is one window of ``uniform:W``
  over it (repeated frames).

Identical clips (a short video's repeats) are stored once: a policy's positions may repeat a
row, as frame policies repeat frames of short videos. Rows are sorted by their frame indices.

Pure: numpy only (``select`` for the pool of ``windows``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

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
    ValueError naming the bad part."""
    clip_parts = [p for p in parts if is_clip_policy_text(p)]
    if not clip_parts:
        return [], parts
    rest = [p for p in parts if not is_clip_policy_text(p)]
    out = []
    for part in clip_parts:
        m = re.fullmatch(r"clips:(\d+)", part) or re.fullmatch(r"windows:(\d+)/(\d+)(?:@fps:(\d+))?", part)
        if not m:
            raise ValueError(f"--frames: unknown clip policy {part!r}; expected clips:N or windows:W/S "
                             "(with an fps:F pool, e.g. fps:4,windows:8/8)")
        values = [int(v) for v in m.groups() if v is not None]
        if min(values) < 1:
            raise ValueError(f"--frames: {part!r}: every number must be at least 1")
        if part.startswith("clips"):
            out.append(ClipPolicy("clips", values[0]))
            continue
        fps = values[2] if len(values) == 3 else None
        if fps is None:
            pools = [p for p in rest if re.fullmatch(r"fps:\d+", p)]
            if len(pools) != 1:
                raise ValueError(f"--frames: {part!r} needs one fps:F pool to cut its windows from, "
                                 "e.g. --frames fps:4,windows:8/8")
            rest.remove(pools[0])
            fps = int(pools[0].split(":")[1])
            if fps < 1:
                raise ValueError(f"--frames: {pools[0]!r}: F must be at least 1")
        out.append(ClipPolicy("windows", values[0], values[1], fps))
    if len(out) > 1 or rest:
        raise ValueError(f"--frames: a video encoder caches one clip policy (clips:N, or fps:F,windows:W/S), "
                         f"got {','.join(parts)}")
    return out, rest


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
    from featcache.video.select import uniform_indices

    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) < width:
        return pool[uniform_indices(len(pool), width)][None], True
    starts = np.arange(0, len(pool) - width + 1, stride)
    return pool[starts[:, None] + np.arange(width)[None, :]], False


def policy_clips(policy: ClipPolicy, num_frames: int, fps: float, stamps: np.ndarray,
                 frames: int, rate: float) -> tuple[np.ndarray, bool]:
    """(K, T) source frame indices of every clip ``policy`` picks, in policy order, and whether
    the video was short. ``frames`` / ``rate``: the model's clip length and sampling rate
    (``clips:N``); windows have their own length W and the pool's rate F."""
    from featcache.video.select import fps_indices

    if policy.kind == "clips":
        return clips_indices(num_frames, fps, frames, rate, policy.count)
    pool = fps_indices(np.asarray(stamps, dtype=np.float64), policy.fps)
    return windows_indices(pool, policy.count, policy.stride)


def unique_clips(clips: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The distinct clips of (K, T) indices, sorted, and each input clip's position among them."""
    rows, positions = np.unique(clips, axis=0, return_inverse=True)
    return rows, np.asarray(positions).reshape(-1).tolist()
