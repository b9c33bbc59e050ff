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

import math
from fractions import Fraction

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


# ------------------------------------------------------ SlowFast's selective decoding, replayed
US = Fraction(1, 1_000_000)  # AV_TIME_BASE_Q: the unit torchvision's decoder compares pts in


class ReleaseFails(Exception):
    """The release's decoder returns no clip for this video (SlowFast then fails the video)."""


def av_rescale_q(a: int, bq: Fraction, cq: Fraction) -> int:
    """FFmpeg's ``av_rescale_q`` (libavutil/mathematics.c): ``a * bq / cq`` rounded to the
    nearest integer, halves away from zero (AV_ROUND_NEAR_INF), in exact integer arithmetic."""
    b, c = bq.numerator * cq.denominator, cq.numerator * bq.denominator
    return -av_rescale_q(-a, bq, cq) if a < 0 else (a * b + c // 2) // c


def rescaled(a: np.ndarray, bq: Fraction, cq: Fraction) -> np.ndarray:
    """:func:`av_rescale_q` of every element (int64; exact Python integers where int64 could overflow)."""
    b, c = bq.numerator * cq.denominator, cq.numerator * bq.denominator
    if not len(a) or int(np.abs(a).max()) * b + c < 2 ** 62:
        return np.sign(a) * ((np.abs(a) * b + c // 2) // c)
    return np.array([av_rescale_q(int(x), bq, cq) for x in a], dtype=np.int64)


def _sampled(start: float, end: float, num_frames: int, available: int) -> np.ndarray:
    """``temporal_sampling`` (decoder.py L17-34) over ``available`` decoded frames: positions."""
    return torch.clamp(torch.linspace(start, end, num_frames), 0, available - 1).long().numpy()


def slowfast_torchvision_clips(clock, num_frames: int, rate: int, num_clips: int,
                               target_fps: float = 30.0) -> list[np.ndarray]:
    """SlowFast's ``num_clips`` test clips with its default ``DATA.DECODING_BACKEND`` "torchvision"
    (``config/defaults.py`` L726, TARGET_FPS 30 at L720): ``torchvision_decode`` (``decoder.py``
    L228-370) decodes only the clip's pts range when the header's duration allows it, then
    ``decode`` (L552-598) samples the clip from the decoded frames. Returns each clip's source
    frames. ``clock`` is the video's recorded
    :class:`~featcache.cache.facts.StreamClock`; the arithmetic replays:

    - the probe: ``video_fps`` is ``av_guess_frame_rate`` stored as float32 (torchvision
      ``csrc/io/decoder/stream.cpp`` ``openCodec``, ``video_reader.cpp`` videoFps kFloat), the
      duration the header's, through microseconds and back (``_video_opt.py`` ``_fill_info``);
    - selective when ``fps * duration > num_frames * rate`` (L296-303): the clip of
      ``max(1, rate N / target_fps * fps)`` frames placed over ``fps * duration`` frames
      (``get_multiple_start_end_idx``, L79-183, no offset), turned into pts by ``denominator / fps``
      (L320-322), the decoder keeping frames with ``start_us <= pts_us <= end_us + 100`` and
      stopping at the first frame past the end (``video_reader.cpp`` ``offsetsToUs``;
      ``decoder.cpp`` ``processPacket``, ``getFrame``), then
      ``temporal_sampling`` of ``linspace(0, clip_size - 1, N)`` over them (L587-597);
    - otherwise, or when the range holds no frame, the whole video (frames with pts >= 0) and
      SlowFast's formula over it (L557-586)."""
    tb = Fraction(clock.time_base)
    pts_us = rescaled(np.asarray(clock.frame_pts(), dtype=np.int64), tb, US)
    fps = float(np.float32(float(Fraction(clock.guessed_rate)) if clock.guessed_rate else 0.0))
    clip_size = max(1.0, rate * num_frames / target_fps * fps)
    duration = 0.0
    if clock.duration is not None:
        duration = float(av_rescale_q(av_rescale_q(clock.duration, tb, US), US, tb)) * (tb.numerator / float(tb.denominator))
    selective = tb.denominator > 0 and duration > 0 and fps * duration > num_frames * rate

    def clip(clip_idx: int) -> np.ndarray:
        if selective:
            start, end = get_start_end_idx(fps * duration, clip_size, clip_idx, num_clips)
            per_frame = tb.denominator / fps
            start_pts, end_pts = int(start * per_frame), int(end * per_frame)
            start_us = av_rescale_q(start_pts, tb, US) if start_pts > 0 else 0
            end_us = 100 + av_rescale_q(end_pts, tb, US) if end_pts > 0 else -1
            past = np.flatnonzero(pts_us > end_us) if end_us > 0 else []
            decoded = pts_us[:past[0]] if len(past) else pts_us  # decoding stops at the first frame past the end
            kept = np.flatnonzero(decoded >= start_us)
            if len(kept):
                return kept[_sampled(0.0, clip_size - 1, num_frames, len(kept))]
        kept = np.flatnonzero(pts_us >= 0)  # the whole video: startOffset 0 drops negative pts
        if not len(kept):
            raise ReleaseFails("torchvision's decoder returns no frame with pts >= 0")
        start, end = get_start_end_idx(len(kept), clip_size, clip_idx, num_clips)
        return kept[_sampled(start, end, num_frames, len(kept))]

    return [clip(v) for v in range(num_clips)]


def _pyav_stream(pts: np.ndarray, start_pts: float, end_pts: float) -> np.ndarray:
    """``pyav_decode_stream`` (c4ecfa1 L72-111) over the frames in display order: decoding from
    the last frame at or before ``start_pts - 1024`` (its seek; every frame taken as seekable),
    skipping those before ``start_pts``, keeping those up to ``end_pts`` and the first one after
    (``buffer_size`` 0), one frame per pts (a dict keyed by pts: the last decoded wins), in pts order."""
    before = np.flatnonzero(pts <= max(start_pts - 1024, 0))
    frames = {}
    for i in range(int(before[-1]) if len(before) else 0, len(pts)):
        if pts[i] < start_pts:
            continue
        frames[int(pts[i])] = i
        if pts[i] > end_pts:
            break
    return np.array([frames[p] for p in sorted(frames)], dtype=np.int64)


def slowfast_pyav_clips(clock, num_frames: int, rate: int, num_clips: int,
                        target_fps: float = 30.0) -> list[np.ndarray]:
    """SlowFast's ``num_clips`` test clips with its ``pyav`` backend, the default until September 2021 (commit
    c4ecfa1, ``config/defaults.py`` ``DECODING_BACKEND = "pyav"``; the papers of SlowFast, X3D
    and MViT ran it). ``pyav_decode`` (``decoder.py`` L229-302 of that commit) places the clip of
    ``rate N / target_fps * average_rate`` frames over the header's frame count, converts to pts
    by ``duration / frames``, and ``pyav_decode_stream`` (L72-111) keeps the frames with
    ``start_pts <= pts <= end_pts`` plus the first one after (``buffer_size`` 0); ``decode``
    (L377-390) samples ``linspace(0, clip_size - 1, N)`` over them. Without a header duration the
    whole video is decoded and the clip placed over it. A header without a frame count divides by
    zero, and a range past the last frame decodes nothing: SlowFast fails those videos
    (:class:`ReleaseFails`). The HEAD release's pyav path fails every video (``decoder.py`` L421-422
    subtract 1 from the list of frame counts, caught at L541), so this is the last one that ran."""
    pts = np.asarray(clock.frame_pts(), dtype=np.int64)
    if not clock.average_rate:
        raise ReleaseFails("the stream has no average rate (pyav_decode's float() of it fails, L266)")
    fps = float(Fraction(clock.average_rate))
    clip_size = rate * num_frames / target_fps * fps
    if clock.duration is None:  # the whole video decoded once, every clip placed over it
        kept = _pyav_stream(pts, 0, math.inf)
        if not len(kept):
            raise ReleaseFails("PyAV decodes no frame with pts >= 0")
        return [kept[_sampled(*get_start_end_idx(len(kept), clip_size, v, num_clips), num_frames, len(kept))]
                for v in range(num_clips)]
    if not clock.frames:
        raise ReleaseFails("the header has no frame count (pyav_decode divides the duration by it, L284)")
    per_frame = clock.duration / clock.frames

    def clip(clip_idx: int) -> np.ndarray:
        start, end = get_start_end_idx(clock.frames, clip_size, clip_idx, num_clips)
        kept = _pyav_stream(pts, int(start * per_frame), int(end * per_frame))
        if not len(kept):
            raise ReleaseFails("the clip's pts range lies past the last frame (PyAV decodes nothing)")
        return kept[_sampled(0.0, clip_size - 1, num_frames, len(kept))]

    return [clip(v) for v in range(num_clips)]
