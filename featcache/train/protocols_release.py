"""The released test-time protocols as :class:`~featcache.train.protocols.DenseClips` placements:
SlowFast's, ST-Adapter's and V-JEPA's clips and crops (docs/protocols.md says which paper used
which). Each places its views as its release does (the index maths in :mod:`featcache.train.clips`,
ported and tested against the release), names itself (``slowfast10x3r8``) and writes
``views_<split>@...csv`` with the source frames and the crop box of every view it scored.

A release crops from frames resized its own way; a cache whose frames were resized otherwise
holds other pixels, so :func:`check_release_geometry` refuses it in one line naming what to extract.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import ClassVar

import numpy as np

from featcache.cache.facts import PreprocessFacts, StoreAttrs, VideoRecord
from featcache.errors import FeatcacheError, OptionError
from featcache.train.clips import (
    ReleaseFails,
    slowfast_clip_indices,
    slowfast_pyav_clips,
    slowfast_torchvision_clips,
    stadapter_clip_indices,
    vjepa_clip_indices,
)
from featcache.train.protocols import DenseClips, Run, box_text


def check_release_geometry(attrs: StoreAttrs, protocol: str, short_side: int | None = None, why: str = "") -> None:
    """A release crops ``input_size`` px from frames whose short side it resized to ``short_side``
    (default: the crop size, as SlowFast's test crops, datasets/transform.py
    ``random_short_side_scale_jitter`` with min = max = TEST_CROP_SIZE then ``uniform_crop``, and
    ST-Adapter's, dataset.py _generate_spatial_crops L218); a cache whose frames were resized to
    another short side (timm's crop_pct) holds other pixels: refused."""
    pre = attrs.preprocess or PreprocessFacts()
    short, size = pre.resize_short_side, (pre.input_size or [0])[-1]
    want = short_side or size
    if short != want:
        crop_pct = "crop_pct 1.0" if want == size else f"crop_pct {size}/{want}"
        raise FeatcacheError(
            f"--protocol {protocol}: the release crops {size} px from frames whose short side is resized to {want}{why}; "
            f"this cache resized the short side to {short} (crop_pct {pre.crop_pct}), so its crops hold other "
            f"pixels; it needs an extraction with the short side resized to {want} ({crop_pct}, which "
            "featcache extract does not offer for this model), or use --protocol featcache")


class _Release(DenseClips):
    """A released placement: the cache's pixels checked at resolve time."""

    def resolve(self, run: Run) -> DenseClips:
        check_release_geometry(run.cache.facts, self.release)
        return super().resolve(run)


@dataclasses.dataclass(frozen=True)
class SlowFastWholeClips(_Release):
    """SlowFast's formula over the decoded whole video (its path when a backend decodes it all):
    ``DATA.TARGET_FPS`` 30 resampling (a clip spans ``R N / 30 * fps`` source frames, ``fps`` the
    video's recorded average rate), ``get_start_end_idx`` placement, ``uniform_crop`` offsets 0 /
    ceil(margin / 2) / margin (transform.py L226-227) of a short side resized to the crop size."""
    release: ClassVar[str] = "slowfast-whole"

    def clip_indices(self, record: VideoRecord, frames: int) -> list[np.ndarray]:
        n, fps = record.num_frames, record.source.fps if record.source else None
        if not fps:
            raise OptionError("protocol", f"{self.release} resamples to 30 fps, and the cache does not record "
                                          "this video's rate")
        return [slowfast_clip_indices(n, fps, frames, self.rate, v, self.clips) for v in range(self.clips)]

    def crop_box(self, width: int, height: int, size: int, crop: int, short: int = 0) -> str:
        margin = int(math.floor(max(width, height) / min(width, height) * size)) - size
        return _box(width >= height, (0, math.ceil(margin / 2), margin)[crop], size)


@dataclasses.dataclass(frozen=True)
class SlowFastClips(SlowFastWholeClips):
    """SlowFast's default test path (HEAD: ``DATA.DECODING_BACKEND`` "torchvision"): each clip
    decoded selectively by pts from the header's duration and frame rate, as
    :func:`~featcache.train.clips.slowfast_torchvision_clips` replays from the video's recorded
    stream clock; its crops as :class:`SlowFastWholeClips`."""
    release: ClassVar[str] = "slowfast"
    decode: ClassVar = staticmethod(slowfast_torchvision_clips)

    def clip_indices(self, record: VideoRecord, frames: int) -> list[np.ndarray]:
        clock = record.source.clock if record.source else None
        if clock is None or clock.pts is None or not clock.time_base:
            why = ("its frames' pts were not recorded (a decoded frame had none)" if clock is not None else
                   "the cache predates recorded stream clocks (re-extract it)")
            raise ReleaseFails(f"{why}; SlowFast's {self.release} decoding seeks by pts, so it cannot be replayed "
                               "(--protocol slowfast-whole places clips over the whole video)")
        return self.decode(clock, frames, self.rate, self.clips)


@dataclasses.dataclass(frozen=True)
class SlowFastPyAVClips(SlowFastClips):
    """SlowFast's ``pyav`` backend (its default until 2021: the SlowFast, X3D and MViT papers),
    :func:`~featcache.train.clips.slowfast_pyav_clips`; crops as :class:`SlowFastWholeClips`."""
    release: ClassVar[str] = "slowfast-pyav"
    decode: ClassVar = staticmethod(slowfast_pyav_clips)


@dataclasses.dataclass(frozen=True)
class STAdapterClips(_Release):
    """ST-Adapter's release: views at ``round(slide * i / (V - 1))`` (``slide // 2`` for one),
    crops at offsets 0 / margin // 2 / margin of a short side resized to the crop size with a
    floored long side (video_dataset/dataset.py L189-199, L218)."""
    release: ClassVar[str] = "stadapter"

    def clip_indices(self, record: VideoRecord, frames: int) -> list[np.ndarray]:
        n = record.num_frames
        return [stadapter_clip_indices(n, frames, self.rate, v, self.clips) for v in range(self.clips)]

    def crop_box(self, width: int, height: int, size: int, crop: int, short: int = 0) -> str:
        margin = max(width, height) * size // min(width, height) - size
        return _box(width >= height, (0, margin // 2, margin)[crop], size)


@dataclasses.dataclass(frozen=True)
class VJEPAClips(_Release):
    """V-JEPA's frozen evaluation (facebookresearch/jepa ``evals/video_classification_frozen``):
    ``clips`` segments of ``frames_per_clip`` frames every ``rate`` (= ``frame_step``) frames,
    placed as ``VideoDataset.loadvideo_decord`` places them (train/clips.py
    ``vjepa_clip_indices``; a clip's end drawn per video from a generator seeded by ``seed`` and
    the video id, as the release's eval loader draws it at random), attended jointly as its
    configs' ``attend_across_segments: true`` (``ClipAggregation``, utils.py L141-157: the
    segments' tokens concatenated in time): one view of the head's N = segments x
    frames_per_clip frames per spatial view. The spatial views of ``EvalVideoTransform``
    (utils.py L286-323: short side resized to the crop size, offsets ``i * ((long - crop) //
    2)``), or, for one view, ``VideoTransform``'s eval path (L217-223: short side ``int(crop *
    256 / 224)``, centre crop ``round((side - crop) / 2)``); the softmax of the spatial views
    averaged (eval.py L355). The views file has a row per segment (``view`` = the segment)."""
    release: ClassVar[str] = "vjepa"
    seed: int = 0  # the release seeds numpy with _GLOBAL_SEED = 0 (eval.py L59)

    def __post_init__(self):
        super().__post_init__()
        if self.combine != "mean":
            raise OptionError("combine", f"--protocol vjepa averages the softmax of its views (jepa eval.py L355); "
                                         f"got {self.combine!r}: use --combine mean")

    def resolve(self, run: Run) -> DenseClips:
        frames = run.cfg.view.frames.fixed_length
        if frames % self.clips:
            raise FeatcacheError(f"--protocol vjepa --temporal-views {self.clips}: the head sees its {self.clips} segments "
                                 f"jointly (attend_across_segments), {frames} frames in all, which {self.clips} segments "
                                 f"do not divide; give a segment count that divides {frames}")
        if self.spatial_views == 1:
            pre = run.cache.facts.preprocess
            size = ((pre.input_size if pre else None) or [0])[-1]
            check_release_geometry(run.cache.facts, self.release, int(size * 256 / 224),
                                   " for one spatial view (utils.py L217)")
            return DenseClips.resolve(self, run)
        return super().resolve(run)

    def clip_indices(self, record: VideoRecord, frames: int) -> list[np.ndarray]:
        rng = np.random.RandomState([self.seed, zlib.crc32(record.video_id.encode())])
        segments = vjepa_clip_indices(record.num_frames, frames // self.clips, self.rate, self.clips, rng)
        return [np.concatenate(segments)]  # one view: the segments in time order

    def view_rows(self, placed: list) -> list:
        """A row per segment of each scored view: per video, segments in time order, crops inside."""
        rows, crops = [], len({c for _, _, c, _, _ in placed})
        for i in range(0, len(placed), crops):  # placed: per video, its one view at every crop
            group = placed[i:i + crops]
            for s in range(self.clips):
                rows += [(record, s, c, np.split(wanted, self.clips)[s], np.split(served, self.clips)[s])
                         for record, _, c, wanted, served in group]
        return rows

    def crop_box(self, width: int, height: int, size: int, crop: int, short: int = 0) -> str:
        source_short, long_ = min(width, height), max(width, height)
        if self.spatial_views == 3:
            step = (int(size * long_ / source_short) - size) // 2
            return _box(width >= height, crop * step, size)
        side = int(size * 256 / 224)  # VideoTransform: Resize(side) then CenterCrop(size)
        w2, h2 = (width, height) if source_short == side else _resized(width, height, side)
        return box_text(int(round((w2 - size) / 2.0)), int(round((h2 - size) / 2.0)), size)


def _resized(width: int, height: int, side: int) -> tuple[int, int]:
    """jepa ``functional.get_resize_sizes`` (L74-81): the short side to ``side``, the long one
    ``int(side * long / short)``."""
    if width < height:
        return side, int(side * height / width)
    return int(side * width / height), side


def _box(wide: bool, offset: int, size: int) -> str:
    """``x0 y0 x1 y1`` of a square crop at ``offset`` along the long side."""
    return box_text(offset, 0, size) if wide else box_text(0, offset, size)


RELEASES = {cls.release: cls for cls in (SlowFastClips, SlowFastPyAVClips, SlowFastWholeClips, STAdapterClips,
                                         VJEPAClips)}
