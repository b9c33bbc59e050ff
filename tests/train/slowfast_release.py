"""SlowFast's test-time decoding re-typed from the releases, run on a fake video (its frames' pts and
its stream header), so tests can compare featcache's replay with the release's own control flow.

- ``tv_decode``: facebookresearch/SlowFast HEAD (287ec00) ``slowfast/datasets/decoder.py``
  ``get_start_end_idx`` L37-76, ``get_multiple_start_end_idx`` L79-183, ``torchvision_decode``
  L228-370, ``decode`` L452-616 (test mode: one clip, ``temporally_rnd_clips`` with one clip does
  not shuffle), with torchvision's ``io._probe_video_from_memory`` / ``io._read_video_from_memory``
  re-typed from pytorch/vision: ``torchvision/io/_video_opt.py`` ``_fill_info``;
  ``csrc/io/video_reader/video_reader.cpp`` ``offsetsToUs`` (start/end pts -> microseconds, +100 us
  jitter on the end), ``readVideo`` (fps as a float tensor, duration back to the time base);
  ``csrc/io/decoder/stream.cpp`` ``openCodec`` (fps = av_guess_frame_rate, duration in us),
  ``setFramePts`` (best-effort pts -> us); ``csrc/io/decoder/decoder.cpp`` ``processPacket`` (a
  frame is kept when ``startOffset <= pts <= endOffset``; decoding stops at the first past the end).
- ``pyav_decode_c4``: SlowFast c4ecfa1 (2021-09, the last commit whose default backend was
  "pyav") ``decoder.py`` ``get_start_end_idx`` L31-69, ``pyav_decode_stream`` L72-111,
  ``pyav_decode`` L229-302, ``decode`` L305-390, on a fake PyAV container.

Frames are their source indices, so a returned clip is the list of source frames the release uses.
"""
import math
import random
from fractions import Fraction

import numpy as np
import torch

US = Fraction(1, 1_000_000)


def av_rescale_q(a, bq, cq):
    """libavutil/mathematics.c av_rescale_rnd(a, bq.num * cq.den, cq.num * bq.den, AV_ROUND_NEAR_INF)."""
    b, c = bq.numerator * cq.denominator, cq.numerator * bq.denominator
    if a < 0:
        return -av_rescale_q(-a, bq, cq)
    r = c // 2
    return (a * b + r) // c


class FakeVideo:
    """A video as its decoders see it: frame pts (display order), the stream's time base, header
    duration (None: absent) and frame count, average and guessed rates."""

    def __init__(self, pts, time_base, duration, frames, average_rate, guessed_rate):
        self.pts, self.time_base, self.duration = list(pts), Fraction(time_base), duration
        self.frames, self.average_rate, self.guessed_rate = frames, Fraction(average_rate), Fraction(guessed_rate)


# ----------------------------------------------------------------- torchvision's video_reader
class FakeMeta:  # torchvision.io._video_opt.VideoMetaData
    pass


class FakeTorchvisionIO:
    """``io._probe_video_from_memory`` and ``io._read_video_from_memory`` of torchvision's
    video_reader, on a FakeVideo (``video_tensor`` is the FakeVideo itself)."""

    @staticmethod
    def _probe_video_from_memory(video):
        tb = video.time_base
        fps = float(np.float32(float(video.guessed_rate)))  # stream.cpp: av_q2d(av_guess_frame_rate); kFloat tensor
        if video.duration is None:  # AV_NOPTS_VALUE: rescaled to a large negative number
            duration_tb = -(2 ** 62)
        else:
            duration_us = av_rescale_q(video.duration, tb, US)  # stream.cpp openCodec: header.duration in us
            duration_tb = av_rescale_q(duration_us, US, tb)  # video_reader.cpp: back to the time base
        meta = FakeMeta()
        meta.video_timebase = tb
        timebase = tb.numerator / float(tb.denominator)  # _fill_info
        meta.has_video = True
        meta.video_duration = float(duration_tb) * timebase
        meta.video_fps = fps
        meta.audio_timebase = Fraction(0, 1)
        meta.has_audio = False
        meta.audio_duration = 0.0
        meta.audio_sample_rate = 0.0
        return meta

    @staticmethod
    def _read_video_from_memory(video, seek_frame_margin, read_video_stream, video_width, video_height,
                                video_min_dimension, video_pts_range, video_timebase_numerator,
                                video_timebase_denominator, read_audio_stream=0):
        vr = Fraction(video_timebase_numerator, video_timebase_denominator)
        start_pts, end_pts = video_pts_range
        start_us, end_us = 0, -1  # offsetsToUs
        if start_pts > 0:
            start_us = av_rescale_q(start_pts, vr, US)
        if end_pts > 0:
            end_us = 100 + av_rescale_q(end_pts, vr, US)
        kept = []
        for index, p in enumerate(video.pts):  # frames in display order after the seek
            pts_us = av_rescale_q(p, video.time_base, US)  # setFramePts
            end_in_range = end_us <= 0 or pts_us <= end_us  # processPacket
            if not end_in_range:
                break  # inRange_ false: the decoding loop ends
            if pts_us >= start_us:
                kept.append(index)
        if not kept:
            return torch.zeros(0), None
        return torch.tensor(kept)[:, None], None


io = FakeTorchvisionIO


def get_start_end_idx(video_size, clip_size, clip_idx, num_clips_uniform, use_offset=False):
    delta = max(video_size - clip_size, 0)
    if clip_idx == -1:
        start_idx = random.uniform(0, delta)
    else:
        if use_offset:
            if num_clips_uniform == 1:
                start_idx = math.floor(delta / 2)
            else:
                start_idx = clip_idx * math.floor(delta / (num_clips_uniform - 1))
        else:
            start_idx = delta * clip_idx / num_clips_uniform
    end_idx = start_idx + clip_size - 1
    return start_idx, end_idx, start_idx / delta if delta != 0 else 0.0


def get_multiple_start_end_idx(video_size, clip_sizes, clip_idx, num_clips_uniform, min_delta=0,
                               max_delta=math.inf, use_offset=False):
    """L79-183 with one clip size and a test clip index: the loop runs once and breaks."""
    se_inds = np.empty((0, 2))
    dt = np.empty((0))
    for clip_size in clip_sizes:
        max_start = max(video_size - clip_size, 0)
        if use_offset:
            if num_clips_uniform == 1:
                start_idx = math.floor(max_start / 2)
            else:
                start_idx = clip_idx * math.floor(max_start / (num_clips_uniform - 1))
        else:
            start_idx = max_start * clip_idx / num_clips_uniform
        end_idx = start_idx + clip_size - 1
        se_inds = np.append(se_inds, [[start_idx, end_idx]], axis=0)
    delta_clips = np.concatenate((np.array([0]), dt))
    return np.c_[se_inds, delta_clips]


def temporal_sampling(frames, start_idx, end_idx, num_samples):
    index = torch.linspace(start_idx, end_idx, num_samples)
    index = torch.clamp(index, 0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index)


def torchvision_decode(video_handle, sampling_rate, num_frames, clip_idx, video_meta, num_clips_uniform=10,
                       target_fps=30, modalities=("visual",), max_spatial_scale=0, use_offset=False,
                       min_delta=-math.inf, max_delta=math.inf):
    video_tensor = video_handle
    decode_all_video = True
    video_start_pts, video_end_pts = 0, -1
    if len(video_meta) == 0:
        meta = io._probe_video_from_memory(video_tensor)
        video_meta["video_timebase"] = meta.video_timebase
        video_meta["video_numerator"] = meta.video_timebase.numerator
        video_meta["video_denominator"] = meta.video_timebase.denominator
        video_meta["has_video"] = meta.has_video
        video_meta["video_duration"] = meta.video_duration
        video_meta["video_fps"] = meta.video_fps
    fps = video_meta["video_fps"]
    if len(video_meta) > 0 and (
        video_meta["has_video"]
        and video_meta["video_denominator"] > 0
        and video_meta["video_duration"] > 0
        and fps * video_meta["video_duration"] > sum(T * tau for T, tau in zip(num_frames, sampling_rate))
    ):
        decode_all_video = False
        clip_sizes = [np.maximum(1.0, sampling_rate[i] * num_frames[i] / target_fps * fps)
                      for i in range(len(sampling_rate))]
        start_end_delta_time = get_multiple_start_end_idx(fps * video_meta["video_duration"], clip_sizes, clip_idx,
                                                          num_clips_uniform, min_delta=min_delta,
                                                          max_delta=max_delta, use_offset=use_offset)
        frames_out = [None] * len(num_frames)
        for k in range(len(num_frames)):
            pts_per_frame = video_meta["video_denominator"] / video_meta["video_fps"]
            video_start_pts = int(start_end_delta_time[k, 0] * pts_per_frame)
            video_end_pts = int(start_end_delta_time[k, 1] * pts_per_frame)
            v_frames, _ = io._read_video_from_memory(
                video_tensor, seek_frame_margin=1.0, read_video_stream="visual" in modalities, video_width=0,
                video_height=0, video_min_dimension=max_spatial_scale,
                video_pts_range=(video_start_pts, video_end_pts),
                video_timebase_numerator=video_meta["video_numerator"],
                video_timebase_denominator=video_meta["video_denominator"], read_audio_stream=0)
            if v_frames is None or v_frames.shape == torch.Size([0]):
                decode_all_video = True
                break
            frames_out[k] = v_frames
    if decode_all_video:
        video_start_pts, video_end_pts = 0, -1
        start_end_delta_time = None
        v_frames, _ = io._read_video_from_memory(
            video_tensor, seek_frame_margin=1.0, read_video_stream="visual" in modalities, video_width=0,
            video_height=0, video_min_dimension=max_spatial_scale, video_pts_range=(video_start_pts, video_end_pts),
            video_timebase_numerator=video_meta["video_numerator"],
            video_timebase_denominator=video_meta["video_denominator"], read_audio_stream=0)
        if v_frames.shape == torch.Size([0]):
            v_frames = None
        frames_out = [v_frames]
    if any([t is None or t.shape[0] < 0 for t in frames_out]):
        frames_out = [None]
    return frames_out, fps, decode_all_video, start_end_delta_time


def tv_decode(video, sampling_rate, num_frames, clip_idx, num_clips_uniform, target_fps=30):
    """``decode`` (HEAD, L452-616) with backend "torchvision", test mode: the source frames of the
    clip, or None where SlowFast gets no frames."""
    sampling_rate, num_frames = [sampling_rate], [num_frames]
    num_decode = len(num_frames)
    frames_decoded, fps, decode_all_video, start_end_delta_time = torchvision_decode(
        video, sampling_rate, num_frames, clip_idx, {}, num_clips_uniform, target_fps, ("visual",), 0)
    if frames_decoded is None or None in frames_decoded:
        return None
    clip_sizes = [np.maximum(1.0, sampling_rate[i] * num_frames[i] / target_fps * fps) for i in range(len(sampling_rate))]
    if decode_all_video:
        start_end_delta_time = get_multiple_start_end_idx(frames_decoded[0].shape[0], clip_sizes, clip_idx,
                                                          num_clips_uniform)
    out = []
    for k in range(num_decode):
        if decode_all_video:
            frames = frames_decoded[0]
            start_idx, end_idx = start_end_delta_time[k, 0], start_end_delta_time[k, 1]
        else:
            frames = frames_decoded[k]
            start_idx, end_idx, _ = get_start_end_idx(frames.shape[0], clip_sizes[k], 0, 1)
        out.append(temporal_sampling(frames, start_idx, end_idx, num_frames[k]))
    return out[0][:, 0].numpy(), not decode_all_video


# ----------------------------------------------------------------- PyAV (SlowFast c4ecfa1)
class _Rgb:
    def __init__(self, index):
        self.index = index

    def to_ndarray(self):
        return np.array([self.index])


class FakeFrame:
    def __init__(self, pts, index):
        self.pts, self.index = pts, index

    def to_rgb(self):
        return _Rgb(self.index)


class FakeStream:
    def __init__(self, video):
        self.average_rate, self.frames, self.duration = video.average_rate, video.frames, video.duration


class FakeContainer:
    """A PyAV container: ``seek`` lands on a frame at or before the offset (the test video is all
    key frames), ``decode`` yields frames in display order from there."""

    def __init__(self, video):
        self.video = video
        self.streams = type("Streams", (), {"video": [FakeStream(video)]})()
        self.position = 0

    def seek(self, offset, any_frame=False, backward=True, stream=None):
        before = [i for i, p in enumerate(self.video.pts) if p <= offset]
        self.position = before[-1] if before else 0

    def decode(self, **stream_name):
        for i in range(self.position, len(self.video.pts)):
            yield FakeFrame(self.video.pts[i], i)

    def close(self):
        pass


def pyav_decode_stream(container, start_pts, end_pts, stream, stream_name, buffer_size=0):
    margin = 1024
    seek_offset = max(start_pts - margin, 0)
    container.seek(seek_offset, any_frame=False, backward=True, stream=stream)
    frames = {}
    buffer_count = 0
    max_pts = 0
    for frame in container.decode(**stream_name):
        max_pts = max(max_pts, frame.pts)
        if frame.pts < start_pts:
            continue
        if frame.pts <= end_pts:
            frames[frame.pts] = frame
        else:
            buffer_count += 1
            frames[frame.pts] = frame
            if buffer_count >= buffer_size:
                break
    result = [frames[pts] for pts in sorted(frames)]
    return result, max_pts


def get_start_end_idx_c4(video_size, clip_size, clip_idx, num_clips, use_offset=False):
    """c4ecfa1 L31-69: HEAD's body (L37-76, unchanged since), without the third return value."""
    return get_start_end_idx(video_size, clip_size, clip_idx, num_clips, use_offset)[:2]


def pyav_decode(container, sampling_rate, num_frames, clip_idx, num_clips=10, target_fps=30, use_offset=False):
    fps = float(container.streams.video[0].average_rate)
    frames_length = container.streams.video[0].frames
    duration = container.streams.video[0].duration
    if duration is None:
        decode_all_video = True
        video_start_pts, video_end_pts = 0, math.inf
    else:
        decode_all_video = False
        start_idx, end_idx = get_start_end_idx_c4(frames_length, sampling_rate * num_frames / target_fps * fps,
                                                  clip_idx, num_clips, use_offset=use_offset)
        timebase = duration / frames_length
        video_start_pts = int(start_idx * timebase)
        video_end_pts = int(end_idx * timebase)
    frames = None
    if container.streams.video:
        video_frames, max_pts = pyav_decode_stream(container, video_start_pts, video_end_pts,
                                                   container.streams.video[0], {"video": 0})
        container.close()
        frames = [frame.to_rgb().to_ndarray() for frame in video_frames]
        frames = torch.as_tensor(np.stack(frames))
    return frames, fps, decode_all_video


def pyav_decode_c4(video, sampling_rate, num_frames, clip_idx, num_clips, target_fps=30):
    """``decode`` (c4ecfa1 L305-390) with backend "pyav": the clip's source frames, or None where
    SlowFast fails the video."""
    try:
        frames, fps, decode_all_video = pyav_decode(FakeContainer(video), sampling_rate, num_frames, clip_idx,
                                                    num_clips, target_fps)
    except Exception:  # L372-374: "Failed to decode by pyav with exception"
        return None
    if frames is None or frames.size(0) == 0:
        return None
    clip_sz = sampling_rate * num_frames / target_fps * fps
    start_idx, end_idx = get_start_end_idx_c4(frames.shape[0], clip_sz, clip_idx if decode_all_video else 0,
                                              num_clips if decode_all_video else 1)
    return temporal_sampling(frames, start_idx, end_idx, num_frames)[:, 0].numpy(), not decode_all_video
