"""The GPU path on a device machine, one part per call (benchmarks/gpu.sh runs them all, ~8 min).

    .venv/bin/python benchmarks/bench_gpu.py extract|decode|report [--out DIR] [--tiny]

- ``extract``: the best bare forward of DINOv2 ViT-S/14 (random weights, same FLOPs) on the GPU:
  timm ``forward_features`` under bf16 autocast on normalised pixels already on the device, batch
  sweep 32/64/128/256, synchronised; then featcache extracting the same generated clips (320x240,
  96 frames) at the sweep's best batch with auto decode workers, ``uniform:16`` and
  ``uniform:8,keyframes:8``; rounds alternate bare and pipeline; ratio = pipeline / bare.
- ``decode``: source frames decoded per second by featcache's decoding side (a near-free model)
  with N = 1, 2, 4, 8, 16 decode workers on long-GOP 720p H.264 (bench_decode's clip) for
  ``uniform:8,keyframes:8``, and torchcodec's decoder on CUDA (NVDEC) vs on the CPU over the same
  clip (raw decoding into device frames: featcache's own path does not use NVDEC yet).
- ``report``: the JSON lines of both as a RESULTS.md section (``--out``/gpu.md).
``--tiny`` shrinks every size (for a quick check on a CPU machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def extract(out: str, tiny: bool) -> None:
    from bench_extract import decoded_frames

    from featcache.data.synthetic import make_dataset
    from featcache.extract.encoder import EncoderConfig, FrozenEncoder
    from featcache.extract.pipeline import ExtractConfig, run_extract

    work = tempfile.mkdtemp(prefix="featcache-gpu-")
    manifest = make_dataset(work, "motion", per_class=2 if tiny else 16, num_frames=24 if tiny else 96, size=(320, 240))
    enc_cfg = EncoderConfig(weights="random", precision="bf16" if torch.cuda.is_available() else "fp32",
                            **({"img_size": 56, "model_args": {"depth": 1, "embed_dim": 64, "num_heads": 1}} if tiny else {}))
    encoder = FrozenEncoder(enc_cfg)
    dev = encoder.device
    pixels = None
    sizes = (8, 16) if tiny else (32, 64, 128, 256)
    for policies in ("uniform:16", "uniform:8,keyframes:8"):
        base = ExtractConfig(manifest=manifest, out="", encoder=enc_cfg, frames=policies, decode_workers="auto")
        frames = torch.from_numpy(decoded_frames(base, encoder)).to(dev)
        pixels = (frames.permute(0, 3, 1, 2).float() / 255 - torch.tensor(encoder.preprocess["mean"], device=dev).view(1, 3, 1, 1)) \
            / torch.tensor(encoder.preprocess["std"], device=dev).view(1, 3, 1, 1)

        def bare(bs: int, pixels=pixels) -> float:
            sync()
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                for i in range(0, len(pixels), bs):
                    encoder.model.forward_features(pixels[i:i + bs])
            sync()
            return len(pixels) / (time.perf_counter() - t)

        sweep = {bs: (bare(bs), bare(bs))[1] for bs in sizes}  # first call warms up
        best = max(sweep, key=sweep.get)
        print(json.dumps({"part": "extract", "policies": policies, "sweep": {str(k): round(v, 1) for k, v in sweep.items()}}), flush=True)
        ratios = []
        for r in range(2):
            b = bare(best)
            s = run_extract(dataclasses.replace(base, out=os.path.join(work, f"{policies}_{r}.zarr"), batch_size=best),
                            show_progress=False)
            ratios.append(s.frames_per_s / b)
            print(json.dumps({"part": "extract", "policies": policies, "round": r, "bare_fps": round(b, 1),
                              "pipeline_fps": round(s.frames_per_s, 1), "ratio": round(ratios[-1], 3),
                              "batch_size": best, "decode": s.decode_note}), flush=True)
        print(json.dumps({"part": "extract", "summary": policies, "median_ratio": round(statistics.median(ratios), 3),
                          "ratios": [round(x, 3) for x in ratios], "best_bare_batch": best}), flush=True)


def decode(out: str, tiny: bool) -> None:
    from bench_decode import NEAR_FREE, long_gop_clip

    from featcache.extract.pipeline import ExtractConfig, run_extract

    work = tempfile.mkdtemp(prefix="featcache-gpu-")
    frames = 30 if tiny else 300
    clip = long_gop_clip(os.path.join(work, "clip.mp4"), frames, (320, 180) if tiny else (1280, 720))
    videos = 4 if tiny else 32
    with open(os.path.join(work, "m.csv"), "w") as f:
        f.write("video_id,path,label,split\n")
        for i in range(videos):
            os.link(clip, os.path.join(work, f"v{i}.mp4"))
            f.write(f"v{i},v{i}.mp4,a,train\n")
    for n in (1, 2) if tiny else (1, 2, 4, 8, 16):
        s = run_extract(ExtractConfig(manifest=os.path.join(work, "m.csv"), out=os.path.join(work, f"w{n}.zarr"),
                                      encoder=NEAR_FREE, frames="uniform:8,keyframes:8", batch_size=64,
                                      decode_workers=n), show_progress=False)
        print(json.dumps({"part": "decode", "workers": n, "source_frames_per_s": round(videos * frames / s.wall_s, 1),
                          "videos": videos, "failed": len(s.failed)}), flush=True)
    try:
        from torchcodec.decoders import VideoDecoder

        for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
            rates = []
            for _ in range(3):
                sync()
                t = time.perf_counter()
                dec = VideoDecoder(clip, device=device, **({"num_ffmpeg_threads": 1} if device == "cpu" else {}))
                n = len(dec.get_frames_in_range(0, dec.metadata.num_frames).data)
                sync()
                rates.append(n / (time.perf_counter() - t))
            print(json.dumps({"part": "decode", "torchcodec": device, "frames_per_s": round(max(rates), 1)}), flush=True)
    except Exception as exc:  # not installed, no NVDEC build, no FFmpeg libraries
        print(json.dumps({"part": "decode", "torchcodec": "unavailable", "error": str(exc)[:200]}), flush=True)


def report(out: str) -> None:
    lines = ["## The GPU path (benchmarks/gpu.sh)", ""]
    for name in ("device.txt", "extract.jsonl", "decode.jsonl", "compile.jsonl"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            lines += [f"`{name}`:", "", "```", open(path).read().strip(), "```", ""]
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("extract", "decode", "report"))
    ap.add_argument("--out", default=".")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    np.random.seed(0)
    {"extract": lambda: extract(args.out, args.tiny), "decode": lambda: decode(args.out, args.tiny),
     "report": lambda: report(args.out)}[args.part]()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_extract / bench_decode helpers
    main()
