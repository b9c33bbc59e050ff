"""Dense-clip test views (SlowFast's multi-view protocol) from a cached ``stride:S`` pool.

A test view is a clip of N frames at a sampling rate R (N*R consecutive source frames, every R-th
kept); V clips per video with starts evenly spaced over it. As
``facebookresearch/SlowFast`` ``slowfast/datasets/decoder.py``:

- ``clip_size = max(1, sampling_rate * num_frames / target_fps * fps)`` (``decode``, L552-555;
  featcache counts the rate in source frames, i.e. ``target_fps`` = the video's own rate);
- ``get_start_end_idx`` (L37-76) with ``clip_idx`` over ``num_clips`` (no offset):
  ``delta = max(video_size - clip_size, 0)``, ``start = delta * clip_idx / num_clips``,
  ``end = start + clip_size - 1``;
- ``temporal_sampling`` (L17-34): ``torch.linspace(start, end, num_frames)`` clamped to
  ``[0, video_size - 1]``, truncated with ``.long()``. A video shorter than a clip repeats its
  last frame.

A source frame the pool does not hold (``stride:S`` with S > 1) is served by the nearest cached
frame; how many were is reported with the metrics.

Sliding windows (``featcache eval --window W --stride S``) start every S pool frames while a whole
window fits, and when that leaves a tail one more window is aligned to the end of the pool
(:func:`window_starts`): every pool frame is in some window. Without it, Charades' no-overlap
stride 8 over a 30.1 s video at ``fps:1`` (31 pool frames) scores frames 0-23 only, 77%.
"""
from __future__ import annotations

import numpy as np
import torch

from featcache.errors import OptionError


def get_start_end_idx(video_size: int, clip_size: float, clip_idx: int, num_clips: int) -> tuple[float, float]:
    """First and last (fractional) source frame of clip ``clip_idx`` of ``num_clips``."""
    delta = max(video_size - clip_size, 0)
    start = delta * clip_idx / num_clips
    return start, start + clip_size - 1


def dense_clip_indices(video_size: int, num_frames: int, rate: int, clip_idx: int, num_clips: int) -> np.ndarray:
    """Source frame indices (num_frames,) of one dense test clip."""
    if rate < 1:
        raise OptionError("clip_rate", f"must be at least 1, got {rate}")
    if not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip {clip_idx} of {num_clips} does not exist")
    clip_size = max(1.0, float(rate * num_frames))
    start, end = get_start_end_idx(video_size, clip_size, clip_idx, num_clips)
    index = torch.linspace(start, end, num_frames)  # float32, as SlowFast
    return torch.clamp(index, 0, video_size - 1).long().numpy()


def nearest_positions(pool_frames: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, int]:
    """Positions into a sorted pool of source frames nearest to ``wanted`` (ties to the earlier
    frame), and how many wanted frames the pool does not hold exactly."""
    if len(pool_frames) == 1:
        pos = np.zeros(len(wanted), dtype=np.int64)
    else:
        pos = np.clip(np.searchsorted(pool_frames, wanted), 1, len(pool_frames) - 1)
        left, right = pool_frames[pos - 1], pool_frames[pos]
        pos = np.where(np.abs(wanted - left) <= np.abs(right - wanted), pos - 1, pos)
    return pos, int((pool_frames[pos] != wanted).sum())


def window_starts(length: int, width: int, stride: int) -> tuple[list[int], int | None]:
    """Starts of the windows of ``width`` pool frames over ``length`` (>= width) pool frames, every
    ``stride`` while a whole window fits, and the start of the window aligned to the end that is
    added when the stride leaves a tail (None when it does not): the windows cover every frame."""
    if width < 1 or stride < 1 or length < width:
        raise ValueError(f"windows of {width} every {stride} over {length} frames")
    starts = list(range(0, length - width + 1, stride))
    tail = length - width if starts[-1] + width < length else None
    return starts + ([tail] if tail is not None else []), tail


def coverage(length: int, width: int, starts: list[int]) -> float:
    """The fraction of ``length`` pool frames inside at least one window."""
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        covered[s:s + width] = True
    return float(covered.mean())


# ------------------------------------------------------------------ the releases' test clips
def slowfast_clip_indices(video_size: int, fps: float, num_frames: int, rate: int, clip_idx: int, num_clips: int,
                          target_fps: float = 30.0) -> np.ndarray:
    """SlowFast's test clip with its defaults (``DATA.TARGET_FPS`` 30, ``config/defaults.py``): the
    clip spans ``rate * num_frames / target_fps * fps`` source frames (``decoder.py`` ``decode``
    L552-555: on 25 fps data 26.7 frames, not 32), placed by ``get_start_end_idx`` (L37-76, no
    offset) and sampled by ``temporal_sampling`` (L17-34) over the decoded whole video."""
    if rate < 1:
        raise OptionError("clip_rate", f"must be at least 1, got {rate}")
    clip_size = max(1.0, rate * num_frames / target_fps * fps)
    start, end = get_start_end_idx(video_size, clip_size, clip_idx, num_clips)
    index = torch.linspace(start, end, num_frames)
    return torch.clamp(index, 0, video_size - 1).long().numpy()


def stadapter_clip_indices(video_size: int, num_frames: int, rate: int, clip_idx: int, num_clips: int) -> np.ndarray:
    """ST-Adapter's test clip (linziyi96/st-adapter ``video_dataset/dataset.py``
    ``_generate_temporal_crops``, L189-199): ``seg_len = (N - 1) * R + 1`` frames, a video shorter
    than that padded with its last frame, ``slide = len - seg_len``, start ``slide // 2`` for one
    view, else ``round(slide / (V - 1) * i)`` (Python's round, half to even), then every R-th."""
    if rate < 1:
        raise OptionError("clip_rate", f"must be at least 1, got {rate} (ST-Adapter's dense views)")
    seg_len = (num_frames - 1) * rate + 1
    slide = max(video_size, seg_len) - seg_len
    start = slide // 2 if num_clips == 1 else round(slide / (num_clips - 1) * clip_idx)
    return np.minimum(start + rate * np.arange(num_frames), video_size - 1)


def vjepa_clip_indices(video_size: int, frames_per_clip: int, frame_step: int, num_segments: int,
                       rng: np.random.RandomState | None = None) -> list[np.ndarray]:
    """V-JEPA's test clips, one per segment (facebookresearch/jepa ``src/datasets/video_dataset.py``
    ``loadvideo_decord``, L207-266, with ``duration`` None): the video is cut into ``num_segments``
    partitions of ``video_size // num_segments`` frames. When a partition is longer than a clip
    (``frames_per_clip * frame_step`` frames), the clip ends at ``end``, drawn by
    ``rng.randint(clip_len, partition_len)`` (the release's eval loader keeps
    ``random_clip_sampling=True``: ``evals/video_classification_frozen/eval.py`` L472-487 does not
    pass it, ``src/datasets/data_manager.py`` L36 defaults it to True), or ``clip_len`` with
    ``rng`` None (``random_clip_sampling=False``), and samples ``linspace(end - clip_len, end,
    frames_per_clip)`` truncated and clipped to ``end - 1``, offset by the partition's start.
    Otherwise (``allow_clip_overlap``, as eval.py L198/L212 sets it) every segment takes the same
    ``frames_per_clip`` offsets over ``min(clip_len, video_size) - 1`` frames (the linspace's own
    points, then its last frame repeated; clipped below it), shifted by
    ``(video_size - clip_len) // (num_segments - 1)`` per segment when the video is longer than
    a clip. A one-frame video gives frame 0 (the release's clip to [0, -1] gives -1)."""
    if frame_step < 1 or frames_per_clip < 1 or num_segments < 1:
        raise OptionError("clip_rate", f"V-JEPA clips of {frames_per_clip} frames every {frame_step} "
                                       f"in {num_segments} segments")
    clip_len = frames_per_clip * frame_step
    part = video_size // num_segments
    segments = []
    for i in range(num_segments):
        if part > clip_len:
            end = clip_len if rng is None else int(rng.randint(clip_len, part))
            points = np.linspace(end - clip_len, end, num=frames_per_clip)
            segments.append(np.minimum(points.astype(np.int64), end - 1) + i * part)
            continue
        last = min(clip_len, video_size) - 1
        count = last // frame_step
        points = np.concatenate([np.linspace(0, last, num=count), np.full(frames_per_clip - count, float(last))])
        shift = (video_size - clip_len) // (num_segments - 1) if video_size > clip_len else 0
        segments.append(np.clip(points.astype(np.int64), 0, max(last - 1, 0)) + i * shift)
    return segments
