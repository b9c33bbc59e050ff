"""The decoding side of stage 1 alone: decode workers 0 (one thread), 1 and 2, side by side in one run.

    .venv/bin/python benchmarks/bench_decode.py [--videos 32] [--frames 48] [--rounds 3]

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

from featcache.encoder import EncoderConfig
from featcache.extract import ExtractConfig, run_extract
from featcache.manifest import read_manifest
from featcache.synthetic import make_dataset
from featcache.video.decode import decode_video
from featcache.video.select import uniform_indices

NEAR_FREE = EncoderConfig(weights="random", img_size=56, precision="fp32",
                          model_args={"depth": 1, "embed_dim": 64, "num_heads": 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="featcache-bench-")
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
                    used[d] = decode_video(p, lambda n, s, st: uniform_indices(n, 8), 256, decoder=d).decoder
                times[d].append(len(paths) * 8 / (time.perf_counter() - t))
        print(json.dumps({"summary": f"decoders alone, {source} uniform:8 at short side 256 (frames/s)",
                          **{d: round(statistics.median(v), 1) for d, v in times.items()},
                          "decoded_by": used}))


if __name__ == "__main__":
    main()
