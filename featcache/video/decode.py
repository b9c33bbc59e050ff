"""Video decoding: the only module that touches decord or PyAV.

``auto`` (the default) decodes each video once, in order, with PyAV (FFmpeg's own decoder, one
thread): the LUV scores of key-frame policies are computed frame by frame while streaming, the
best-scoring frames and the frames the other policies will pick (known from the header's frame
count) are kept as they go by, and only the kept frames are scaled to the model's resize size.
There is no random access, so nothing can land on the wrong frame; where the header misstated the
count, or a policy picks frames that were not kept (static footage, very short videos), those
frames are decoded in a second pass up to the last one needed (``DecodedVideo.second_pass``).

``--decoder decord`` / ``torchcodec`` use random access (fast on long videos with few frames per
GOP) behind cross-checks against PyAV: their frame 0 must equal PyAV's, with key-frame scoring
their seeks must land where their own sequential decode did, and containers without a seek index
go to PyAV. Those checks exist because decord silently shifts frames on some containers (the
MPEG-2 program stream used in the tests comes out 12 frames late), and a shift misaligns every
feature downstream. ``--decoder pyav`` is ``auto``.

Frames are decoded straight at the model's resize size (shorter side = ``short_side``, aspect
kept, torchvision's rounding), so full-resolution RGB frames never exist in memory; the centre
crop and normalisation belong to the encoder.

Long module: three decoders behind one interface and the cross-checks between them; the
checks must sit beside the decoders they check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from featcache.errors import OptionError
from featcache.video.select import BestFrames, LuvScorer, luv_scores

DECODERS = ("auto", "decord", "pyav", "torchcodec")
# Mean absolute difference (0-255 scale) above which decord's and PyAV's first frames are
# taken to be different frames rather than the same frame through two scalers.
PROBE_TOLERANCE = 6.0
# Containers without a seek index, where decord's random access lands on the wrong frames
# (seen with MPEG program streams): decoded sequentially with PyAV.
SEQUENTIAL_FORMATS = {"mpeg", "mpegts", "mpegvideo", "h264", "hevc", "m4v", "mjpeg"}

Picker = Callable[[int, "np.ndarray | None", np.ndarray], np.ndarray]  # (num_frames, LUV scores, seconds)
# (header frame count, seconds at the header rate) -> the frames the picker will likely choose besides key frames
Guess = Callable[[int, np.ndarray], np.ndarray]


class DecodeError(Exception):
    """A video that cannot be decoded; the message is the one-line reason stored in the cache."""


@dataclass
class DecodedVideo:
    """Frames chosen from one video, with what is needed to interpret them."""

    frames: np.ndarray  # (K, H, W, 3) uint8 at the resize size, for `indices`
    indices: np.ndarray  # (K,) source frame indices, sorted, unique
    timestamps: np.ndarray  # (K,) seconds from the first frame
    num_frames: int
    fps: float
    width: int  # source size
    height: int
    decoder: str
    note: str = ""
    expected_frames: int | None = None  # what the container's duration implies, when it says
    second_pass: bool = False  # the in-order decode had to read the file again for frames it had not kept

    @property
    def looks_truncated(self) -> bool:
        """Far fewer frames decoded than the container's duration promises."""
        return bool(self.expected_frames) and self.num_frames < 0.9 * self.expected_frames - 1


def resize_to_short_side(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at ``short_side`` (torchvision Resize(int)); 0: the
    source size (video encoders resize as their torchvision preset, featcache.video.clip_prepare)."""
    if short_side <= 0:
        return width, height
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}"[:300]


def check_file(path: str) -> None:
    """Raise DecodeError for a missing, unreadable or empty file."""
    if not os.path.exists(path):
        raise DecodeError(f"file not found: {path}")
    if not os.path.isfile(path):
        raise DecodeError(f"not a file: {path}")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")


def header_rate(path: str) -> float | None:
    """The video stream's average frame rate from the container header (None when it gives
    none): the ``fps`` torchvision resamples clips with (featcache.video.clip_prepare)."""
    import av

    check_file(path)
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except Exception as exc:
        raise DecodeError(f"cannot open: {_one_line(exc)}") from exc
    return float(rate) if rate else None


def decode_video(
    path: str,
    pick: Picker,
    short_side: int,
    small_size: tuple[int, int] | str | None = None,
    decoder: str = "auto",
    interpolation: str = "bicubic",
    keep_best: int = 0,
    guess: Guess | None = None,
) -> DecodedVideo:
    """Decode the frames ``pick(num_frames, scores, timestamps)`` chooses.

    ``scores`` is every frame's LUV key-frame score (``select.LuvScorer``) computed at
    ``small_size`` ((w, h), or ``"full"``: the source size) when given, else None; ``timestamps``
    is every frame's time in seconds from the first. ``keep_best`` (the largest key-frame count)
    and ``guess`` tell the in-order decoder which frames to keep while streaming; a wrong guess
    costs time (a second pass), never correctness. Raises DecodeError with a one-line reason when
    no decoder can read the file.
    """
    if decoder not in DECODERS:
        raise OptionError("decoder", f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if small_size == "full" and decoder in ("decord", "torchcodec"):
        raise ValueError(f"--luv-size full is scored in the in-order pass; use --decoder auto or pyav, not {decoder}")
    check_file(path)
    if decoder in ("auto", "pyav"):
        return _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best, guess)
    try:
        if decoder == "torchcodec":
            return _decode_torchcodec(path, pick, short_side, small_size, interpolation)
        return _decode_decord(path, pick, short_side, small_size, interpolation)
    except DecodeError:
        raise
    except _ProbeMismatch as exc:
        note = str(exc)
    except Exception as exc:  # decord's DECORDError is not a RuntimeError
        if decoder == "decord":
            raise DecodeError(f"decord cannot decode: {_one_line(exc)}") from exc
        note = f"{decoder} failed ({_one_line(exc)}); decoded with PyAV"
    video = _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best, guess)
    video.note = note
    return video


def expected_frames(container, stream) -> int | None:
    if container.duration and stream.average_rate:
        return round(container.duration / 1e6 * float(stream.average_rate))
    return None


class _ProbeMismatch(Exception):
    pass


def _decode_decord(path, pick, short_side, small_size, interpolation) -> DecodedVideo:
    import decord  # optional: PyAV covers its absence

    width, height, first, fmt, expected = _pyav_first_frame(path, short_side, interpolation)
    if fmt in SEQUENTIAL_FORMATS:
        raise _ProbeMismatch(f"container {fmt!r} has no seek index; decoded with PyAV")
    out_w, out_h = resize_to_short_side(width, height, short_side)
    vr = decord.VideoReader(path, width=out_w, height=out_h, num_threads=1)
    n = len(vr)
    if n < 1:
        raise DecodeError("the video has no frames")
    _check_same(vr[0].asnumpy(), first, "decord's frame 0 differs from PyAV's")
    small = None
    if small_size is not None:
        sr = decord.VideoReader(path, width=small_size[0], height=small_size[1], num_threads=1)
        small = sr.get_batch(list(range(n))).asnumpy()  # sequential: the reference
    fps = float(vr.get_avg_fps())
    stamps = _clean_timestamps(vr.get_frame_timestamp(list(range(n)))[:, 0], fps)
    indices = np.asarray(pick(n, None if small is None else luv_scores(small), stamps), dtype=np.int64)
    if small is not None:  # random access must land where sequential decoding did
        _check_same(sr.get_batch(indices.tolist()).asnumpy(), small[indices],
                    "decord's seeks disagree with its sequential decode")
    frames = vr.get_batch(indices.tolist()).asnumpy()
    return DecodedVideo(frames, indices, stamps[indices], n, fps, width, height, "decord",
                        expected_frames=expected)


def _decode_torchcodec(path, pick, short_side, small_size, interpolation) -> DecodedVideo:
    """torchcodec (FFmpeg's libraries, exact seek mode) behind the same checks as decord: PyAV's
    first frame must match, containers without a seek index go to PyAV (on the real MPEG-2 clip
    torchcodec's exact seeks land 2-12 frames late and sequential reading stops early), and with
    key-frame scoring its random access must land where its sequential decode did. Frames come out
    at full size and are scaled with PyAV's swscale (the interpolation the store records:
    torchcodec's own resize is bilinear only); the LUV pass uses its bilinear resize, as the other
    decoders do. The ``fps`` policy sees index / fps (constant frame rate) as frame times."""
    try:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or FFmpeg's libraries missing
        raise _ProbeMismatch(f"torchcodec unavailable ({_one_line(exc)}); decoded with PyAV") from exc
    width, height, first, fmt, expected = _pyav_first_frame(path, short_side, interpolation)
    if fmt in SEQUENTIAL_FORMATS:
        raise _ProbeMismatch(f"container {fmt!r} has no seek index; decoded with PyAV")
    dec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1)
    n, fps = int(dec.metadata.num_frames or 0), float(dec.metadata.average_fps or 0) or 25.0
    if n < 1:
        raise DecodeError("the video has no frames")
    out_w, out_h = resize_to_short_side(width, height, short_side)

    def at(indices) -> tuple[np.ndarray, np.ndarray]:
        batch = dec.get_frames_at([int(i) for i in indices])
        rgb = batch.data.numpy()
        if (out_w, out_h) != (width, height):
            import av

            rgb = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").to_ndarray(
                format="rgb24", width=out_w, height=out_h, interpolation=interpolation.upper()) for f in rgb])
        return rgb, batch.pts_seconds.numpy()

    _check_same(at([0])[0][0], first, "torchcodec's frame 0 differs from PyAV's")
    small = None
    if small_size is not None:
        sdec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1,
                            transforms=[Resize((small_size[1], small_size[0]))])
        small = sdec.get_frames_in_range(0, n).data.numpy()  # sequential: the reference
        if len(small) != n:
            raise _ProbeMismatch(f"torchcodec read {len(small)} of {n} frames in order; decoded with PyAV")
    stamps = np.arange(n, dtype=np.float64) / fps
    indices = np.asarray(pick(n, None if small is None else luv_scores(small), stamps), dtype=np.int64)
    if small is not None:  # random access must land where sequential decoding did
        _check_same(sdec.get_frames_at(indices.tolist()).data.numpy(), small[indices],
                    "torchcodec's seeks disagree with its sequential decode")
    frames, pts = at(indices)
    start = float(dec.metadata.begin_stream_seconds or 0.0)
    return DecodedVideo(frames, indices, np.maximum(pts - start, 0.0), n, fps, width, height, "torchcodec",
                        expected_frames=expected)


def _check_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
    if diff > PROBE_TOLERANCE:
        raise _ProbeMismatch(f"{what} (mean abs diff {diff:.1f}); decoded with PyAV")


def _clean_timestamps(raw: np.ndarray, fps: float) -> np.ndarray:
    """Seconds from the first frame; index / fps when the container's stamps are unusable."""
    raw = np.asarray(raw, dtype=np.float64)
    if len(raw) and np.all(np.isfinite(raw)) and np.all(np.diff(raw) >= 0) and raw[0] >= 0:
        return raw - raw[0]
    return np.arange(len(raw), dtype=np.float64) / (fps or 1.0)


def open_pyav(path):
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.* (InvalidDataError, ...) and OSError
        raise DecodeError(f"cannot open as video: {_one_line(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream in file")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # one decoding thread per frame: leave the cores to the model
    return container, stream


def _pyav_first_frame(path, short_side, interpolation):
    container, stream = open_pyav(path)
    try:
        for frame in container.decode(stream):
            w, h = resize_to_short_side(frame.width, frame.height, short_side)
            rgb = _to_rgb(frame, w, h, interpolation)
            return frame.width, frame.height, rgb, container.format.name, expected_frames(container, stream)
    except Exception as exc:
        raise DecodeError(f"cannot decode: {_one_line(exc)}") from exc
    finally:
        container.close()
    raise DecodeError("the video has no frames")


def _to_rgb(frame, width, height, interpolation):
    return frame.to_ndarray(format="rgb24", width=width, height=height,
                            interpolation=interpolation.upper())


def _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best=0, guess=None) -> DecodedVideo:
    """One in-order pass: score every frame (when scoring), keep the ``keep_best`` best-scoring
    frames (decoded, unscaled) and scale the guessed picks as they go by; then ``pick`` and scale
    the kept key frames. Frames the pick wants that were not kept come from a second pass."""
    from av.video.reformatter import VideoReformatter

    container, stream = open_pyav(path)
    to_small, to_out = VideoReformatter(), VideoReformatter()  # one scaler context each, reused per frame
    times, scores, size, out_size = [], [], None, None
    scorer, best, done = (LuvScorer() if small_size is not None else None), BestFrames(keep_best), {}
    try:
        expected = expected_frames(container, stream)
        count, rate = stream.frames or expected, stream.average_rate
        wanted = set()
        if guess is not None and count:
            wanted = set(np.asarray(guess(count, np.arange(count) / float(rate or 25)), dtype=np.int64).tolist())
        for i, frame in enumerate(container.decode(stream)):
            if size is None:
                size = (frame.width, frame.height)
                out_size = resize_to_short_side(size[0], size[1], short_side)
            times.append(frame.time)
            if i in wanted:
                done[i] = _scaled(to_out, frame, out_size, interpolation)
            if scorer is not None:
                if small_size == "full":
                    rgb = to_small.reformat(frame, format="rgb24").to_ndarray()
                else:
                    rgb = _scaled(to_small, frame, small_size, "bilinear")
                score = scorer(rgb)
                scores.append(score)
                if i not in done:
                    best.offer(i, score, frame)
    except Exception as exc:
        raise DecodeError(f"cannot decode: {_one_line(exc)}") from exc
    finally:
        container.close()
    n = len(times)
    if n == 0:
        raise DecodeError("the video has no frames")
    raw = np.array([np.nan if t is None else t for t in times])
    fps = float(rate) if rate else (n - 1) / max(raw[-1] - raw[0], 1e-9)
    stamps = _clean_timestamps(raw, fps)
    indices = np.asarray(pick(n, np.array(scores, np.float32) if scorer is not None else None, stamps), dtype=np.int64)
    kept = best.kept()
    need = set(indices.tolist())
    for i in need & kept.keys():
        done[i] = _scaled(to_out, kept[i], out_size, interpolation)
    missing = np.array(sorted(need - done.keys()), dtype=np.int64)
    if len(missing):
        done.update(zip(missing.tolist(), _pyav_frames_at(path, missing, *out_size, interpolation)))
    frames = np.stack([done[i] for i in indices.tolist()])
    return DecodedVideo(frames, indices, stamps[indices], n, fps, size[0], size[1], "pyav",
                        expected_frames=expected, second_pass=bool(len(missing)))


def _scaled(reformatter, frame, size, interpolation) -> np.ndarray:
    return reformatter.reformat(frame, format="rgb24", width=size[0], height=size[1],
                                interpolation=interpolation.upper()).to_ndarray()


def _pyav_frames_at(path, indices, width, height, interpolation) -> np.ndarray:
    """The frames at sorted ``indices``, decoding in order up to the last one."""
    from av.video.reformatter import VideoReformatter

    wanted = set(indices.tolist())
    last = int(indices.max())
    out, scaler = {}, VideoReformatter()
    container, stream = open_pyav(path)
    try:
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = _scaled(scaler, frame, (width, height), interpolation)
            if i >= last:
                break
    except Exception as exc:
        raise DecodeError(f"cannot decode: {_one_line(exc)}") from exc
    finally:
        container.close()
    if len(out) != len(wanted):
        raise DecodeError("the second decoding pass returned fewer frames than the first")
    return np.stack([out[i] for i in indices.tolist()])
