"""The decoding side of stage 1 for video encoders: decode, cut clips, resize and crop.

``prepare_clips`` is what ``featcache.video.prepare.prepare`` runs when the spec carries a clip spec
(``DecodeSpec.clip``, from ``VideoEncoder.clip_spec``): the frames of every clip the policy picks
(featcache/video/clips.py) are decoded once at their source size, resized and centre-cropped
exactly as the weights' torchvision preset does (``torchvision.transforms.functional.resize`` on
uint8 frames, ``antialias=False``; transforms/_presets.py L115-116), and stacked into clips
``(K, T, S, S, 3)``: one row of the cache per distinct clip. Each frame is resized and cropped as
soon as it is decoded (``decode_video(post=...)``; random-access decoders 16 frames at a time), so
memory holds one source-size frame and the cropped frames, never the whole video at source size
nor a float32 copy of it (a 30 s 720p clip with ``windows:16/16`` asked for 9.9 GB in one call).
transformers' own video processors (``hf:``) run the same way, on one frame (or one chunk) at a
time: their resize and crop work frame by frame, so the frames equal the whole video's in one call.

The record is a frame record whose rows are clips: ``frame_indices`` / ``timestamps`` give each
clip's first frame, ``clips.frame_indices`` / ``clips.timestamps`` every frame of every clip
``(K, T)``, and ``policies`` the policy's clips as positions into the rows (repeats for a short
video's identical clips).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from featcache.data.manifest import VideoItem
from featcache.spec.policy import parse_policies
from featcache.video.clips import policy_clips, unique_clips
from featcache.video.decode import DecodeError, decode_video, header_rate


@dataclass(frozen=True)
class ClipSpec:
    """What cutting, resizing and cropping a video encoder's clips needs (``VideoEncoder.clip_spec``;
    stored as the store's ``frames.clip``, :meth:`to_json`, keys in this order)."""

    policy: str | None  # the clip policy, e.g. clips:8 (None: a bare encoder)
    frames: int  # frames per clip
    rate: float  # sampling rate (frames per second)
    resize_size: list[int]
    crop_size: list[int]
    interpolation: str
    resizer: str = "torchvision"  # or hf: the transformers model's own video processor
    source: str | None = None  # hf: the model whose processor resizes

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, value) -> ClipSpec:
        """``value`` itself, or parsed from its JSON (a store's ``frames.clip``)."""
        return value if isinstance(value, ClipSpec) else cls(**value)


@dataclass
class _Choice:
    """What ``pick`` chose while the video decoded."""

    clips: np.ndarray | None = None  # (K, T) source indices
    short: bool = False  # shorter than one clip
    fps: float | None = None  # the header's frame rate


def crop_resized(frames: np.ndarray, resize_size: list[int], crop_size: list[int], interpolation: str) -> np.ndarray:
    """uint8 (K, H, W, 3) frames at source size -> (K, h, w, 3): torchvision's resize (uint8 in,
    uint8 out, ``antialias=False``) then its centre crop, as the VideoClassification preset."""
    import torch
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (K, 3, H, W)
    x = F.resize(x, list(resize_size), interpolation=InterpolationMode(interpolation), antialias=False)
    x = F.center_crop(x, list(crop_size))
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # (K, h, w, 3)


@functools.lru_cache(maxsize=2)
def _video_processor(source: str):
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return transformers.AutoVideoProcessor.from_pretrained(source)


def processed(frames: np.ndarray, source: str) -> np.ndarray:
    """uint8 (K, H, W, 3) -> (K, h, w, 3): the resize and centre crop of a transformers model's
    own video processor (rescaling and normalisation off: they run with the model)."""
    out = _video_processor(source)([frames], return_tensors="pt", do_rescale=False, do_normalize=False)
    x = out["pixel_values"] if "pixel_values" in out else out["pixel_values_videos"]  # (1, K, 3, h, w) uint8
    return np.ascontiguousarray(x[0].permute(0, 2, 3, 1).numpy())


def prepare_clips(item: VideoItem, spec, prepared_cls, log) -> object:
    """``Prepared`` (``prepared_cls``) with clips (K, T, S, S, 3) uint8 and the clip record; never
    raises for a bad video (``reason`` says why). ``log``: featcache.video.prepare's stderr capture and
    record helpers ``(captured_stderr, with_log, decoder_log)``."""
    captured_stderr, with_log, decoder_log = log
    clip = ClipSpec.of(spec.clip)
    (policy,) = parse_policies(clip.policy)
    record = {"video_id": item.video_id, "path": item.path, "split": item.split,
              "labels": list(item.labels), "extra": item.extra}
    chosen = _Choice()

    def pick(n: int, scores, stamps: np.ndarray) -> np.ndarray:
        fps = (n - 1) / max(float(stamps[-1] - stamps[0]), 1e-9) if n > 1 else 1.0
        fps = chosen.fps or fps
        clips, short = policy_clips(policy, n, fps, stamps, clip.frames, clip.rate)
        if short and spec.short_videos == "fail":
            raise DecodeError(f"video is shorter than one {clip.frames}-frame clip of {policy}")
        chosen.clips, chosen.short = clips, short
        return np.unique(clips)

    def guess(n: int, stamps: np.ndarray) -> np.ndarray:
        """The frames ``pick`` will choose if the header's frame count is right: kept while the
        in-order decode streams by (a wrong guess costs a second pass, never correctness)."""
        return np.unique(policy_clips(policy, n, chosen.fps or 25.0, stamps, clip.frames, clip.rate)[0])

    messages: list[str] = []
    try:
        chosen.fps = header_rate(item.path, spec.stream)
        if clip.resizer == "hf":  # frame by frame as the whole video in one call, bit for bit (tested)
            post = functools.partial(processed, source=clip.source)
        else:
            post = functools.partial(crop_resized, resize_size=clip.resize_size, crop_size=clip.crop_size,
                                     interpolation=clip.interpolation)
        with captured_stderr(messages):
            video = decode_video(item.path, pick, 0, None, spec.decoder, "bilinear", guess=guess, stream=spec.stream,
                                 post=post)
        frames = video.frames
    except DecodeError as exc:
        return prepared_cls(item, with_log(record, messages), reason=str(exc))
    except Exception as exc:  # noqa: BLE001 -- one bad file must not end the run; the reason names the error
        return prepared_cls(item, with_log(record, messages), reason=f"unexpected {type(exc).__name__}: {exc}"[:300])
    rows, positions = unique_clips(chosen.clips)  # (K, T) source indices, sorted
    at = np.searchsorted(video.indices, rows)  # (K, T) positions into the decoded frames
    stamps = video.timestamps[at]  # (K, T) seconds
    record.update(
        source={"num_frames": video.num_frames, "fps": video.fps, "width": video.width, "height": video.height,
                "decoder": video.decoder, "decoder_note": video.note, "expected_frames": video.expected_frames,
                "truncated": video.looks_truncated, **video.source_fields(), **decoder_log(messages)},
        **clip_fields(policy, clip, rows, stamps, positions, chosen.short, video.start))

    return prepared_cls(item, record, frames[at], None)  # (K, T, S, S, 3)


def clip_fields(policy, clip: ClipSpec, rows: np.ndarray, stamps: np.ndarray, positions: list[int], short: bool,
                start: float = 0.0) -> dict:
    """The clip part of a video's record (extract writes it, estimate replays it): rows (K, T)
    source indices, stamps (K, T) seconds from the first frame, the policy's positions into the
    rows; ``start`` (the first frame's pts) makes the player's clock, ``pts_seconds``."""
    return {"frame_indices": rows[:, 0].tolist(), "timestamps": stamps[:, 0].tolist(),
            "pts_seconds": (stamps[:, 0] + start).tolist(),
            "policies": {str(policy): positions},
            "clips": {"frame_indices": rows.tolist(), "timestamps": stamps.tolist(), "frames": int(rows.shape[1]),
                      "pts_seconds": (stamps + start).tolist(),
                      "rate": policy.clip_shape(clip.frames, clip.rate)[1]},
            "num_cached_frames": len(rows), "num_clips": len(rows), "short": bool(short)}
