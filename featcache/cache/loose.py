"""The loose layout of schema 1 (featcache rounds 1-2): one Zarr group per video.

    CACHE.zarr/
      zarr.json                root group; attributes = provenance
      videos/<key>/zarr.json   one group per video; attributes = the video's record
      videos/<key>/<array>/    tokens, luv_scores, token_scales, channel_scales, cut, side_crops:
                               each one uncompressed chunk ("0.0.0.0")
      .staging/                videos being written; renamed into videos/ when complete

Such stores still open, train and evaluate; ``featcache cache pack OLD --out NEW`` converts one
into the packed layout. :func:`write_loose` writes this layout exactly as round 2 did; only
benchmarks and tests use it (to compare the layouts and to build old stores to convert).
"""
from __future__ import annotations

import json
import os
import uuid

import numpy as np

from featcache.cache import schema
from featcache.cache.facts import VideoRecord
from featcache.errors import DamagedStore

CHUNK_KEYS = {"name": "v2", "separator": "."}


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None


def list_records(root: str) -> dict[str, dict]:
    """key -> record of every published video: each video's zarr.json, read directly."""
    records = {}
    videos = os.path.join(root, schema.VIDEOS)
    if os.path.isdir(videos):
        for entry in sorted(os.scandir(videos), key=lambda e: e.name):
            meta = read_json(os.path.join(entry.path, "zarr.json")) if entry.is_dir() else None
            if meta is not None:
                records[entry.name] = meta.get("attributes", {})
    return records


def read_array(root: str, key: str, name: str) -> np.ndarray | None:
    """One array of one video (None when the video has no such array): memory-mapped when it is
    one plain little-endian chunk (what featcache wrote), through zarr otherwise."""
    folder = os.path.join(root, schema.VIDEOS, key, name)
    meta = read_json(os.path.join(folder, "zarr.json"))
    if meta is None:
        return None
    codecs = meta.get("codecs", [])
    plain = (len(codecs) == 1 and codecs[0].get("name") == "bytes"
             and codecs[0].get("configuration", {}).get("endian", "little") == "little"
             and meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape") == meta.get("shape")
             and meta.get("chunk_key_encoding") == {"name": "v2", "configuration": {"separator": "."}})
    if plain and np.dtype("<u2").isnative:
        path = os.path.join(folder, ".".join("0" * len(meta["shape"])))
        shape, dtype = tuple(meta["shape"]), np.dtype(meta["data_type"])
        size = int(np.prod(shape)) * dtype.itemsize
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            raise DamagedStore(f"{path}: chunk missing or truncated (expected {size} bytes); "
                               f"run featcache cache verify {root}")
        return np.memmap(path, dtype=dtype, mode="r", shape=shape) if size else np.zeros(shape, dtype)
    import zarr

    return zarr.open_array(folder, mode="r")[...]


def staged(root: str) -> list[str]:
    folder = os.path.join(root, schema.STAGING)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def write_loose(path: str, attrs: dict, videos: list[tuple[dict, dict[str, np.ndarray]]]) -> None:
    """Write a schema-1 store as round 2 did: ``videos`` are (record, {array name: array}); a
    record whose status is ``failed`` gets no arrays. Each video is staged, then renamed in."""
    import zarr

    root_attrs = dict(attrs, schema_version=1)
    if not os.path.exists(os.path.join(path, "zarr.json")):
        root = zarr.create_group(zarr.storage.LocalStore(path), attributes=root_attrs)
        root.create_group(schema.VIDEOS)
    for record, arrays in videos:
        key = VideoRecord.from_json(record).key
        stage = os.path.join(path, schema.STAGING, f"{key}@{uuid.uuid4().hex[:8]}")
        group = zarr.create_group(zarr.storage.LocalStore(stage), attributes=record)
        for name, value in arrays.items():
            arr = group.create_array(name, shape=value.shape, chunks=value.shape, dtype=value.dtype,
                                     compressors=None, chunk_key_encoding=CHUNK_KEYS)
            arr[...] = value
        os.rename(stage, os.path.join(path, schema.VIDEOS, key))
