"""The training views of a store (``extract --train-views K``): their int8 form and the root
attributes that describe them. Pure numpy; no zarr.

A store with views holds, per video, ``views`` (K, T, L, N, C): the tokens of K augmented crops
of every cached frame (``video.views`` draws and crops them), and for int8 stores ``view_scales``
(K, T, L, N): per-token scales over the video's own channel scales (those of its centre tokens),
so ``x = q * view_scales[..., None] * channel_scales``, as for the tokens (``quant``).
"""
from __future__ import annotations

import numpy as np

_TINY16 = np.float16(np.finfo(np.float16).tiny)


def quantize_views(views: np.ndarray, channel_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, T, L, N, C) floats and the video's (L, C) channel scales -> (int8 q, float16 scales
    (K, T, L, N)): ``quant``'s channel_token scheme with the channel scales given. A view's values
    beyond the centre's channel range are fine: the per-token scale absorbs them."""
    y = np.asarray(views, np.float32) / channel_scales[None, None, :, None, :]
    s = np.maximum((np.abs(y).max(axis=-1) / 127.0).astype(np.float16), _TINY16)  # (K, T, L, N)
    q = np.clip(np.rint(y / s.astype(np.float32)[..., None]), -127, 127).astype(np.int8)
    return q, s


def views_attrs(count: int, recipe: str, seed: int, source: str) -> dict:
    """The root attributes' ``views`` section (a fingerprint fact: views change what is cached)."""
    return {"count": count, "recipe": recipe, "seed": seed, "source": source,
            "frame": "one box and flip per view and video, shared by all its frames, drawn on the frame as decoded "
                     "for the model (short side at preprocess.resize) and resized to the input size",
            "stored": "views (view, frame, layer, token, channel); each video's record lists its views' box "
                      "[left, top, width, height] in the decoded frame's pixels, frame_size, source_box "
                      "[x0, y0, x1, y1] in source display pixels, and flip"}
