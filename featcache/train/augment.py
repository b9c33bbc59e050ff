"""Augmentations that can be replayed from cached tokens.

Pixel-level augmentations (colour jitter, random-resized crops of the frame) change what the frozen
model sees, so they cannot be applied to a cache; what can be done is on the token grid itself:

- ``flip``: mirror the patch grid left-right (prefix/CLS tokens untouched), per clip with p = 0.5;
- ``crop_flip``: also a random crop of the grid (scale 0.5-1 of its area, aspect ratio 3/4-4/3,
  as torchvision's RandomResizedCrop) resized back to the full grid bilinearly, per clip.

The same crop and flip apply to every frame of a clip. Draws come from a generator seeded per
batch, so every head of a fused pass sees the same augmented batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "flip", "crop_flip")


def augment_tokens(x: torch.Tensor, prefix: int, grid: tuple[int, int], mode: str, g: torch.Generator) -> torch.Tensor:
    """(B, T, N, C) tokens -> augmented copy (same shape)."""
    h, w = grid
    if mode == "none" or h * w == 0:
        return x
    b, t, _, c = x.shape
    patches = x[:, :, prefix:].reshape(b, t, h, w, c)  # (B, T, H, W, C)
    flip = torch.rand(b, generator=g) < 0.5
    patches = torch.where(flip[:, None, None, None, None], patches.flip(3), patches)
    if mode == "crop_flip":
        patches = torch.stack([_crop(p, g) for p in patches])
    return torch.cat([x[:, :, :prefix], patches.reshape(b, t, h * w, c)], dim=2)


def _crop(clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """(T, H, W, C) -> a random-resized crop of the grid, back at (T, H, W, C)."""
    t, h, w, c = clip.shape
    area = h * w * (0.5 + 0.5 * float(torch.rand(1, generator=g)))
    ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand(1, generator=g)))
    ch = max(1, min(h, round(math.sqrt(area / ratio))))
    cw = max(1, min(w, round(math.sqrt(area * ratio))))
    top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
    left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
    crop = clip[:, top:top + ch, left:left + cw].permute(0, 3, 1, 2)  # (T, C, ch, cw)
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
