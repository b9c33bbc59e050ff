"""Export a cache to HDF5 or per-video .npy (provenance carried along), and import HDF5 feature
files (a featcache export, or a foreign dump with one dataset per video) into a store."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from featcache.cache import schema
from featcache.cache.facts import StoreAttrs, VideoRecord
from featcache.cache.store import open_cache, to_json
from featcache.cache.writer import CacheWriter
from featcache.data.manifest import read_manifest
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.policy import UniformPolicy
from featcache.spec.view import parse_policy
from featcache.video.select import uniform_indices

FORMATS = ("hdf5", "npy")
HDF5_FORMAT = "featcache-hdf5-1"


def export_cache(path: str, fmt: str, out: str) -> int:
    """Write every done video (and the failure records); returns the number of videos."""
    if fmt not in FORMATS:
        raise OptionError("format", f"expected hdf5 or npy, got {fmt!r}")
    cache = open_cache(path)
    if os.path.exists(out):
        raise FeatcacheError(f"{out} exists; choose a new output path")
    entries = [cache.video(vid) for vid in cache.video_ids()]
    failed = {r.key: r.to_json() for r in map(VideoRecord.from_json, cache.records_of(cache.video_ids("failed"), "failed"))}
    (_export_hdf5 if fmt == "hdf5" else _export_npy)(cache, entries, failed, out)
    return len(entries)


def _export_hdf5(cache, entries, failed, out: str) -> None:
    import h5py

    with h5py.File(out + ".tmp", "w") as f:
        f.attrs["format"] = HDF5_FORMAT
        f.attrs["provenance"] = json.dumps(cache.attrs)
        videos = f.create_group("videos")
        for e in entries:
            g = videos.create_group(e.key)
            g.attrs["record"] = json.dumps(e.record)
            g.create_dataset("tokens", data=e.tokens)  # (T, L, N, C)
            g.create_dataset("frame_indices", data=e.frame_indices)
            g.create_dataset("timestamps", data=e.timestamps)
            if e.luv_scores is not None:
                g.create_dataset("luv_scores", data=e.luv_scores)
        fails = f.create_group("failed")
        for key, record in failed.items():
            fails.create_group(key).attrs["record"] = json.dumps(record)
    os.replace(out + ".tmp", out)


def _export_npy(cache, entries, failed, out: str) -> None:
    os.makedirs(os.path.join(out, "videos"))
    with open(os.path.join(out, "provenance.json"), "w") as f:
        json.dump(cache.attrs, f, indent=2)
    for e in entries:
        np.save(os.path.join(out, "videos", f"{e.key}.npy"), e.tokens)
        record = dict(e.record, luv_scores=None if e.luv_scores is None else e.luv_scores.tolist())
        with open(os.path.join(out, "videos", f"{e.key}.json"), "w") as f:
            json.dump(record, f)
    with open(os.path.join(out, "failed.json"), "w") as f:
        json.dump(list(failed.values()), f, indent=2)


def import_hdf5(src: str, out: str, manifest: str | None = None, model_name: str = "unknown",
                frames: str | None = None) -> int:
    """Build a store from an HDF5 file; returns the number of videos imported."""
    import h5py

    if not os.path.isfile(src):
        raise FeatcacheError(f"no such file: {src}")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise FeatcacheError(f"{src}: not an HDF5 file ({exc})") from None
    with f:
        if f.attrs.get("format") == HDF5_FORMAT:
            return _import_featcache(f, out)
        if manifest is None:
            raise FeatcacheError(f"{src} is not a featcache export: give --manifest with the videos' labels and splits")
        return _import_foreign(f, src, out, manifest, model_name, frames)


def _import_featcache(f, out: str) -> int:
    attrs = json.loads(f.attrs["provenance"])
    with CacheWriter.open(out, {k: v for k, v in attrs.items() if k not in ("fingerprint", "created_at", "layout")}) \
            as writer:
        if writer.fingerprint != StoreAttrs.from_json(attrs).fingerprint:
            raise FeatcacheError("the imported provenance does not reproduce its fingerprint; the file was altered")
        for g in f["videos"].values():
            record = json.loads(g.attrs["record"])
            luv = g["luv_scores"][...] if "luv_scores" in g else None
            writer.write_video(record, g["tokens"][...], luv)
        for g in f["failed"].values():
            record = json.loads(g.attrs["record"])
            writer.write_failure(record, VideoRecord.from_json(record).reason or "")
    return len(f["videos"])


def _import_foreign(f, src: str, out: str, manifest: str, model_name: str, frames: str | None) -> int:
    """One dataset per video id, (T, C), (T, N, C) or (T, L, N, C); labels and splits from the manifest."""
    items = {it.video_id: it for it in read_manifest(manifest)}
    datasets = {name: f[name] for name in f if hasattr(f[name], "shape")}
    missing = sorted(set(items) - set(datasets))
    if not datasets or missing:
        raise FeatcacheError(f"{src}: no dataset for video(s) {', '.join(missing[:3]) or '(none)'}; expected one "
                             "top-level dataset per manifest video_id")
    shapes = {name: _as_tokens_shape(d.shape, name) for name, d in datasets.items() if name in items}
    lengths = {s[0] for s in shapes.values()}
    if len({s[1:] for s in shapes.values()}) != 1:
        raise FeatcacheError(f"{src}: the videos' feature shapes differ beyond the frame axis")
    if frames is None and len(lengths) > 1:
        raise FeatcacheError(f"{src}: videos have {min(lengths)}-{max(lengths)} frames; "
                             "give --frames uniform:K to resample every video to K frames")
    try:
        policy = parse_policy(frames or f"uniform:{lengths.pop()}")
    except ValueError as exc:
        raise OptionError("frames", f"{exc}") from None
    if not isinstance(policy, UniformPolicy):
        raise OptionError("frames", "imported features can only be resampled uniformly (uniform:K)")
    _, layers, tokens, dim = next(iter(shapes.values()))
    with open(src, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    attrs = {
        "featcache_version": _version(),
        "model": {"name": model_name, "args": {}, "weights": {"source": "imported", "path": os.path.abspath(src),
                                                              "sha256": digest},
                  "num_params": 0, "kind": "imported"},
        "preprocess": {"note": "unknown: imported features"},
        "layers": list(range(layers)),
        "tokens": {"num_prefix_tokens": 1 if tokens == 1 else 0, "grid": [0, 0] if tokens == 1 else _grid(tokens),
                   "num_tokens": tokens, "dim": dim, "final_norm": False},
        "compute": {"precision": "unknown", "device_type": "unknown"},
        "frames": {"policies": [str(policy)], "luv_size": None, "short_videos": "repeat"},
        "manifest": {"path": os.path.abspath(manifest)},
        "storage": {"dtype": "float16", "tokens_dims": ["frame", "layer", "token", "channel"]},
    }
    with CacheWriter.open(out, attrs) as writer:
        return _write_foreign(writer, shapes, datasets, items, policy, src)


def _write_foreign(writer, shapes, datasets, items, policy, src) -> int:
    done = writer.done_keys()
    for vid, shape in shapes.items():
        if schema.video_key(vid) in done:
            continue
        x = datasets[vid][...].reshape(shape)
        pool = np.unique(uniform_indices(shape[0], policy.frames))
        it = items[vid]
        record = {"video_id": vid, "path": it.path, "split": it.split, "labels": list(it.labels), "extra": it.extra,
                  "source": {"num_frames": shape[0], "fps": None, "width": None, "height": None,
                             "decoder": "imported", "decoder_note": f"from {os.path.basename(src)}"},
                  "frame_indices": pool, "timestamps": np.zeros(len(pool)), "num_cached_frames": len(pool),
                  "policies": {str(policy): np.searchsorted(pool, uniform_indices(shape[0], policy.frames))},
                  "short": shape[0] < policy.frames}
        writer.write_video(to_json(record), x[pool], None)
    return len(shapes)


def _as_tokens_shape(shape: tuple, name: str) -> tuple[int, int, int, int]:
    if len(shape) == 2:
        return shape[0], 1, 1, shape[1]  # (T, C): one token per frame
    if len(shape) == 3:
        return shape[0], 1, shape[1], shape[2]  # (T, N, C)
    if len(shape) == 4:
        return tuple(shape)
    raise FeatcacheError(f"dataset {name!r} has shape {shape}; expected (T, C), (T, N, C) or (T, L, N, C)")


def _grid(tokens: int) -> list[int]:
    side = int(round(tokens ** 0.5))
    return [side, side] if side * side == tokens else [1, tokens]


def _version() -> str:
    from featcache.version import __version__

    return __version__
