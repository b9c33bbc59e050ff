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

Every decoder shows what ``ffmpeg`` shows (docs/decoding.md lists the cases and their tests): the
video stream the command line picks (``best_video_stream``, or ``--stream N``), the display matrix
applied before the resize (``Orientation``, a port of FFmpeg's autorotation), 10-bit and
coded-size frames converted through FFmpeg's ``scale`` filter (``FFmpegScaler``), each frame's pts
(``DecodedVideo.start`` + ``timestamps``). The random-access decoders must also report the frame
count FFmpeg presents and return PyAV's frames at a few of the picks, or PyAV decodes the video.

Long module: three decoders behind one interface, the cross-checks between them and FFmpeg's
display rules they all follow; the checks must sit beside the decoders they check.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from featcache.errors import OptionError
from featcache.spec.pts import encode_pts, rational_run
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
# uint8 (K, H, W, 3) frames as shown -> what is kept of them (video encoders: resized and cropped),
# applied as frames are decoded so that a long video's frames never exist at source size all at once
Post = Callable[[np.ndarray], np.ndarray]
CHUNK = 16  # frames a random-access decoder returns (and ``post`` transforms) at a time
# decord's VideoReader holds on to memory for as long as it lives, growing with the frames it has
# decoded and the time spent between reads (8 s of 720p read 16 frames at a time with a resize in
# between: 552 MB, 16 s: 928 MB; a reader left idle 0.1 s per chunk grew alike; all of it freed when
# the reader is released): a fresh reader every this many chunks, whose first read seeks to the key
# frame before the chunk and decodes forward (the same frames; each opening indexes the container)
RELEASE_CHUNKS = 4


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
    stream: int = 0  # the container's stream index decoded (FFmpeg's default, or --stream)
    start: float = 0.0  # the first frame's pts in seconds: timestamps + start = the player's clock
    orientation: "Orientation | None" = None  # the display matrix's rotation/flips, applied to `frames`
    damaged: int = 0  # packets the decoder refused and skipped (damaged bytes)
    clock: dict | None = None  # the stream's clock (stream_clock): what SlowFast's decoders seek by

    @property
    def pts(self) -> np.ndarray:
        """(K,) each kept frame's presentation time in seconds as the player shows it."""
        return self.timestamps + self.start

    def source_fields(self) -> dict:
        """The record's facts about the stream: coded and displayed size, rotation, stream, start."""
        fields = display_fields(self.width, self.height, self.stream, self.start, self.orientation, self.damaged)
        return {**fields, "clock": self.clock} if self.clock else fields

    @property
    def looks_truncated(self) -> bool:
        """Far fewer frames decoded than the container's duration promises."""
        return bool(self.expected_frames) and self.num_frames < 0.9 * self.expected_frames - 1


def display_fields(width: int, height: int, stream: int = 0, start: float = 0.0,
                   orientation: "Orientation | None" = None, damaged: int = 0) -> dict:
    """The ``source`` record keys of what FFmpeg shows (``estimate`` replays them from a header)."""
    o = orientation or Orientation()
    dw, dh = o.displayed(width, height)
    return {"stream": stream, "start_seconds": start, "rotation": o.rotation, "transform": o.transform,
            "display_width": dw, "display_height": dh, "damaged_packets": damaged}


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


def header_rate(path: str, stream: int | None = None) -> float | None:
    """The video stream's average frame rate from the container header (None when it gives
    none): the ``fps`` torchvision resamples clips with (featcache.video.clip_prepare)."""
    import av

    check_file(path)
    try:
        with av.open(path) as container:
            vs = best_video_stream(container, stream)
            rate = vs.average_rate or vs.guessed_rate
    except DecodeError:
        raise
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
    stream: int | None = None,
    post: Post | None = None,
) -> DecodedVideo:
    """Decode the frames ``pick(num_frames, scores, timestamps)`` chooses.

    ``scores`` is every frame's LUV key-frame score (``select.LuvScorer``) computed at
    ``small_size`` ((w, h), or ``"full"``: the source size) when given, else None; ``timestamps``
    is every frame's time in seconds from the first. ``keep_best`` (the largest key-frame count)
    and ``guess`` tell the in-order decoder which frames to keep while streaming; a wrong guess
    costs time (a second pass), never correctness. ``stream``: the container's video stream index
    (None: the one ``ffmpeg`` shows by default). Frames come out as FFmpeg displays them (display
    matrix applied) at the short side of the displayed size, passed through ``post`` frame by
    frame (random-access decoders: CHUNK frames at a time) when given. Raises DecodeError with a one-line reason when
    no decoder can read the file.
    """
    if decoder not in DECODERS:
        raise OptionError("decoder", f"unknown decoder {decoder!r}; expected one of {DECODERS}")
    if small_size == "full" and decoder in ("decord", "torchcodec"):
        raise ValueError(f"--luv-size full is scored in the in-order pass; use --decoder auto or pyav, not {decoder}")
    check_file(path)
    if decoder in ("auto", "pyav"):
        return _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best, guess, stream, post)
    try:
        if decoder == "torchcodec":
            return _decode_torchcodec(path, pick, short_side, small_size, interpolation, stream, post)
        return _decode_decord(path, pick, short_side, small_size, interpolation, stream, post)
    except DecodeError:
        raise
    except _ProbeMismatch as exc:
        note = str(exc)
    except Exception as exc:  # decord's DECORDError is not a RuntimeError
        if decoder == "decord":
            raise DecodeError(f"decord cannot decode: {_one_line(exc)}") from exc
        note = f"{decoder} failed ({_one_line(exc)}); decoded with PyAV"
    video = _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best, guess, stream, post)
    video.note = "; ".join(x for x in (note, video.note) if x)
    return video


def expected_frames(container, stream) -> int | None:
    """The frames the container promises. AVI: the header's frame count (``dwLength``; its
    duration is estimated from the bytes present, so half an AVI "lasts" half as long and a cut
    file looked whole: vtest.avi cut to 4 MB claimed 391 of 795). Others: duration x rate (an
    MP4's sample count includes packets an edit list discards)."""
    if container.format.name == "avi" and stream.frames:
        return int(stream.frames)
    if container.duration and stream.average_rate:
        return round(container.duration / 1e6 * float(stream.average_rate))
    return None


def _fraction(rate) -> str | None:
    return f"{rate.numerator}/{rate.denominator}" if rate else None


def stream_header(stream) -> dict:
    """The video stream's header as SlowFast's decoding backends read it (featcache.train.clips):
    the time base, the header's ``duration`` (time-base units, None when absent) and ``frames``
    (0 when absent), the ``average_rate`` (PyAV's, SlowFast's pyav backend) and the
    ``guessed_rate`` (``av_guess_frame_rate``: torchvision's video_reader fps, stream.cpp)."""
    return {"time_base": _fraction(stream.time_base), "duration": stream.duration,
            "frames": int(stream.frames or 0), "average_rate": _fraction(stream.average_rate),
            "guessed_rate": _fraction(stream.guessed_rate)}


def _frame_step(header: dict) -> Fraction | None:
    """Time-base units per frame at the header's rate (None without a rate or time base)."""
    rate, tb = header.get("guessed_rate") or header.get("average_rate"), header.get("time_base")
    return 1 / (Fraction(rate) * Fraction(tb)) if rate and tb else None


def stream_clock(header: dict, pts) -> dict:
    """:func:`stream_header` with every decoded frame's pts (display order), stored exactly and
    compactly (featcache.spec.pts: one run for a constant rate)."""
    return {**header, "pts": encode_pts(list(pts), _frame_step(header))}


def constant_rate_clock(stream, n: int) -> dict:
    """The clock a decode of ``n`` frames at the stream's constant rate records (``estimate``
    replays it from the header): pts from the stream's start time, one frame step apart."""
    header = stream_header(stream)
    step = _frame_step(header) or Fraction(1)
    return stream_clock(header, rational_run(int(stream.start_time or 0), step, n))


def decoded_frames(container, stream, damaged: list):
    """The stream's frames in order, decoding packet by packet: a packet FFmpeg's decoder refuses
    (damaged bytes) is skipped and counted in ``damaged``, as the ``ffmpeg`` command line goes
    on past it ("Error while decoding stream"), instead of ending the whole video."""
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            damaged.append(packet.pts)
            continue
        yield from frames


class _ProbeMismatch(Exception):
    pass


def _decode_decord(path, pick, short_side, small_size, interpolation, stream=None, post=None) -> DecodedVideo:
    """decord 0.6 applies the display rotation itself and takes the displayed size; a matrix it
    does not apply (flips, 180) shows as frame 0 differing from PyAV's, which hands the video to
    PyAV."""
    import decord  # optional: PyAV covers its absence

    probe = _pyav_probe(path, short_side, interpolation, stream)
    _random_access_allowed(probe, "decord")
    out_w, out_h = probe.out_size
    vr = decord.VideoReader(path, width=out_w, height=out_h, num_threads=1)
    n = len(vr)
    if n < 1:
        raise DecodeError("the video has no frames")
    _check_count(n, probe, "decord")
    _check_same(vr[0].asnumpy(), probe.rgb, "decord's frame 0 differs from PyAV's")
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
    def fetch(pos) -> np.ndarray:
        return vr.get_batch([int(indices[i]) for i in pos]).asnumpy()

    _check_picked(path, probe, indices, fetch, interpolation, "decord")
    out = []
    for k, pos in enumerate(_chunks(len(indices))):
        if k and k % RELEASE_CHUNKS == 0:  # a fresh reader: decord's memory stops growing with the video
            del vr
            vr = decord.VideoReader(path, width=out_w, height=out_h, num_threads=1)
        out.append((post or _same)(fetch(pos)))
    frames = np.concatenate(out)
    return DecodedVideo(frames, indices, stamps[indices], n, fps, probe.width, probe.height, "decord",
                        expected_frames=probe.expected, stream=probe.stream, start=probe.start,
                        orientation=probe.orientation, clock=stream_clock(probe.header, probe.pts))


def _decode_torchcodec(path, pick, short_side, small_size, interpolation, stream=None, post=None) -> DecodedVideo:
    """torchcodec (FFmpeg's libraries, exact seek mode) behind the same checks as decord: PyAV's
    first frame must match, containers without a seek index go to PyAV (on the real MPEG-2 clip
    torchcodec's exact seeks land 2-12 frames late and sequential reading stops early), and with
    key-frame scoring its random access must land where its sequential decode did. Frames come out
    at full size and are scaled with PyAV's swscale (the interpolation the store records:
    torchcodec's own resize is bilinear only); the LUV pass uses its bilinear resize, as the other
    decoders do. The ``fps`` policy sees index / fps (constant frame rate) as frame times.
    torchcodec 0.17 applies the display rotation itself (``metadata.rotation``); older versions
    get featcache's."""
    try:
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or FFmpeg's libraries missing
        raise _ProbeMismatch(f"torchcodec unavailable ({_one_line(exc)}); decoded with PyAV") from exc
    probe = _pyav_probe(path, short_side, interpolation, stream)
    _random_access_allowed(probe, "torchcodec", multi_stream_ok=True)
    dec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1,
                       stream_index=probe.stream)
    rotates = getattr(dec.metadata, "rotation", None) is not None
    o = Orientation() if rotates else probe.orientation
    n, fps = int(dec.metadata.num_frames or 0), float(dec.metadata.average_fps or 0) or 25.0
    if n < 1:
        raise DecodeError("the video has no frames")
    _check_count(n, probe, "torchcodec")
    out_w, out_h = probe.out_size

    def at(indices) -> tuple[np.ndarray, np.ndarray]:
        batch = dec.get_frames_at([int(i) for i in indices])
        rgb = o.apply(batch.data.numpy())
        if (out_w, out_h) != (rgb.shape[2], rgb.shape[1]):
            import av

            rgb = np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").to_ndarray(
                format="rgb24", width=out_w, height=out_h, interpolation=interpolation.upper()) for f in rgb])
        return rgb, batch.pts_seconds.numpy()

    _check_same(at([0])[0][0], probe.rgb, "torchcodec's frame 0 differs from PyAV's")
    small = None
    if small_size is not None:
        sw, sh = small_size if rotates else o.displayed(*small_size)
        sdec = VideoDecoder(path, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=1,
                            stream_index=probe.stream, transforms=[Resize((sh, sw))])
        small = o.apply(sdec.get_frames_in_range(0, n).data.numpy())  # sequential: the reference
        if len(small) != n:
            raise _ProbeMismatch(f"torchcodec read {len(small)} of {n} frames in order; decoded with PyAV")
    stamps = np.arange(n, dtype=np.float64) / fps
    indices = np.asarray(pick(n, None if small is None else luv_scores(small), stamps), dtype=np.int64)
    if small is not None:  # random access must land where sequential decoding did
        _check_same(o.apply(sdec.get_frames_at(indices.tolist()).data.numpy()), small[indices],
                    "torchcodec's seeks disagree with its sequential decode")
    _check_picked(path, probe, indices, lambda pos: at(indices[pos])[0], interpolation, "torchcodec")
    got = [at(indices[pos]) for pos in _chunks(len(indices))]
    frames = np.concatenate([(post or _same)(rgb) for rgb, _ in got])
    pts = np.concatenate([p for _, p in got])
    return DecodedVideo(frames, indices, np.maximum(pts - probe.start, 0.0), n, fps, probe.width, probe.height,
                        "torchcodec", expected_frames=probe.expected, stream=probe.stream, start=probe.start,
                        orientation=probe.orientation, clock=stream_clock(probe.header, probe.pts))


# HEVC with B-frames: decord returned another frame than FFmpeg for frame 3 of torchcodec's
# h265_video.mp4 (max diff 255) while frame 0 matched, so the random-access decoders are not
# trusted there at all (issue 31).
ROUTED_CODECS = {"hevc"}
PICKED_CHECKS = 4  # picked frames compared with PyAV's, spread over the picks


@dataclass
class _Probe:
    """PyAV's view of a file, against which the random-access decoders are checked."""

    width: int  # coded size
    height: int
    rgb: np.ndarray  # frame 0 as displayed, at out_size
    out_size: tuple[int, int]  # displayed size scaled to the short side
    fmt: str
    expected: int | None
    stream: int
    start: float
    orientation: "Orientation"
    video_streams: int
    codec: str
    b_frames: bool
    pts: np.ndarray  # presentation-order pts (stream time base) of the packets FFmpeg presents
    time_base: float
    pix_fmt: str = ""
    header: dict | None = None  # stream_header: with pts, the decoded video's clock


def _random_access_allowed(probe: _Probe, name: str, multi_stream_ok: bool = False) -> None:
    if probe.fmt in SEQUENTIAL_FORMATS:
        raise _ProbeMismatch(f"container {probe.fmt!r} has no seek index; decoded with PyAV")
    if probe.video_streams > 1 and not multi_stream_ok:
        raise _ProbeMismatch(f"{probe.video_streams} video streams and {name} cannot be told which to read; "
                             f"stream {probe.stream} decoded with PyAV")
    odd = probe.width % 2 or probe.height % 2
    if name == "decord" and (probe.pix_fmt not in EIGHT_BIT or (odd and "444" not in probe.pix_fmt)):
        # decord converts these with its own swscale settings: measured on torchcodec's cases, mean
        # 1-3.5/255 (max 150) off FFmpeg's rgb24 on 10-bit and odd-sized 4:2:0 sources
        raise _ProbeMismatch(f"{probe.width}x{probe.height} {probe.pix_fmt}, which decord converts unlike FFmpeg; "
                             f"decoded with PyAV")
    if probe.codec in ROUTED_CODECS and probe.b_frames:
        raise _ProbeMismatch(f"{probe.codec} with B-frames, where {name}'s random access has returned wrong "
                             f"frames; decoded with PyAV")


def _check_count(n: int, probe: _Probe, name: str) -> None:
    """The random-access decoder's frame count must be the number of packets FFmpeg presents
    (discarded packets, e.g. an edit list's skipped first GOP, not counted)."""
    if len(probe.pts) and n != len(probe.pts):
        raise _ProbeMismatch(f"{name} counts {n} frames where FFmpeg presents {len(probe.pts)}; decoded with PyAV")


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _chunks(n: int) -> list[np.ndarray]:
    return [np.arange(s, min(n, s + CHUNK)) for s in range(0, n, CHUNK)]


def _check_picked(path, probe: _Probe, indices: np.ndarray, fetch, interpolation: str, name: str) -> None:
    """Up to PICKED_CHECKS of the picked frames, spread over the picks, must equal PyAV's frames
    with the same pts (PyAV seeks to the key frame before each and decodes forward)."""
    if not len(probe.pts) or not len(indices):
        return
    at = np.unique(np.linspace(0, len(indices) - 1, min(PICKED_CHECKS, len(indices))).round().astype(int))
    want = {int(probe.pts[indices[i]]): i for i in at}
    got = _pyav_frames_by_pts(path, probe, sorted(want), interpolation)
    frames = dict(zip(at.tolist(), fetch(at)))
    for p, i in want.items():
        if p not in got:
            raise _ProbeMismatch(f"PyAV found no frame at pts {p} to check {name}'s frame {indices[i]}; decoded with PyAV")
        _check_same(frames[i], got[p], f"{name}'s frame {indices[i]} differs from PyAV's")


def _pyav_frames_by_pts(path, probe: _Probe, targets: list[int], interpolation: str) -> dict:
    out, scaler = {}, FFmpegScaler()
    container, stream = open_pyav(path, probe.stream)
    try:
        for target in targets:
            if target in out:
                continue
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts in targets and frame.pts not in out:
                    out[frame.pts] = _shown(scaler, frame, probe.out_size, interpolation, probe.orientation)
                if frame.pts is not None and frame.pts >= target:
                    break
    except Exception as exc:
        raise _ProbeMismatch(f"PyAV could not seek to check the picked frames ({_one_line(exc)}); "
                             f"decoded with PyAV") from exc
    finally:
        container.close()
    return out


def _check_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() if a.shape == b.shape else np.inf
    if diff > PROBE_TOLERANCE:
        raise _ProbeMismatch(f"{what} (mean abs diff {diff:.1f}); decoded with PyAV")


def _clean_timestamps(raw: np.ndarray, fps: float) -> np.ndarray:
    """Seconds from the first frame; index / fps when the container's stamps are unusable."""
    raw = np.asarray(raw, dtype=np.float64)
    if len(raw) and np.all(np.isfinite(raw)) and np.all(np.diff(raw) >= 0) and raw[0] >= 0:
        return raw - raw[0]
    return np.arange(len(raw), dtype=np.float64) / (fps or 1.0)


def open_pyav(path, stream: int | None = None):
    """(container, video stream): FFmpeg's default video stream, or ``stream`` (``--stream N``)."""
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.* (InvalidDataError, ...) and OSError
        raise DecodeError(f"cannot open as video: {_one_line(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream in file")
    try:
        chosen = best_video_stream(container, stream)
    except DecodeError:
        container.close()
        raise
    chosen.thread_type = "SLICE"  # one decoding thread per frame: leave the cores to the model
    return container, chosen


def _presented_pts(container, stream) -> np.ndarray:
    """Sorted pts of the packets FFmpeg presents (demuxed, not decoded: cheap)."""
    pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None and not p.is_discard]
    return np.sort(np.asarray(pts, dtype=np.int64))


def _pyav_probe(path, short_side, interpolation, stream=None) -> _Probe:
    container, vs = open_pyav(path, stream)
    try:
        for frame in container.decode(vs):
            o = frame_orientation(frame)
            out = resize_to_short_side(*o.displayed(frame.width, frame.height), short_side)
            rgb = _shown(None, frame, out, interpolation, o)
            ctx = vs.codec_context
            container.seek(0)
            pts = _presented_pts(container, vs)
            return _Probe(frame.width, frame.height, rgb, out, container.format.name, expected_frames(container, vs),
                          vs.index, float(frame.time or 0.0), o, len(container.streams.video), ctx.name,
                          bool(ctx.has_b_frames), pts, float(vs.time_base or 0), frame.format.name,
                          stream_header(vs))
    except Exception as exc:
        raise DecodeError(f"cannot decode: {_one_line(exc)}") from exc
    finally:
        container.close()
    raise DecodeError("the video has no frames")


def _shown(reformatter, frame, size, interpolation, o) -> np.ndarray:
    """A decoded frame as FFmpeg shows it at displayed ``size`` (w, h): scaled in coded
    orientation (swscale), then rotated/flipped (exact on pixels)."""
    return o.apply(_scaled(reformatter or FFmpegScaler(), frame, o.displayed(*size), interpolation))


def _decode_pyav(path, pick, short_side, small_size, interpolation, keep_best=0, guess=None,
                 stream=None, post=None) -> DecodedVideo:
    """One in-order pass: score every frame (when scoring), keep the ``keep_best`` best-scoring
    frames (decoded, unscaled) and scale the guessed picks as they go by; then ``pick`` and scale
    the kept key frames. Frames the pick wants that were not kept come from a second pass."""
    container, vs = open_pyav(path, stream)
    index = vs.index  # read before closing: a closed container's streams are gone
    to_small, to_out = FFmpegScaler(), FFmpegScaler()  # one scaler context each, reused per frame
    times, pts, scores, size, out_size, o, damaged = [], [], [], None, None, Orientation(), []
    keep = (lambda rgb: post(rgb[None])[0]) if post else _same  # noqa: E731
    scorer, best, done = (LuvScorer() if small_size is not None else None), BestFrames(keep_best), {}
    try:
        expected, header = expected_frames(container, vs), stream_header(vs)
        count, rate = vs.frames or expected, vs.average_rate
        wanted = set()
        if guess is not None and count:
            wanted = set(np.asarray(guess(count, np.arange(count) / float(rate or 25)), dtype=np.int64).tolist())
        for i, frame in enumerate(decoded_frames(container, vs, damaged)):
            if size is None:
                size, o = (frame.width, frame.height), frame_orientation(frame)
                out_size = resize_to_short_side(*o.displayed(*size), short_side)
            times.append(frame.time)
            pts.append(frame.pts)
            if i in wanted:
                done[i] = keep(_shown(to_out, frame, out_size, interpolation, o))
            if scorer is not None:
                if small_size == "full":  # LUV scores are means over pixels: orientation cannot change them
                    rgb = to_small.swscale.reformat(frame, format="rgb24").to_ndarray()
                else:
                    rgb = _scaled(to_small, frame, o.displayed(*small_size), "bilinear")
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
    start = float(raw[0]) if np.isfinite(raw[0]) else 0.0  # the first frame's pts: the player's clock
    indices = np.asarray(pick(n, np.array(scores, np.float32) if scorer is not None else None, stamps), dtype=np.int64)
    kept = best.kept()
    need = set(indices.tolist())
    for i in need & kept.keys():
        done[i] = keep(_shown(to_out, kept[i], out_size, interpolation, o))
    missing = np.array(sorted(need - done.keys()), dtype=np.int64)
    if len(missing):
        done.update(zip(missing.tolist(), _pyav_frames_at(path, missing, out_size, interpolation, index, o, keep)))
    frames = np.stack([done[i] for i in indices.tolist()])
    note = f"decoded past {len(damaged)} damaged packet(s) the decoder refused" if damaged else ""
    return DecodedVideo(frames, indices, stamps[indices], n, fps, size[0], size[1], "pyav", note=note,
                        expected_frames=expected, second_pass=bool(len(missing)), stream=index, start=start,
                        orientation=o, damaged=len(damaged), clock=stream_clock(header, pts))


def _scaled(scaler, frame, size, interpolation) -> np.ndarray:
    return scaler.reformat(frame, size, interpolation)


SWS_FLAGS = {"point": "neighbor", "nearest": "neighbor"}  # PyAV's interpolation names -> swscale's


EIGHT_BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "gray", "rgb24", "bgr24"}


class FFmpegScaler:
    """Decoded frame -> rgb24 at (w, h), as the ``ffmpeg`` command line converts.

    ``-vf format=rgb24`` converts through FFmpeg's ``scale`` filter (``flags=bicubic``, the
    command line's default ``sws_flags``). PyAV's ``VideoFrame.reformat`` calls swscale without
    vf_scale's settings: the same bytes on 8-bit even-sized 4:2:0, but not on 10-bit sources
    (torchcodec's h264_10bits.mp4: mean 2.3/255, max 99) nor on odd-sized MPEG-2 (mean 3.4). So
    frames at their coded size (the references, video encoders' native frames) and every
    high-bit-depth frame go through a ``scale,format=rgb24`` filter graph (exact on all shared
    cases); 8-bit frames resized to the model's size keep swscale's ``reformat`` with the store's
    interpolation, as before. One graph per input format and size, reused frame after frame."""

    def __init__(self):
        from av.video.reformatter import VideoReformatter

        self.graphs: dict = {}
        self.swscale = VideoReformatter()

    def reformat(self, frame, size, interpolation: str) -> np.ndarray:
        w, h = size
        native = (w, h) == (frame.width, frame.height)
        if not native and frame.format.name in EIGHT_BIT:
            return self.swscale.reformat(frame, format="rgb24", width=w, height=h,
                                         interpolation=interpolation.upper()).to_ndarray()
        flags = "bicubic" if native else SWS_FLAGS.get(interpolation.lower(), interpolation.lower())
        key = (frame.width, frame.height, frame.format.name, w, h, flags)
        graph = self.graphs.get(key) or self._graph(frame, w, h, flags)
        self.graphs[key] = graph
        graph.push(frame)
        return graph.pull().to_ndarray()

    @staticmethod
    def _graph(frame, w, h, flags):
        import av

        graph = av.filter.Graph()
        chain = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                                  time_base=frame.time_base or Fraction(1, 25)),
                 graph.add("scale", f"w={w}:h={h}:flags={flags}"), graph.add("format", "rgb24"),
                 graph.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        return graph


def _pyav_frames_at(path, indices, out_size, interpolation, stream, o, keep=_same) -> np.ndarray:
    """The frames at sorted ``indices``, decoding in order up to the last one."""
    wanted = set(indices.tolist())
    last = int(indices.max())
    out, scaler = {}, FFmpegScaler()
    container, vs = open_pyav(path, stream)
    try:
        for i, frame in enumerate(decoded_frames(container, vs, [])):
            if i in wanted:
                out[i] = keep(_shown(scaler, frame, out_size, interpolation, o))
            if i >= last:
                break
    except Exception as exc:
        raise DecodeError(f"cannot decode: {_one_line(exc)}") from exc
    finally:
        container.close()
    if len(out) != len(wanted):
        raise DecodeError("the second decoding pass returned fewer frames than the first")
    return np.stack([out[i] for i in indices.tolist()])


# ---------------------------------------------------------------- what FFmpeg shows: stream and orientation
def best_video_stream(container, wanted: int | None = None):
    """The video stream the ``ffmpeg`` command line decodes by default, or stream ``wanted``
    (``--stream N``, the container's stream index as ``ffmpeg -map 0:N`` counts it). FFmpeg 5.1's
    ``open_output_file`` (fftools/ffmpeg_opt.c, "video: highest resolution") scores each video
    stream ``width * height + 5000000 * default-disposition``, skips attached pictures (cover art)
    and keeps the first of equal scores; torchcodec's ``av_find_best_stream`` agrees on the shared
    two-stream case (nasa_13013.mp4: stream 3, 480x270)."""
    videos = list(container.streams.video)
    if wanted is not None:
        chosen = [s for s in videos if s.index == wanted]
        if not chosen:
            raise DecodeError(f"--stream {wanted}: no video stream {wanted} in file "
                              f"(video streams: {[s.index for s in videos]})")
        return chosen[0]
    best, best_score = None, -1
    for s in videos:
        disposition = int(s.disposition)
        if disposition & 0x400:  # AV_DISPOSITION_ATTACHED_PIC
            continue
        ctx = s.codec_context
        score = (ctx.width or 0) * (ctx.height or 0) + 5000000 * bool(disposition & 0x1)  # AV_DISPOSITION_DEFAULT
        if score > best_score:
            best, best_score = s, score
    if best is None:
        raise DecodeError("no video stream in file (only attached pictures)")
    return best


TRANSFORMS = ("", "clock", "cclock", "clock_flip", "cclock_flip", "hflip", "vflip", "hflip,vflip")


@dataclass(frozen=True)
class Orientation:
    """What FFmpeg does to show a frame upright: ``rotation`` (the display matrix's angle,
    counterclockwise degrees modulo 360) and ``transform``, the filters ``ffmpeg`` inserts (its ``transpose`` option
    names, ``hflip``, ``vflip``; "" for none)."""

    rotation: int = 0  # counterclockwise degrees, as av_display_rotation_get and torchcodec report it
    transform: str = ""
    note: str = ""

    @property
    def swaps(self) -> bool:
        return self.transform in ("clock", "cclock", "clock_flip", "cclock_flip")

    def displayed(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) as shown from the coded size, or back (a transpose is its own inverse)."""
        return (height, width) if self.swaps else (width, height)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """uint8 frames (..., H, W, 3) in coded orientation -> as displayed."""
        t = self.transform
        if not t:
            return x
        if t == "clock":  # transpose=clock: 90 degrees clockwise
            y = np.rot90(x, -1, axes=(-3, -2))
        elif t == "cclock":
            y = np.rot90(x, 1, axes=(-3, -2))
        elif t == "cclock_flip":  # counterclockwise then vertical flip: the plain transpose
            y = np.swapaxes(x, -3, -2)
        elif t == "clock_flip":
            y = np.rot90(x, -1, axes=(-3, -2))[..., ::-1, :, :]
        else:
            y = x[..., :, ::-1, :] if "hflip" in t else x
            y = y[..., ::-1, :, :] if "vflip" in t else y
        return np.ascontiguousarray(y)


def display_rotation_get(matrix) -> float:
    """libavutil/display.c ``av_display_rotation_get``: the counterclockwise angle of a 3x3
    16.16 fixed-point display matrix (NaN for a degenerate one)."""
    m = [v / 65536.0 for v in matrix[:6]]
    s0, s1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if s0 == 0.0 or s1 == 0.0:
        return math.nan
    return -math.atan2(m[1] / s1, m[0] / s0) * 180.0 / math.pi


def orientation(matrix) -> Orientation:
    """FFmpeg 5.1's autorotation (fftools/ffmpeg_filter.c ``configure_input_video_filter``, with
    ``get_rotation`` of fftools/cmdutils.c) from a display matrix (9 int32, or None)."""
    if matrix is None:
        return Orientation()
    angle = display_rotation_get(matrix)
    if math.isnan(angle):
        return Orientation(note="degenerate display matrix ignored")
    theta = -round(angle)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # clockwise degrees FFmpeg turns the picture by
    if abs(theta - 90) < 1.0:
        return Orientation(270, "cclock_flip" if matrix[3] > 0 else "clock")
    if abs(theta - 180) < 1.0:
        flips = ",".join(f for f, on in (("hflip", matrix[0] < 0), ("vflip", matrix[4] < 0)) if on)
        return Orientation(180, flips)
    if abs(theta - 270) < 1.0:
        return Orientation(90, "clock_flip" if matrix[3] < 0 else "cclock")
    if abs(theta) > 1.0:  # FFmpeg's rotate filter (arbitrary angle, black corners): not reproduced
        return Orientation(int(-theta % 360), "", f"display rotation {theta:g} degrees is not a multiple of 90: not applied")
    return Orientation(0, "vflip" if matrix[4] < 0 else "")


def frame_orientation(frame) -> Orientation:
    """The orientation a decoded PyAV frame's DISPLAYMATRIX side data asks for (FFmpeg attaches
    the stream's matrix to every frame)."""
    for side in frame.side_data:
        if str(side.type).endswith("DISPLAYMATRIX"):
            return orientation(np.frombuffer(bytes(side), dtype="<i4")[:9].tolist())
    return Orientation()
