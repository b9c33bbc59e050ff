"""Pure facts about the cache layout: names, keys, fingerprints. No zarr here.

Packed layout (schema 2, the default; see packed.py and docs/cache-format.md):

    CACHE.zarr/
      zarr.json                       root group; attributes = provenance
      segments/zarr.json              group
      segments/<segment>/zarr.json    one group per writer process (or roll-over)
      segments/<segment>/table/       one fixed-width row per published video (index.py), with
                                      ids/, labels/, positions/ and index/ (JSON lines: records)
      segments/<segment>/<array>/     tokens, luv_scores, token_scales, channel_scales, cut,
                                      side_crops, views, view_scales: rows of many videos in one data file
                                      ("0.0.0.0"); zarr.json written when the segment is sealed

Loose layout (schema 1, rounds 1-2; read only, see loose.py): ``videos/<key>/`` per video.
"""
from __future__ import annotations

import hashlib
import json
import re

SCHEMA_VERSION = 2  # 1: loose (one folder per video), 2: packed segments
VIDEOS = "videos"  # schema 1
SEGMENTS = "segments"  # schema 2
PACKED_LAYOUT = ("packed: segments/<segment>/table/0 lists the videos of each segment (fixed-width rows: "
                 "featcache.cache.index.TABLE) and index/0 their records (JSON lines, with rows [start, count] "
                 "per array); segments/<segment>/<array> holds their rows concatenated")
STAGING = ".staging"
TOKENS = "tokens"
LUV_SCORES = "luv_scores"
CUT = "cut"  # (T, N, C) float16: the residual stream entering the cut block (extract --cut-block)
SIDE_CROPS = "side_crops"  # (2, T, L, N, C): the first and last of 3 spatial crops (extract --crops 3)
# (K, T, L, N, C): K augmented training views of every cached frame (extract --train-views K)
VIEWS = "views"
VIEW_SCALES = "view_scales"  # (K, T, L, N) float16: per-token scales of int8 views (the video's channel scales)
STATUSES = ("done", "failed")
TOKEN_SCALES = "token_scales"  # (T, L, N) float16: per-token scales of int8 tokens
CHANNEL_SCALES = "channel_scales"  # (L, C) float32: per-channel scales of int8 tokens
STORAGE_DTYPES = ("float16", "float32", "int8")
ROOT_KEYS = ("schema_version", "featcache_version", "fingerprint", "model", "preprocess", "layers",
             "tokens", "compute", "frames", "storage")
VIDEO_KEYS = ("video_id", "path", "split", "labels", "source", "frame_indices", "timestamps", "policies")

# Root-attribute sections that decide what the tokens mean: two runs may share a store only
# when all of them agree.
FINGERPRINT_KEYS = ("model", "preprocess", "layers", "tokens", "compute", "frames", "storage", "cut", "crops",
                    "views")
# the policy list grows when policies are added to a store (incremental pools): the tokens of a
# frame mean the same whatever else is cached, so it does not enter the fingerprint
_VOLATILE = {("model", "num_params"), ("compute", "device_type"), ("frames", "policies"), ("frames", "added")}
_OPTIONAL = {"cut", "crops", "views"}

_PLAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def video_key(video_id: str) -> str:
    """A directory name for a video id that cannot escape the store.

    Plain ids (letters, digits, ``._-``, not starting with a dot, no ``..``) are used as they
    are; any other id becomes a sanitised prefix plus ``~`` and a hash of the id. ``~`` never
    occurs in plain ids, so the two forms cannot collide.
    """
    if _PLAIN_ID.fullmatch(video_id) and ".." not in video_id:
        return video_id
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("._")[:64] or "video"
    digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:16]
    return f"{safe}~{digest}"


def fingerprint_facts(attrs: dict) -> dict:
    """The part of the root attributes that must match for two runs to share a store."""
    facts = {}
    for key in FINGERPRINT_KEYS:
        value = attrs.get(key)
        if key in _OPTIONAL and value is None:
            continue  # absent optional sections leave the fingerprints of older stores unchanged
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if (key, k) not in _VOLATILE}
        facts[key] = value
    return facts


def fingerprint(attrs: dict) -> str:
    """A short stable hash of :func:`fingerprint_facts`; stage 2 checkpoints record it."""
    text = json.dumps(fingerprint_facts(attrs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differing_facts(old: dict, new: dict) -> list[str]:
    """Dotted names of the fingerprint facts that differ between two root attribute dicts."""
    a, b = fingerprint_facts(old), fingerprint_facts(new)
    out = []
    for key in FINGERPRINT_KEYS:
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += [f"{key}.{k}" for k in sorted(set(a[key]) | set(b[key])) if a[key].get(k) != b[key].get(k)]
        elif a.get(key) != b.get(key):
            out.append(key)
    return out
