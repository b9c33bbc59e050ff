"""`--compile` (torch.compile of the forward featcache calls) vs eager, side by side in one run.

    .venv/bin/python benchmarks/bench_compile.py [--batch 16] [--batches 6] [--rounds 3]

DINOv2 ViT-S/14 at 224 (random weights: the same FLOPs), at this device's auto precision. The
compiled encoder is built (and compiled by its first forward) once, timed separately; then rounds
alternate eager and compiled over the same uint8 batches. Reports compile seconds, steady-state
frames/s of each and the ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from featcache.extract.encoder import EncoderConfig, FrozenEncoder


def rate(encoder: FrozenEncoder, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for b in batches:
        encoder(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depth", type=int, default=None, help="ViT blocks (default: the model's 12; 1 for a tiny run)")
    args = ap.parse_args()
    model_args = {} if args.depth is None else {"depth": args.depth}
    eager = FrozenEncoder(EncoderConfig(weights="random", model_args=model_args))
    start = time.perf_counter()
    compiled = FrozenEncoder(EncoderConfig(weights="random", compile=True, model_args=model_args))
    batches = [torch.randint(0, 256, (args.batch, 224, 224, 3), dtype=torch.uint8) for _ in range(args.batches)]
    compiled(batches[0])  # the probe forward compiled batch 1; this one compiles the batch size used
    compile_s = time.perf_counter() - start
    eager(batches[0])
    diff = (eager(batches[0]) - compiled(batches[0])).abs().max().item()
    rates = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        rates["eager"].append(rate(eager, batches))
        rates["compiled"].append(rate(compiled, batches))
        print(json.dumps({"round": r, **{k: round(v[-1], 2) for k, v in rates.items()}}))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"summary": "frames/s, DINOv2 ViT-S/14 at 224", "precision": eager.precision,
                      "batch": args.batch, "compile_s": round(compile_s, 1), **{k: round(v, 2) for k, v in med.items()},
                      "compiled_over_eager": round(med["compiled"] / med["eager"], 2), "max_abs_diff": diff}))


if __name__ == "__main__":
    main()
