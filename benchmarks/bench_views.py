"""Cached augmented training views versus the centre crop and versus online augmentation, side by side.

    .venv/bin/python benchmarks/bench_views.py [--train-per-class 4] [--ks 4,8] [--seeds 3] [--epochs 30]

A generated task where augmentation should matter: 4 classes decided by motion (a square moving
left, right, up or down), the square of a random size (12-45% of the short side), colour, speed
and position, few training videos. The same head (``r3d``: a temporal module, since the class is a
direction) is trained by ``featcache train``'s own loop three ways:

(a) ``centre``: the cached centre crop only (``extract`` without views, ``train_views=none``);
(b) ``cached K``: ``extract --train-views K`` and ``train_views=random`` (one cached view per
    video per epoch), for each K of ``--ks``;
(c) ``online``: the frozen model run every epoch on freshly augmented frames of the train videos
    (the same recipe, a new box and flip per video and epoch; the frames decoded once), plugged
    into the same loop as the train split's tokens (an object with ``set_epoch``, as ViewChoice).

Validation and test always read the centre crop. The model is featcache's tiny test ViT
(DINOv2 architecture, 2 blocks, 64 wide, 56 px, random weights): this machine has no GPU and no
hub; a pretrained model at full size is a run for a GPU (``--model``/``--weights`` are passed
through). Per arm: test top-1 mean and std over ``--seeds`` training seeds, and wall time
(extraction of the store it reads + training, the mean over seeds; online: the train videos'
decoding and every epoch's forwards). One JSON line per arm, then a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import tempfile
import time

import numpy as np

CLASSES = ("left", "right", "up", "down")
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def varied_motion_clip(label: str, rng: np.random.Generator, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """A square of random size, colour, speed and position moving towards ``label``; (T, H, W, 3)."""
    w, h = size
    side = int(rng.uniform(0.12, 0.45) * min(w, h))
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.clip(rng.integers(60, 160) + 10 * np.sin(xx / rng.uniform(3, 9) + rng.uniform(0, 6))
                 * np.cos(yy / rng.uniform(3, 9)), 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    horizontal = label in ("left", "right")
    span = (w if horizontal else h) - side
    travel = rng.uniform(0.35, 1.0) * span  # its speed
    start = rng.uniform(0, span - travel)
    path = start + np.linspace(0, travel, num_frames)
    if label in ("left", "up"):
        path = path[::-1]
    across = rng.integers(0, (h if horizontal else w) - side)
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    for t, p in enumerate(path.astype(int)):
        frames[t] = bg
        y, x = (across, p) if horizontal else (p, across)
        frames[t, y:y + side, x:x + side] = colour
    return frames


def make_task(root: str, train: int, val: int, test: int, frames: int, size: tuple[int, int]) -> str:
    from featcache.data.synthetic import write_video

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    rows = []
    for label in CLASSES:
        for i in range(train + val + test):
            split = "train" if i < train else "val" if i < train + val else "test"
            name = f"{label}_{i:03d}.mp4"
            write_video(os.path.join(root, "videos", name), varied_motion_clip(label, rng, frames, size))
            rows.append({"video_id": name[:-4], "path": f"videos/{name}", "label": label, "split": split})
    path = os.path.join(root, "manifest.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def encoder_config(args):
    from featcache.extract.encoder import EncoderConfig

    tiny = args.model == "vit_small_patch14_dinov2.lvd142m" and args.weights == "random"
    return EncoderConfig(model=args.model, weights=args.weights, img_size=args.img_size, precision="fp32",
                         model_args=dict(TINY) if tiny else {})


def extract(manifest: str, out: str, args, views: int) -> float:
    from featcache.extract.pipeline import ExtractConfig, run_extract

    start = time.perf_counter()
    s = run_extract(ExtractConfig(manifest=manifest, out=out, frames=f"uniform:{args.frames}",
                                  encoder=encoder_config(args), batch_size=64, train_views=views,
                                  view_aug=args.recipe, decode_workers=0), show_progress=False)
    assert s.done and not s.failed, s.failed
    return time.perf_counter() - start


class OnlineViews:
    """(c): the train split's tokens, recomputed at each ``set_epoch`` by the frozen model on a
    fresh random-resized crop + flip of each video's decoded frames (one box per video and epoch)."""

    def __init__(self, frames: list[np.ndarray], ids: list[str], encoder, recipe: str, layer: int = -1):
        import torch

        self.frames, self.ids, self.encoder, self.recipe, self.layer = frames, ids, encoder, recipe, layer
        self.size = encoder.cfg.img_size
        probe = encoder(torch.zeros(1, self.size, self.size, 3, dtype=torch.uint8))  # (1, L, N, C)
        self.x = torch.empty((len(frames), len(frames[0]), *probe.shape[2:]), dtype=torch.float16)
        self.shape, self.dtype, self.at, self.forward_s = self.x.shape, torch.float16, None, 0.0
        self.set_epoch(0, 0)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        import torch

        from featcache.video.views import crop_views, draw_views

        if self.at == (epoch, seed):
            return
        start = time.perf_counter()
        for i, (vid, f) in enumerate(zip(self.ids, self.frames)):
            h, w = f.shape[1:3]
            view = draw_views(self.recipe, 1, (seed or 0) * 1_000_003 + epoch + 1, vid, w, h)
            pixels = crop_views(f, view, self.size, self.recipe)  # (T, S, S, 3)
            self.x[i] = self.encoder(torch.from_numpy(pixels))[:, self.layer].half()
        self.at, self.forward_s = (epoch, seed), self.forward_s + time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index]


def decoded_train_frames(cache, data, encoder) -> list[np.ndarray]:
    """The train videos' frames of the view, decoded once at the model's resize size (as extract)."""
    from featcache.video.decode import decode_video

    out = []
    for vid in data.video_ids:
        record = cache.video(vid).record
        idx = np.asarray(record["frame_indices"])
        video = decode_video(record["path"], lambda n, scores, stamps, idx=idx: idx, encoder.short_side,
                             interpolation=encoder.preprocess["interpolation"])
        out.append(video.frames)
    return out


def train(store: str, args, seed: int, out: str, train_views: str = "none", data: dict | None = None) -> tuple[float, float]:
    import yaml

    from featcache.spec.config import build_config
    from featcache.train.fit import train_group

    head = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.head_arg)}
    cfg = build_config({"head": args.head, **{f"head.{k}": v for k, v in head.items()}, "view": f"uniform:{args.frames}",
                        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": seed,
                        "train_views": train_views})
    start = time.perf_counter()
    metrics = train_group(store, cfg.batch, [cfg.head_config], [out], show_progress=False, data=data)[0]
    return metrics["test/top1"], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-class", type=int, default=4)
    ap.add_argument("--val-per-class", type=int, default=2)
    ap.add_argument("--test-per-class", type=int, default=12)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="128x96", help="generated video size WxH")
    ap.add_argument("--ks", default="4,8", help="cached view counts of arm (b)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--head", default="r3d")
    ap.add_argument("--head-arg", action="append", default=[], help="head.KEY=VALUE (repeatable, YAML values)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--recipe", default="torchvision", choices=("torchvision", "jepa"))
    ap.add_argument("--model", default="vit_small_patch14_dinov2.lvd142m")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--img-size", type=int, default=56)
    args = ap.parse_args()
    import torch

    from featcache import open_cache
    from featcache.extract.encoder import FrozenEncoder
    from featcache.spec.view import View
    from featcache.train.evaluate import read_splits

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    work = tempfile.mkdtemp(prefix="featcache-bench-views-")
    size = tuple(int(v) for v in args.size.split("x"))
    manifest = make_task(work, args.train_per_class, args.val_per_class, args.test_per_class, 2 * args.frames, size)
    ks = [int(k) for k in args.ks.split(",") if k]
    stores = {0: os.path.join(work, "centre.zarr"), **{k: os.path.join(work, f"views{k}.zarr") for k in ks}}
    extract_s = {k: extract(manifest, path, args, k) for k, path in stores.items()}
    rows = []

    def report(arm: str, accs: list[float], extract_time: float, train_times: list[float], **extra) -> None:
        row = {"arm": arm, "test_top1_mean": round(statistics.mean(accs), 4),
               "test_top1_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
               "per_seed": [round(a, 4) for a in accs], "extract_s": round(extract_time, 2),
               "train_s": round(statistics.mean(train_times), 2),
               "wall_s": round(extract_time + statistics.mean(train_times), 2), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    seeds = range(args.seeds)
    train(stores[0], args, 0, os.path.join(work, "warm-up"))  # imports and first-call costs, not timed in any arm
    runs = [train(stores[0], args, s, os.path.join(work, f"a{s}")) for s in seeds]
    report("centre (no views)", [r[0] for r in runs], extract_s[0], [r[1] for r in runs])
    for k in ks:
        runs = [train(stores[k], args, s, os.path.join(work, f"b{k}-{s}"), "random") for s in seeds]
        report(f"cached K={k}, train_views=random", [r[0] for r in runs], extract_s[k], [r[1] for r in runs])
    # (c) online: the centre store serves val/test; the train split's tokens come from the model every epoch
    cache, view = open_cache(stores[0]), View(f"uniform:{args.frames}")
    encoder = FrozenEncoder(encoder_config(args))
    start = time.perf_counter()
    base = read_splits(cache, view)
    frames = decoded_train_frames(cache, base["train"], encoder)
    decode_s = time.perf_counter() - start
    accs, times, forward = [], [], []
    for s in seeds:
        from featcache.cache.dataset import ViewData

        t = base["train"]
        start = time.perf_counter()
        online = OnlineViews(frames, t.video_ids, encoder, args.recipe)
        data = {**base, "train": ViewData(online, t.labels, t.video_ids, t.num_prefix_tokens, t.grid)}
        acc, train_s = train(stores[0], args, s, os.path.join(work, f"c{s}"), data=data)
        accs.append(acc)
        times.append(time.perf_counter() - start)
        forward.append(online.forward_s)
    report("online (model every epoch)", accs, extract_s[0] + decode_s, times,
           forward_s=round(statistics.mean(forward), 2))
    print(f"\n{len(CLASSES)} classes, {args.train_per_class} train videos per class, {args.frames} frames, "
          f"{args.epochs} epochs, recipe {args.recipe}, seeds {args.seeds}\n")
    print("| arm | test top-1 (mean +- std) | extract s | train s (mean) | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['test_top1_mean']:.3f} +- {r['test_top1_std']:.3f} | {r['extract_s']:.1f} | "
              f"{r['train_s']:.1f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
