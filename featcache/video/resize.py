"""Resizing decoded frames as torchvision's transforms resize PIL images (``extract --resize pil``).

By default (``swscale``) frames are scaled by FFmpeg's swscale while they are decoded
(featcache/video/decode.py): fast, but not the pixels an image model's own preprocessing gives.
A torchvision ``ImageClassification`` preset (torchvision 0.29.1, ``transforms/_presets.py``
L39-60: ``F.resize(img, resize_size, interpolation)`` then ``F.center_crop(img, crop_size)``) and
timm's eval transform (timm 1.0, ``data/transforms_factory.py`` L313-360:
``transforms.Resize(floor(img_size / crop_pct), interpolation)`` then
``transforms.CenterCrop(img_size)``) run on PIL images, where torchvision's ``resize``
(``transforms/functional.py`` L468-477) takes the output size from
``_compute_resized_output_size`` (L353-385: short side = the size, long side
``int(size * long / short)``) and calls ``PIL.Image.resize(size, filter)``
(``transforms/_functional_pil.py`` L242-253): antialiased, as PIL always is for bilinear and
bicubic. ``pil_resize`` does exactly that on the RGB frames FFmpeg shows (decoded at source size);
the centre crop (torchvision's rounding, ``functional.py`` L592-593) is ``video.prepare.crop``.
ResNet-50 features of the two differ by as much as one frame from the next (issue 34 item 25).

Pure: numpy, and PIL inside the function (no torch: decode workers do not import it).
"""
from __future__ import annotations

import numpy as np

from featcache.video.decode import resize_to_short_side

RESIZERS = ("swscale", "pil")  # --resize: FFmpeg's swscale at decode time, or PIL's resize of source-size frames
# torchvision's InterpolationMode value -> PIL's filter number (transforms/functional.py L53-61
# pil_modes_mapping: NEAREST 0, LANCZOS 1, BILINEAR 2, BICUBIC 3, BOX 4, HAMMING 5)
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def pil_resize(frames: np.ndarray, short_side: int, interpolation: str) -> np.ndarray:
    """uint8 (K, H, W, 3) frames -> (K, h, w, 3) with the short side at ``short_side``: what
    ``torchvision.transforms.functional.resize(PIL image, [short_side], interpolation)`` returns,
    frame by frame."""
    from PIL import Image

    mode = PIL_FILTERS.get(str(interpolation).lower())
    if mode is None:
        raise ValueError(f"interpolation {interpolation!r} has no PIL filter; expected one of {', '.join(PIL_FILTERS)}")
    h, w = frames.shape[1:3]
    size = resize_to_short_side(w, h, short_side)  # (w, h): torchvision's _compute_resized_output_size
    if size == (w, h):  # torchvision returns the image itself (functional.py L470-471)
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize(size, mode)) for f in frames])  # (K, h, w, 3)
