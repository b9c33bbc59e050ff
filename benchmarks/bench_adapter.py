"""In-backbone adapters: what a training step costs from a partial cache, side by side in one run.

    .venv/bin/python benchmarks/bench_adapter.py [--clips 2] [--frames 8] [--rounds 3]

DINOv2 ViT-S/14 at 224 (random weights: the same FLOPs), clips of 8 frames. Per round:

- ``inference``: one full inference forward of the clips' frames (``forward_features``, no grad),
  at the faster of fp32 and bf16 autocast on this machine: the yardstick;
- ``cache_2``: a training step (forward + backward + AdamW step) of the ``adapter`` head with
  ST-Adapters in the last 2 blocks, from the cached cut entering block 10;
- ``cache_12``: the same with adapters in all 12 blocks, from the cut entering block 0;
- ``raw_2``: the same training step as ``cache_2`` from the raw videos: decode + crop the frames,
  the frozen blocks 0-9 (no grad), then the adapted blocks.
The step precision is the faster of fp32 and bf16 as well. Ratios are to ``inference``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from featcache import open_cache
from featcache.data.manifest import read_manifest
from featcache.data.synthetic import make_dataset
from featcache.extract.encoder import EncoderConfig, FrozenEncoder
from featcache.extract.pipeline import ExtractConfig, decode_spec, run_extract
from featcache.heads.frozen_tail import backbone_spec
from featcache.heads.registry import create_head
from featcache.spec.config import build_config
from featcache.train.optim import optimizer
from featcache.video.prepare import prepare

MODEL = "vit_small_patch14_dinov2.lvd142m"


def _timed(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _best_precision(fn, rounds: int) -> tuple[float, str]:
    """The faster of fp32 and bf16 autocast for ``fn(autocast_enabled)``."""
    results = {"fp32": _timed(lambda: fn(False), rounds)}
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        results["bf16"] = _timed(lambda: fn(True), rounds)
    name = min(results, key=results.get)
    return results[name], name


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = tempfile.mkdtemp(prefix="featcache-bench-adapter-")
    manifest = make_dataset(work, "motion", per_class=1, num_frames=32, size=(320, 240))
    policy = f"uniform:{args.frames}"
    caches = {}
    for cut in (10, 0):
        enc = EncoderConfig(model=MODEL, weights="random", cut_block=cut)
        caches[cut] = os.path.join(work, f"cut{cut}.zarr")
        run_extract(ExtractConfig(manifest=manifest, out=caches[cut], encoder=enc, frames=policy), show_progress=False)
    items = read_manifest(manifest)[:args.clips]
    encoder = FrozenEncoder(EncoderConfig(model=MODEL, weights="random", precision="fp32"))
    spec = decode_spec(ExtractConfig(manifest=manifest, out="", encoder=encoder.cfg, frames=policy), encoder)
    frames = torch.from_numpy(np.concatenate([prepare(it, spec).frames for it in items]))  # (B*T, S, S, 3)
    pixels = ((frames.permute(0, 3, 1, 2).float() - encoder._mean) / encoder._std)

    def inference(amp: bool) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            encoder.model.forward_features(pixels)

    def step_fn(head, opt, get_x):
        y = torch.arange(args.clips) % 4

        def step(amp: bool) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                x = get_x()  # from the cache, or (raw) decoding and the frozen blocks, in the same precision
                loss = torch.nn.functional.cross_entropy(head(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def adapter(cut: int, blocks: int):
        cache = open_cache(caches[cut])
        head = create_head("adapter", in_dim=384, num_classes=4, num_frames=args.frames, grid=(16, 16),
                           num_prefix_tokens=1, backbone=backbone_spec(cache.attrs), blocks=blocks).train()
        return head, optimizer(build_config({"head": "adapter"}), head), cache

    def cached_x(cache):
        def get():
            return torch.from_numpy(np.stack([cache.video(it.video_id).cut for it in items])).float()
        return get

    head2, opt2, cache10 = adapter(10, 2)
    head12, opt12, cache0 = adapter(0, 12)

    def raw_x() -> torch.Tensor:  # decode, crop, embed and run the frozen blocks 0-9 for every step
        fr = torch.from_numpy(np.concatenate([prepare(it, spec).frames for it in items]))
        x = (fr.permute(0, 3, 1, 2).float() - encoder._mean) / encoder._std
        seen = []
        hook = encoder.model.blocks[10].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        with torch.no_grad():
            m = encoder.model
            h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            for block in m.blocks[:10]:
                h = block(h)
        hook.remove()
        return h.reshape(args.clips, args.frames, *h.shape[1:])

    base, base_p = _best_precision(inference, args.rounds)
    out = {"frames": args.clips * args.frames, "inference_s": round(base, 3), "inference_precision": base_p}
    for name, fn in (("cache_2", step_fn(head2, opt2, cached_x(cache10))),
                     ("cache_12", step_fn(head12, opt12, cached_x(cache0))),
                     ("raw_2", step_fn(head2, opt2, raw_x))):
        t, prec = _best_precision(fn, args.rounds)
        out[f"{name}_s"], out[f"{name}_precision"], out[f"{name}_x_inference"] = round(t, 3), prec, round(t / base, 2)
    out["raw_2_x_cache_2"] = round(out["raw_2_s"] / out["cache_2_s"], 2)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
