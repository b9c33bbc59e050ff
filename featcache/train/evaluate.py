"""Evaluation and reporting: scores of a saved head on the splits of a cache, the metrics, the
per-class files and confusion matrices a run directory holds. Training lives in
:mod:`featcache.train.fit`.

Long module: the evaluation protocols (single view, temporal views, windows, dense clips)
share one scoring and one reporting path.
"""
from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from featcache.cache.dataset import Task, ViewData, fill_view, frame_positions, materialise
from featcache.cache.store import Cache, open_cache
from featcache.data.annotations import AnnotatedCache, annotate, check_same_manifest
from featcache.device import resolve_device
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.config import from_dict
from featcache.spec.policy import FramePolicy, StridePolicy
from featcache.spec.view import View, parse_policy
from featcache.train import checkpoint, metrics
from featcache.train.clips import coverage, window_starts
from featcache.video.select import uniform_indices

SPLITS = ("train", "val", "test")


def read_splits(cache: Cache, view: View, splits=SPLITS, max_bytes: int | None = None) -> dict[str, ViewData]:
    """Each split of ``view``, read once (streamed when larger than ``max_bytes``)."""
    return {s: materialise(cache, view, s, max_bytes) for s in splits}


@torch.inference_mode()
def predict(head: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> np.ndarray:
    head.eval()
    outs = [head(x[i:i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)


def score(logits: np.ndarray, targets: np.ndarray, task: Task) -> tuple[dict, np.ndarray | None]:
    if task.multi:
        return metrics.multi_label(logits, targets), None
    return metrics.single_label(logits, targets, len(task.classes))


def flat(m: dict, split: str) -> dict:
    """Per-split metrics as flat keys (``val/top1``); per-class lists are left out."""
    return {f"{split}/{k}": v for k, v in m.items() if not isinstance(v, list)}


COMBINE = ("mean", "sum", "max")


def evaluate_checkpoint(path: str, cache, splits=("test",), out_dir: str | None = None,
                        data: dict | None = None, temporal_views: int = 1, combine: str = "mean",
                        spatial_views: int = 1, manifest: str | None = None, tag: str = "", clip_rate: int = 0,
                        pool: str | None = None, head: nn.Module | None = None, protocol: str = "featcache") -> dict:
    """Metrics of a saved head on the given splits of ``cache`` (a Cache, or None for the
    checkpoint's own), labels and splits from ``manifest`` (default: the run's; see
    :func:`_load_run`); writes ``predictions_<split>.csv``, per-class files and confusion matrices
    into ``out_dir``. ``data`` (split -> ViewData of the checkpoint's view, already read) avoids
    reading again; ``head`` (the checkpoint's head, its weights loaded: training's own
    evaluation) avoids building it again.

    ``temporal_views`` V > 1 is multi-view testing from the cache: the checkpoint's ``uniform:N``
    view becomes V interleaved views of a ``uniform:N*V`` pool (view v = pool[v::V]), each scored,
    softmax (sigmoid for multi-label) per view, then combined by ``combine`` (``mean``: VideoMAE,
    ST-Adapter; ``sum``: SlowFast; ``max``). ``spatial_views`` 3 adds the first and last of three
    crops along the long side (the cache must hold them: ``extract --crops 3``), every temporal
    view at every crop. Keys and files carry the protocol: ``test/top1@2x3``,
    ``predictions_test@2x3.csv``; ``tag`` ("@last") is appended to both, so the outputs of another
    checkpoint never overwrite the best one's.

    ``clip_rate`` R > 0 serves SlowFast's dense clips instead (train/clips.py): V clips of the
    head's N frames at rate R, starts evenly spaced over the video, from a ``stride:S`` pool
    (``pool``, default the cache's first); keys carry the rate: ``test/top1@10x3r2``. ``protocol``
    ``slowfast`` / ``stadapter`` places them as that release does (docs/protocols.md):
    ``test/top1@slowfast10x3r8``, with the views it scored in ``views_test@slowfast10x3r8.csv``."""
    if combine not in COMBINE:
        raise OptionError("combine", f"unknown {combine!r}; expected one of {', '.join(COMBINE)}")
    if spatial_views not in (1, 3):
        raise OptionError("spatial_views", f"expected 1 or 3, got {spatial_views}")
    run = _load_run(path, cache, manifest, head)
    crops = (1,) if spatial_views == 1 else (0, 1, 2)
    if clip_rate or pool:
        return _evaluate_dense_clips(run, splits, out_dir, temporal_views, crops, combine, clip_rate, pool, tag, protocol)
    if protocol != "featcache":
        raise OptionError("protocol", f"{protocol} places dense clips: give --clip-rate R (its sampling rate)")
    views = [dataclasses.replace(v, crop=c) for v in _temporal_views(run.cfg.view, temporal_views) for c in crops]
    suffix = ("" if temporal_views == spatial_views == 1 else f"@{temporal_views}x{spatial_views}") + tag
    results = {}
    for split in splits:
        read = [data[split]] if data and len(views) == 1 else [materialise(run.cache, v, split) for v in views]
        if not read[0].video_ids:
            continue
        probs = [probabilities(predict(run.head, d.x, run.cfg.batch_size, run.device), run.task.multi) for d in read]
        scores = {"mean": np.mean, "sum": np.sum, "max": np.max}[combine](np.stack(probs), axis=0)
        results.update(report_split(run.task, split, suffix, read[0].video_ids, read[0].labels,
                               _as_logits(scores, run.task.multi, combine, len(probs)), scores, out_dir))
    return results


def evaluate_windows(path: str, cache, splits=("test",), out_dir: str | None = None, window: int = 0,
                     stride: int = 0, aggregate: str = "max", pool: str | None = None,
                     manifest: str | None = None, tag: str = "") -> dict:
    """Sliding-window evaluation (the Charades video-transformer study's Charades protocol): windows of the head's own length
    W over a dense pool (``fps:F``, or ``stride:S``; the cache's first by default), starting every
    ``stride`` pool frames (default W: no overlap), plus one aligned to the end when the stride
    leaves a tail (train/clips.py ``window_starts``; per video in ``windows_<split>@...csv``, the
    mean coverage in ``<split>/window_coverage``); each window scored (softmax/sigmoid), then the
    video's score is their ``max`` or ``mean``. A video shorter than W is one window of repeated
    frames (uniform:W of its pool). Keys and files carry the protocol: ``test/mAP@w8s4max``."""
    if aggregate not in ("max", "mean"):
        raise OptionError("aggregate", f"expected max or mean, got {aggregate!r}")
    run = _load_run(path, cache, manifest)
    width = run.cfg.view.frames.fixed_length
    if window and window != width:
        raise FeatcacheError(f"--window {window}: the head was trained on {width}-frame clips ({run.cfg.view.frames}); "
                             f"windows must have its length (--window {width})")
    stride = stride or width
    if stride < 1:
        raise OptionError("stride", f"must be at least 1, got {stride}")
    # a clip cache's clips (clips:N, windows:W/S@fps:F) are windows too: one clip per window step
    policy, pool_name, pool_key = _cached_pool(run, pool, lambda p, text: not p.fixed or p.unit == "clip",
                                               "--pool {pool}", "sliding windows run over a dense pool of the cache",
                                               "extract with --frames fps:F or stride:S")
    layout = run.cfg.view.layout(run.cache.attrs)
    suffix = f"@w{width}s{stride}{aggregate}{pool_key}{tag}"
    results = {}
    for split in splits:
        records = run.cache.done_records(split)
        if not records:
            continue
        video_scores, placed = [], []
        for record in records:
            entry = run.cache.video(record["video_id"])
            positions = np.asarray(frame_positions(entry, policy))
            if len(positions) < width:
                windows, starts, tail = [positions[uniform_indices(len(positions), width)]], [0], None
            else:  # every stride, and one more aligned to the end when the stride leaves a tail
                starts, tail = window_starts(len(positions), width, stride)
                windows = [positions[s:s + width] for s in starts]
            placed.append((record["video_id"], len(positions), starts, tail,
                           coverage(len(positions), width, starts) if len(positions) >= width else 1.0))
            x = np.empty((len(windows), *layout.shape), dtype=np.float16)
            for i, window in enumerate(windows):
                fill_view(x[i], entry, window.tolist(), run.cfg.view, run.cache.attrs)
            probs = probabilities(predict(run.head, torch.from_numpy(x), run.cfg.batch_size, run.device), run.task.multi)
            video_scores.append(probs.max(axis=0) if aggregate == "max" else probs.mean(axis=0))
        scores = np.stack(video_scores)
        results.update(report_split(run.task, split, suffix, [r["video_id"] for r in records], [r["labels"] for r in records],
                               _as_logits(scores, run.task.multi, "mean", 1), scores, out_dir))
        results[f"{split}/pool{suffix}"] = pool_name
        results[f"{split}/window_coverage{suffix}"] = float(np.mean([p[4] for p in placed]))
        if out_dir:
            _write_windows(os.path.join(out_dir, f"windows_{split}{suffix}.csv"), pool_name, width, placed)
    return results


def _write_windows(path: str, pool: str, width: int, placed: list) -> None:
    """Per video: the pool, its length in frames, the window starts (pool positions), the start of
    the window added at the end (empty when the stride leaves no tail) and the coverage."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "pool", "pool_frames", "window", "starts", "tail_start", "coverage"])
        for video_id, length, starts, tail, cov in placed:
            w.writerow([video_id, pool, length, width, " ".join(map(str, starts)), "" if tail is None else tail,
                        f"{cov:.6f}"])


def _check_release_geometry(attrs: dict, protocol: str) -> None:
    """SlowFast's test crops (datasets/transform.py ``random_short_side_scale_jitter`` with
    min = max = TEST_CROP_SIZE, then ``uniform_crop``) and ST-Adapter's (dataset.py _generate_spatial_crops, L218) are
    crops of a frame whose short side was resized to the crop size; a cache whose frames were
    resized to a larger short side (timm's crop_pct) holds other pixels: refused."""
    pre = attrs.get("preprocess", {})
    short, size = pre.get("resize_short_side"), (pre.get("input_size") or [0])[-1]
    if short != size:
        raise FeatcacheError(
            f"--protocol {protocol}: the release crops {size} px from frames whose short side is resized to {size}; "
            f"this cache resized the short side to {short} (crop_pct {pre.get('crop_pct')}), so its crops hold other "
            f"pixels; it needs an extraction with the short side resized to the crop size (crop_pct 1.0, which "
            "featcache extract does not offer for this model), or use --protocol featcache")


def _write_views(path: str, protocol: str, placed: list, size: int, num_crops: int) -> None:
    """Per scored view: the source frames the protocol asks for, those the cache served, and the
    crop box the release takes in its resized frame (x0 y0 x1 y1; short side = ``size``): SlowFast's
    ``uniform_crop`` offsets 0 / ceil(margin / 2) / margin (transform.py L226-227), ST-Adapter's
    margin // 2 (dataset.py _generate_spatial_crops, L218)."""
    import math

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "protocol", "view", "crop", "source_frames", "served_frames", "crop_box"])
        for record, v, c, wanted, served in placed:
            width, height = record["source"].get("width"), record["source"].get("height")
            box = ""
            if width and height:
                long_side = int(math.floor(max(width, height) / min(width, height) * size))
                if protocol == "stadapter":
                    long_side = max(width, height) * size // min(width, height)
                margin = long_side - size
                centre = math.ceil(margin / 2) if protocol == "slowfast" else margin // 2
                offset = (0, centre, margin)[c] if num_crops == 3 else centre
                x0, y0 = (offset, 0) if width >= height else (0, offset)
                box = f"{x0} {y0} {x0 + size} {y0 + size}"
            w.writerow([record["video_id"], protocol, v, c, " ".join(map(str, wanted)),
                        " ".join(map(str, served)), box])


def _cached_pool(run, pool: str | None, usable, option: str, what: str, hint: str) -> tuple[FramePolicy, str, str]:
    """The cached pool ``pool`` (by default the cache's first one ``usable(policy, text)`` accepts),
    its name and its part of the result keys and file names: empty for the default pool (earlier
    names stay), else ``-`` and the pool's name without punctuation (``-stride2``, ``-fps4``), so two
    pools evaluated into one run never share a key or a file. Refused in one line naming the usable
    pools the cache holds; ``option`` may name ``{pool}``."""
    import re

    held = [p for p in run.cache.attrs["frames"]["policies"] if usable(parse_policy(p), p)]
    default = held[0] if held else ""
    pool = pool or default
    if not pool or pool not in held:
        raise FeatcacheError(f"{option.format(pool=pool or '(none)')}: {what} ({', '.join(held) or 'it holds none'}); {hint}")
    return parse_policy(pool), pool, "" if pool == default else "-" + re.sub(r"[^A-Za-z0-9.]+", "", pool)


def _evaluate_dense_clips(run, splits, out_dir, num_clips: int, crops: tuple, combine: str, rate: int,
                          pool: str | None, tag: str = "", protocol: str = "featcache") -> dict:
    """SlowFast's multi-view testing (see evaluate_checkpoint): every clip at every crop, scored,
    softmax/sigmoid per view, then combined. ``protocol`` places the clips (train/clips.py
    ``protocol_clip_indices``); a named release's protocol also writes ``views_<split>@...csv``."""
    from featcache.train.clips import PROTOCOLS, nearest_positions, protocol_clip_indices

    if protocol not in PROTOCOLS:
        raise OptionError("protocol", f"unknown {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if protocol != "featcache":
        _check_release_geometry(run.cache.attrs, protocol)

    if rate < 1:
        raise OptionError("clip_rate", f"must be at least 1, got {rate} (dense clips need --clip-rate R)")
    if num_clips < 1:
        raise OptionError("temporal_views", f"must be at least 1, got {num_clips}")
    policy, pool_name, pool_key = _cached_pool(run, pool, lambda p, text: isinstance(p, StridePolicy),  # a stride:S pool
                                     "--clip-rate", "dense clips are cut from a stride:S pool of the cache",
                                     "extract with --frames stride:1,...")
    views = [dataclasses.replace(run.cfg.view, crop=c) for c in crops]
    for view in views:
        view.check(run.cache.attrs)
    layout = run.cfg.view.layout(run.cache.attrs)
    frames = layout.frames
    named = "" if protocol == "featcache" else protocol
    suffix = f"@{named}{num_clips}x{len(crops)}r{rate}{pool_key}{tag}"
    results = {}
    for split in splits:
        records = run.cache.done_records(split)
        if not records:
            continue
        entries = [run.cache.video(r["video_id"]) for r in records]
        clips, rounded, placed = [], 0, []
        for entry, record in zip(entries, records):
            pos = np.asarray(frame_positions(entry, policy))  # the pool's positions among the cached frames
            source = entry.frame_indices[pos]
            per_video = []
            for v in range(num_clips):
                wanted = protocol_clip_indices(protocol, record["source"]["num_frames"], record["source"].get("fps"),
                                               frames, rate, v, num_clips)
                near, missed = nearest_positions(source, wanted)
                per_video.append(pos[near].tolist())
                rounded += missed
                placed += [(record, v, c, wanted, source[near]) for c in crops]
            clips.append(per_video)
        if out_dir and protocol != "featcache":
            _write_views(os.path.join(out_dir, f"views_{split}{suffix}.csv"), protocol, placed,
                         run.cache.attrs["preprocess"]["input_size"][-1], len(crops))
        probs = []
        for v in range(num_clips):
            for view in views:
                x = np.empty((len(entries), *layout.shape), dtype=np.float16)
                for i, entry in enumerate(entries):
                    fill_view(x[i], entry, clips[i][v], view, run.cache.attrs)
                logits = predict(run.head, torch.from_numpy(x), run.cfg.batch_size, run.device)
                probs.append(probabilities(logits, run.task.multi))
        scores = {"mean": np.mean, "sum": np.sum, "max": np.max}[combine](np.stack(probs), axis=0)
        results.update(report_split(run.task, split, suffix, [r["video_id"] for r in records],
                                    [r["labels"] for r in records],
                                    _as_logits(scores, run.task.multi, combine, len(probs)), scores, out_dir))
        results[f"{split}/clip_frames_rounded{suffix}"] = rounded / (len(entries) * num_clips * frames)
        results[f"{split}/pool{suffix}"] = pool_name
    return results


@dataclasses.dataclass
class _Run:
    cfg: object
    cache: Cache
    head: nn.Module
    task: Task
    device: torch.device


def _load_run(path: str, cache: Cache | None, manifest: str | None = None, head: nn.Module | None = None) -> _Run:
    """A trained head from its checkpoint, checked against the cache it will read. Labels and
    splits: ``cache``'s when it is already annotated (training's own evaluation), else those of
    ``manifest``, else the manifest the run was trained with (refused if it changed since), else
    the store's own."""
    ckpt = checkpoint.load(path)
    if "pretext" in ckpt:
        raise FeatcacheError(f"{path}: a {ckpt['pretext']['task']} pre-training; its score is val/top1 in "
                             "metrics.json; fine-tune it with featcache train --set init=RUN_DIR")
    cache = cache or open_cache(ckpt["cache"]["path"])
    if cache.fingerprint != ckpt["cache"]["fingerprint"]:
        raise FeatcacheError(f"{cache.path} (fingerprint {cache.fingerprint}) is not the cache this head was trained on "
                             f"(fingerprint {ckpt['cache']['fingerprint']}): {_what_differs(cache, ckpt['cache'])}")
    if manifest is not None or not isinstance(cache, AnnotatedCache):
        cache = _annotated(cache, ckpt, manifest)
    cfg = from_dict(ckpt["config"])
    device = resolve_device(cfg.device)
    head = checkpoint.build_head(ckpt) if head is None else head
    return _Run(cfg, cache, head.to(device), Task(ckpt["classes"], ckpt["multi_label"]), device)


def _what_differs(cache: Cache, trained: dict) -> str:
    """The fingerprint facts (cache/schema.py ``differing_facts``, as ``extract`` names them) in
    which ``cache`` differs from the cache a run was trained on, read from that cache's path when it
    is still there with the recorded fingerprint; else why they cannot be named."""
    from featcache.cache.schema import differing_facts

    path = trained["path"]
    try:
        original = open_cache(path)
    except Exception:  # noqa: BLE001 -- moved, deleted or unreadable: say so rather than fail here
        return (f"the cache it was trained on ({path}) is not there to compare, so the facts that differ "
                "cannot be named (other model, preprocessing, layers or frames)")
    if original.fingerprint != trained["fingerprint"]:
        return (f"{path} now holds another cache (fingerprint {original.fingerprint}), so the facts that differ "
                "cannot be named (other model, preprocessing, layers or frames)")
    diff = differing_facts(original.attrs, cache.attrs)
    return f"these facts differ from {path}'s: {', '.join(diff) or 'none named (fingerprint scheme changed)'}"


def _annotated(cache: Cache, ckpt: dict, manifest: str | None) -> AnnotatedCache:
    """The cache under the labels and splits an evaluation of ``ckpt`` uses (see _load_run)."""
    recorded = ckpt.get("manifest") or {}
    if manifest is None and recorded.get("path"):
        if not os.path.isfile(recorded["path"]):
            raise FeatcacheError(f"the manifest this run was trained with, {recorded['path']}, is gone; "
                                 "give --manifest M.csv")
        check_same_manifest(recorded, recorded["path"])
        manifest = recorded["path"]
    annotated = annotate(cache, manifest, ckpt["config"].get("val_fraction", 0.0))
    classes = annotated.annotations.classes()
    if manifest and classes != list(ckpt["classes"]):
        extra, lost = sorted(set(classes) - set(ckpt["classes"])), sorted(set(ckpt["classes"]) - set(classes))
        raise FeatcacheError(f"--manifest {manifest}: its class list differs from the run's ({len(classes)} vs "
                             f"{len(ckpt['classes'])} classes; new: {extra[:5]}, absent: {lost[:5]}); "
                             "evaluate with a manifest of the same classes")
    return annotated


def report_split(task: Task, split: str, suffix: str, video_ids: list[str], labels: list[list[str]], logits: np.ndarray,
            scores: np.ndarray, out_dir: str | None) -> dict:
    """Metrics of one split under one protocol; predictions and per-class files into ``out_dir``."""
    unknown = sorted({c for ls in labels for c in ls} - set(task.classes))
    if unknown:
        raise FeatcacheError(f"split {split}: labels {unknown} were not among the trained classes")
    m, cm = score(logits, task.targets(labels).numpy(), task)
    if out_dir:
        name = f"{split}{suffix}"
        write_predictions(os.path.join(out_dir, f"predictions_{name}.csv"), video_ids, labels, task.classes, scores)
        _write_per_class(out_dir, name, task, m, cm)
    return {f"{k}{suffix}": v for k, v in flat(m, split).items()}


def _temporal_views(view: View, count: int) -> list[View]:
    """The V views of multi-view testing (see evaluate_checkpoint)."""
    if count < 1:
        raise OptionError("temporal_views", f"must be at least 1, got {count}")
    if count == 1:
        return [view]
    pool = view.frames.multiview_pool(count)
    if pool is None:
        raise OptionError("temporal_views", f"the head was trained on {view.frames}; multi-view testing "
                             "serves V interleaved uniform:N views from a uniform:N*V pool, so it needs a uniform view")
    return [dataclasses.replace(view, frames=pool, subset=(v, count)) for v in range(count)]


def probabilities(logits: np.ndarray, multi: bool) -> np.ndarray:
    """Softmax per video (single-label) or sigmoid per class (multi-label): the scores that
    predictions files hold and views are combined in."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if multi else torch.softmax(t, dim=1)).numpy()


def _as_logits(scores: np.ndarray, multi: bool, combine: str, views: int) -> np.ndarray:
    """Scores back on the scale the metrics read (argmax / ranking / logit 0 = probability 0.5);
    a monotone map, so the metrics are recomputable from the predictions file alone."""
    p = scores / views if combine == "sum" else scores
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p)) if multi else np.log(p)


def write_predictions(path: str, video_ids: list[str], labels: list[list[str]], classes: list[str],
                      scores: np.ndarray) -> None:
    """``video_id, labels`` (true labels joined by ``;``), then one column per class: the score
    the metrics were computed from (softmax for single-label, sigmoid for multi-label)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "labels", *classes])
        for vid, ls, row in zip(video_ids, labels, scores.tolist()):
            w.writerow([vid, ";".join(ls), *(f"{v:.9g}" for v in row)])


def _write_per_class(out_dir: str, split: str, task: Task, m: dict, cm: np.ndarray | None) -> None:
    with open(os.path.join(out_dir, f"per_class_{split}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        if cm is None:
            w.writerow(["class", "ap"])  # empty: no positive in this split (not in mAP)
            w.writerows((c, "" if ap is None else ap) for c, ap in zip(task.classes, m["ap"]))
            return
        w.writerow(["class", "precision", "recall", "support"])
        w.writerows(zip(task.classes, m["precision"], m["recall"], cm.sum(axis=1).tolist()))
    with open(os.path.join(out_dir, f"confusion_{split}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true\\pred", *task.classes])
        w.writerows([c, *row] for c, row in zip(task.classes, cm.tolist()))
    _plot_confusion(os.path.join(out_dir, f"confusion_{split}.png"), task.classes, cm)


def _plot_confusion(path: str, classes: list[str], cm: np.ndarray) -> None:
    from featcache.train.figures import plot_confusion

    plot_confusion(path, classes, cm, title=os.path.basename(path)[len("confusion_"):-len(".png")])
