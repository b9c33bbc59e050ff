"""Small generated video datasets for the demo, the tests and the benchmarks.

``motion`` classes differ only by how a shape moves (left/right/up/down): every frame taken
alone is drawn from the same distribution, so a head that averages frames cannot tell them
apart. ``appearance`` classes differ by the shape's colour and do not move consistently.
``texture`` clips show a random texture scrolling at one constant speed (class = direction):
the footage for playback-rate pretext tasks, where only the gap between sampled frames differs.
Videos are written with PyAV (H.264 .mp4, MPEG-4 .avi, MPEG-2 .mpg, ... by extension).
"""
from __future__ import annotations

import csv
import os

import numpy as np

MOTION_CLASSES = ("left", "right", "up", "down")
APPEARANCE_CLASSES = ("red", "green", "blue", "yellow")
_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".avi": "mpeg4", ".mpg": "mpeg2video", ".webm": "libvpx-vp9"}


def write_video(path: str, frames: np.ndarray, fps: int = 25) -> None:
    """Encode uint8 (T, H, W, 3) frames; the codec follows the file extension."""
    import av

    ext = os.path.splitext(path)[1].lower()
    if ext not in _CODECS:
        raise ValueError(f"write_video: unsupported extension {ext!r}; expected one of {sorted(_CODECS)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"write_video: width and height must be even for yuv420p, got {frames.shape[2]}x{frames.shape[1]}")
    with av.open(path, "w") as container:
        stream = container.add_stream(_CODECS[ext], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if ext in (".mp4", ".mkv"):
            stream.options = {"crf": "18", "g": "12", "bf": "2"}  # B-frames: decoders must reorder
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(70, 150)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 8 * np.sin(xx / rng.uniform(3, 9)) * np.cos(yy / rng.uniform(3, 9))
    return np.clip(base + texture, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def motion_clip(label: str, rng: np.random.Generator, num_frames: int = 24, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A square moving in the direction ``label``; (T, H, W, 3) uint8."""
    w, h = size
    side = max(6, min(w, h) // 3)
    colour = np.array(_COLOURS[APPEARANCE_CLASSES[rng.integers(len(APPEARANCE_CLASSES))]], dtype=np.uint8)
    bg = _background(rng, h, w)
    horizontal = label in ("left", "right")
    span = (w if horizontal else h) - side
    path = np.linspace(0, span, num_frames)
    if label in ("left", "up"):
        path = path[::-1]
    across = rng.integers(0, (h if horizontal else w) - side)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    for t, p in enumerate(path.astype(int)):
        frames[t] = bg
        y, x = (across, p) if horizontal else (p, across)
        frames[t, y:y + side, x:x + side] = colour
    return frames


def appearance_clip(label: str, rng: np.random.Generator, num_frames: int = 24, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A square of colour ``label`` jittering in place; (T, H, W, 3) uint8."""
    w, h = size
    side = max(6, min(w, h) // 4)
    bg = _background(rng, h, w)
    cy, cx = rng.integers(side, h - 2 * side), rng.integers(side, w - 2 * side)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    for t in range(num_frames):
        dy, dx = rng.integers(-2, 3, size=2)
        frames[t] = bg
        frames[t, cy + dy:cy + dy + side, cx + dx:cx + dx + side] = _COLOURS[label]
    return frames


TEXTURE_CLASSES = ("east", "south")


def texture_clip(label: str, rng: np.random.Generator, num_frames: int = 96, size: tuple[int, int] = (112, 112),
                 speed: int = 2) -> np.ndarray:
    """A smooth random texture scrolling ``speed`` px per frame towards ``label``; (T, H, W, 3) uint8."""
    w, h = size
    big_h, big_w = h + speed * num_frames, w + speed * num_frames
    noise = rng.random((big_h // 4 + 2, big_w // 4 + 2, 3))
    texture = np.kron(noise, np.ones((4, 4, 1)))[:big_h, :big_w]  # 4x4 blocks of colour
    texture = (40 + 180 * texture).astype(np.uint8)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    for t in range(num_frames):
        d = speed * t
        frames[t] = texture[:h, d:d + w] if label == "east" else texture[d:d + h, :w]
    return frames


def make_dataset(out_dir: str, kind: str = "motion", per_class: int = 12, num_frames: int = 24,
                 size: tuple[int, int] = (96, 72), ext: str = ".mp4", seed: int = 0) -> str:
    """Write a labelled dataset and its manifest (60/20/20 train/val/test per class); returns
    the manifest path."""
    classes, clip = {"motion": (MOTION_CLASSES, motion_clip),
                     "appearance": (APPEARANCE_CLASSES, appearance_clip),
                     "texture": (TEXTURE_CLASSES, texture_clip)}[kind]
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    rows = []
    for label in classes:
        for i in range(per_class):
            split = "train" if i < 0.6 * per_class else "val" if i < 0.8 * per_class else "test"
            name = f"{label}_{i:03d}{ext}"
            write_video(os.path.join(out_dir, "videos", name), clip(label, rng, num_frames, size))
            rows.append({"video_id": f"{label}_{i:03d}", "path": f"videos/{name}", "label": label, "split": split})
    manifest = os.path.join(out_dir, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video_id", "path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
