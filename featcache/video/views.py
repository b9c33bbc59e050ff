"""Augmented training views (``extract --train-views K``): random-resized crop boxes and flips,
drawn per video, and the crops themselves.

Each video gets K views; a view is one crop box and one flip shared by every cached frame of the
video (motion stays coherent, as in the released video pipelines, which crop a whole clip with
one box). The boxes are drawn from a ``torch.Generator`` seeded by the store's view seed and the
video id (:func:`video_seed`), so a resumed or re-run extraction draws the same boxes whatever
the order, shard or worker.

The box is drawn in, and cropped from, the frame as decoded for the model: the display-oriented
frame at the model's resize size (shorter side = ``short_side``, what the centre crop is taken
from). A full-resolution source frame never exists in memory (``video.decode``); the record also
gives each box in source (display) pixels, scaled back.

Recipes (scale: the box's area as a fraction of the frame's; ratio: its aspect w/h, drawn
log-uniformly; flip: probability of a horizontal flip):

``torchvision``  ``RandomResizedCrop`` defaults, scale (0.08, 1), ratio (3/4, 4/3), then
                 ``RandomHorizontalFlip(0.5)``: pytorch/vision
                 ``torchvision/transforms/transforms.py`` ``RandomResizedCrop.get_params``
                 (lines 929-970 of 0.29.1): ten tries of ``torch.empty(1).uniform_`` area and
                 log-ratio, ``int(round(sqrt(...)))`` sides, ``torch.randint`` offsets, then the
                 central fallback; ``RandomHorizontalFlip.forward``: ``torch.rand(1) < p``.
``jepa``         V-JEPA's frozen video evaluation: facebookresearch/jepa
                 ``evals/video_classification_frozen/eval.py`` lines 460-470 (``make_transforms(
                 random_horizontal_flip=False, random_resize_aspect_ratio=(0.75, 4/3),
                 random_resize_scale=(0.08, 1.0), ...)``), sampled by
                 ``src/datasets/utils/video/transforms.py`` ``_get_param_spatial_crop``
                 (lines 503-542: the same ten tries with a log-uniform ratio, ``random.randint``
                 offsets inclusive, central fallback) and resized bilinearly (``random_resized_crop``,
                 lines 545-577). No flip: that evaluation turns it off. Its RandAugment and random
                 erasing are not reproduced (pixel-value augmentations, not views).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Recipe:
    name: str
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: float  # probability of a horizontal flip
    interpolation: str  # of the crop's resize to the model's input
    antialias: bool  # torchvision's resize antialiases; jepa's F.interpolate does not
    source: str


RECIPES = {
    "torchvision": Recipe("torchvision", (0.08, 1.0), (3 / 4, 4 / 3), 0.5, "bilinear", True,
                          "pytorch/vision torchvision/transforms/transforms.py RandomResizedCrop.get_params "
                          "(defaults scale=(0.08, 1.0), ratio=(3/4, 4/3)) + RandomHorizontalFlip(0.5)"),
    "jepa": Recipe("jepa", (0.08, 1.0), (0.75, 4 / 3), 0.0, "bilinear", False,
                   "facebookresearch/jepa evals/video_classification_frozen/eval.py make_transforms "
                   "(random_resize_scale=(0.08, 1.0), random_resize_aspect_ratio=(0.75, 4/3), "
                   "random_horizontal_flip=False); src/datasets/utils/video/transforms.py _get_param_spatial_crop"),
}


def video_seed(seed: int, video_id: str) -> int:
    """The generator seed of one video's views: independent of order, shard and process."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{video_id}".encode()).digest()[:8], "little") >> 1


def sample_box(gen, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, h, w): ``RandomResizedCrop.get_params`` with ``gen`` for its draws."""
    import torch

    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # the central fallback
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_views(recipe: str, count: int, seed: int, video_id: str, width: int, height: int,
               source_size: tuple[int, int] | None = None) -> list[dict]:
    """The ``count`` views of one video on frames of ``width`` x ``height``: per view ``box``
    [left, top, width, height] in those pixels, ``flip``, ``frame_size`` [width, height] and
    ``source_box`` [x0, y0, x1, y1] in the source's display pixels (``source_size``: its (w, h))."""
    import torch

    r = RECIPES[recipe]
    gen = torch.Generator().manual_seed(video_seed(seed, video_id))
    sw, sh = source_size or (width, height)
    views = []
    for _ in range(count):
        top, left, h, w = sample_box(gen, height, width, r.scale, r.ratio)
        flip = bool(r.flip and torch.rand(1, generator=gen).item() < r.flip)
        fx, fy = sw / width, sh / height
        views.append({"box": [left, top, w, h], "flip": flip, "frame_size": [width, height],
                      "source_box": [round(left * fx, 3), round(top * fy, 3), round((left + w) * fx, 3),
                                     round((top + h) * fy, 3)]})
    return views


def crop_views(frames: np.ndarray, views: list[dict], size: int, recipe: str) -> np.ndarray:
    """uint8 frames (T, H, W, 3) -> (len(views) * T, size, size, 3): each view's box cropped from
    every frame, resized as the recipe's source does (torch ``interpolate``, rounded back to
    uint8) and flipped; views in order, frames in order within a view."""
    import torch

    r = RECIPES[recipe]
    mode = r.interpolation
    out = np.empty((len(views) * len(frames), size, size, 3), np.uint8)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    for k, view in enumerate(views):
        left, top, w, h = view["box"]
        part = x[:, :, top:top + h, left:left + w].float()
        y = torch.nn.functional.interpolate(part, size=(size, size), mode=mode, align_corners=False,
                                            antialias=r.antialias)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
        if view["flip"]:
            y = y.flip(-1)
        out[k * len(frames):(k + 1) * len(frames)] = y.permute(0, 2, 3, 1).numpy()  # (T, S, S, 3)
    return out


def with_views(frames: np.ndarray, video, video_id: str, spec: tuple[str, int, int], size: int,
               old=None) -> tuple[np.ndarray, list[dict]]:
    """The cropped frames (crops x T, S, S, 3) followed by the views' (K x T, S, S, 3), and the
    views: those recorded for ``old`` (a done video that grows: its VideoRecord), else drawn on ``video.frames``
    (a ``DecodedVideo``: the frames as decoded for the model) from ``spec`` (recipe, K, seed)."""
    recipe, count, seed = spec
    views = old.unknown.get("views") if old is not None else None  # the record's views (no field of its own)
    if not views:
        h, w = video.frames.shape[1:3]
        shown = video.source_fields()
        views = draw_views(recipe, count, seed, video_id, w, h, (shown["display_width"], shown["display_height"]))
    return np.concatenate([frames, crop_views(video.frames, views, size, recipe)]), views
