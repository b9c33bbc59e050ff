"""Export a store for temporal action localisation: ActionFormer's and OpenTAD's feature folders.

Both read one ``(T, C)`` float array per video (``np.load``) and an ActivityNet-style annotation
file (``{"database": {video: {"subset", "duration", "fps"/"frame", "annotations"}}}``), and both
map seconds to feature positions with a constant stride in frames and an offset:

- ActionFormer (happyharrycn/actionformer_release, ``libs/datasets/thumos14.py``,
  ``THUMOS14Dataset.__getitem__``): ``(seconds * fps - 0.5 * num_frames) / feat_stride``, with
  ``fps`` from the annotation entry when the config's ``default_fps`` is null.
- OpenTAD (sming256/OpenTAD, ``opentad/datasets/thumos.py`` ``get_gt`` and
  ``ThumosPaddingDataset.__getitem__``): ``int(seconds / duration * frame)``, then
  ``(frames - offset_frames) / snippet_stride`` with ``snippet_stride = feature_stride *
  sample_stride``; features read by ``LoadFeats`` (``opentad/datasets/transforms/loading.py``)
  from ``{data_path}/{prefix}{video}{suffix}.npy``.

featcache gives them that timeline from what it recorded: a feature pool must be evenly spaced on
some clock of rate ``R`` with an integer stride ``S`` (``stride:S`` on the source frame rate,
``fps:F`` with ``R = F, S = 1``, ``windows:W/S@fps:F`` with ``R = F``); the recorded timestamps
are checked against it, so a variable-frame-rate video that breaks the constant-rate assumption
both loaders make is refused with its drift named, never exported with shifted times.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from featcache.cache import schema
from featcache.cache.facts import VideoRecord
from featcache.cache.store import open_cache
from featcache.errors import FeatcacheError, OptionError
from featcache.spec.policy import parse_policy

TAL_FORMATS = ("actionformer", "opentad")
TOKEN_REDUCTIONS = ("cls", "mean")
EXPORT_FILE = "featcache_export.json"


def _timeline(policy, record: VideoRecord) -> tuple[float, int, int]:
    """(rate R, stride S, source frames per feature) of one video's pool: feature i starts at
    ``i * S / R`` seconds."""
    clock = policy.clock(record.source.fps)
    if clock is None:
        raise OptionError("pool", f"{policy} is not evenly spaced in time; temporal localisation needs a "
                                  "stride:S or fps:F pool (or windows:W/S@fps:F clips): extract with --frames stride:S")
    return clock


def _check_spacing(vid: str, times: np.ndarray, rate: float, stride: int, fps: float | None) -> None:
    """Features must sit at ``i * S / R`` seconds within half a source frame (the selection's
    own rounding); otherwise the loaders' seconds-to-position maths would shift them."""
    expected = np.arange(len(times)) * stride / rate
    tolerance = 0.5 / fps + 1e-6 if fps else 0.5 / rate + 1e-6
    drift = np.abs(times - expected)
    if len(drift) and drift.max() > tolerance:
        at = int(drift.argmax())
        raise FeatcacheError(f"{vid}: feature {at} starts at {times[at]:.3f} s, not {expected[at]:.3f} s "
                             f"(stride {stride} at {rate:g}/s); the video's frame rate is not constant, which "
                             "ActionFormer's and OpenTAD's time maths assume")


def _reduce(tokens: np.ndarray, layer: int, reduce: str, prefix: int) -> np.ndarray:
    """(T, L, N, C) -> (T, C) float32: one layer's prefix (CLS) token, or the mean of its patch
    tokens (of all tokens where none are patches)."""
    x = tokens[:, layer].astype(np.float32)
    if reduce == "cls":
        return x[:, 0]
    return (x[:, prefix:] if x.shape[1] > prefix else x).mean(axis=1)


def _annotations(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise OptionError("annotations", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise OptionError("annotations", f"{path} has no 'database' mapping (ActivityNet/ActionFormer style)")
    return data["database"]


@dataclass(frozen=True)
class TalExport:
    """What an export wrote: videos, the feature stride and frames per feature, action labels,
    annotated videos missing from the store, videos without segments."""

    videos: int
    stride: int | None
    frames_per_feature: int | None
    labels: int
    missing: tuple[str, ...]
    unannotated: int


def export_tal(path: str, fmt: str, out: str, pool: str | None = None, layer: int = -1, tokens: str = "cls",
               annotations: str | None = None) -> TalExport:
    """Write ``out/features/<video>.npy`` (T, C), ``out/annotations.json`` and
    ``out/featcache_export.json`` (the loader settings)."""
    if fmt not in TAL_FORMATS:
        raise OptionError("format", f"expected one of {', '.join(TAL_FORMATS)}, got {fmt!r}")
    if tokens not in TOKEN_REDUCTIONS:
        raise OptionError("tokens", f"expected cls or mean, got {tokens!r}")
    cache = open_cache(path)
    facts = cache.facts
    cached = facts.policies
    pool = pool or next((p for p in cached if parse_policy(p).clock(1.0) is not None), None)
    if pool is None or pool not in cached:
        raise OptionError("pool", f"{pool or 'no evenly spaced pool'}: the store holds {', '.join(cached)}; "
                                  "temporal localisation needs a stride:S or fps:F pool (extract with --frames stride:S)")
    policy = parse_policy(pool)
    prefix = int(facts.tokens.num_prefix_tokens or 0)
    if tokens == "cls" and not prefix:
        raise OptionError("tokens", f"{facts.model.name} has no prefix (CLS) token; use --tokens mean")
    layers = len(facts.layers)
    if not -layers <= layer < layers:
        raise OptionError("layer", f"{layer} is not one of the store's {layers} cached layers (-{layers}..{layers - 1})")
    if os.path.exists(out):
        raise FeatcacheError(f"{out} exists; choose a new output folder")
    given = _annotations(annotations)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(os.path.abspath(out)))
    try:
        summary = _write(cache, fmt, tmp, pool, policy, layer, tokens, prefix, given)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own unfinished folder, under a name no one else uses
        raise
    return summary


def _write(cache, fmt: str, tmp: str, pool: str, policy, layer: int, tokens: str, prefix: int, given: dict) -> TalExport:
    os.makedirs(os.path.join(tmp, "features"))
    database, dim, stride, width = {}, 0, None, None
    for vid in cache.video_ids():
        entry = cache.video(vid)
        record = entry.facts
        rate, stride, width = _timeline(policy, record)
        positions = np.asarray(record.policies[pool], dtype=np.int64)
        times = np.asarray(record.timestamps, dtype=np.float64)[positions]
        _check_spacing(vid, times, rate, stride, record.source.fps)
        feats = _reduce(entry.tokens[positions], layer, tokens, prefix)
        key = schema.video_key(vid)
        np.save(os.path.join(tmp, "features", f"{key}.npy"), feats)
        dim = feats.shape[1]
        database[key] = _entry(vid, record, rate, given.get(key, given.get(vid)))
    ids = set(cache.video_ids())
    missing = sorted(k for k in given if k not in database and k not in ids)
    with open(os.path.join(tmp, "annotations.json"), "w") as f:
        json.dump({"version": f"featcache export ({fmt})", "database": database}, f, indent=1)
    labels = sorted({a.get("label") for v in database.values() for a in v.get("annotations") if "label" in a})
    if fmt == "opentad":
        with open(os.path.join(tmp, "category_idx.txt"), "w") as f:
            f.write("".join(f"{label}\n" for label in labels))
    unannotated = sorted(k for k, v in database.items() if not v.get("annotations"))
    with open(os.path.join(tmp, EXPORT_FILE), "w") as f:
        json.dump({"format": fmt, "pool": pool, "layer": layer, "tokens": tokens, **_settings(fmt, stride, width, dim),
                   "videos_without_annotations": unannotated, "annotated_videos_not_in_store": missing,
                   "provenance": cache.attrs}, f, indent=1)
    return TalExport(len(database), stride, width, len(labels), tuple(missing), len(unannotated))


def _entry(vid: str, record: VideoRecord, rate: float, given: dict | None) -> dict:
    """One database entry: both loaders' fields, the user's segments and subset where given."""
    given = given or {}
    duration = float(record.num_frames) / float(record.source.fps or rate)
    return {"subset": given.get("subset") or record.split or "", "duration": duration, "fps": rate,
            "frame": int(round(duration * rate)), "annotations": list(given.get("annotations", [])),
            "featcache_video_id": vid}


def _settings(fmt: str, stride: int, width: int, dim: int) -> dict:
    """The loader's own configuration keys, with the values this export needs."""
    if fmt == "actionformer":
        # libs/datasets/thumos14.py THUMOS14Dataset(...) keyword arguments
        return {"dataset": {"json_file": "annotations.json", "feat_folder": "features", "file_prefix": "",
                            "file_ext": ".npy", "feat_stride": stride, "num_frames": width, "default_fps": None,
                            "input_dim": dim}}
    # opentad/datasets/base/padding_dataset.py PaddingDataset(...) and LoadFeats(...)
    return {"dataset": {"ann_file": "annotations.json", "data_path": "features", "class_map": "category_idx.txt",
                        "feature_stride": stride, "sample_stride": 1, "offset_frames": width // 2},
            "load_feats": {"feat_format": "npy", "prefix": "", "suffix": ""}, "input_dim": dim}
