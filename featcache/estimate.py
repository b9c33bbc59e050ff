"""`featcache estimate`: what an extraction will write, before it runs.

Bytes come from the same array plan the writer uses (``store.video_arrays``) and from the
metadata zarr itself serialises (``GroupMetadata`` / ``ArrayV3Metadata`` rendered in memory), so
the estimate counts what ``Cache.size_on_disk`` later counts: every file of the store. Each
video's frame count is read from its container header (PyAV, no decoding); timestamps are
rendered as the default decoder records them (decord: float32 seconds; PyAV for formats without
a seek index). Known gaps: key frames whose count is fixed but whose positions depend on the
pixels are assumed to fall anywhere in the video, so the share of them that coincides with other
policies' frames is estimated, not known (exact when key frames are the only policy), and a header that misstates the frame count misleads the estimate as it would
mislead a user (``extract`` warns about such files).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from featcache.cache import schema
from featcache.cache.store import arrays_bytes, frame_bytes, to_json, video_arrays
from featcache.manifest import VideoItem, read_manifest
from featcache.video.decode import SEQUENTIAL_FORMATS, DecodeError, _open_pyav, _expected_frames, check_file
from featcache.video.select import fps_indices, uniform_indices


@dataclass
class Estimate:
    videos: int = 0
    frames: int = 0  # cached frames (the union of the policies', per video)
    files: int = 0
    bytes: int = 0
    token_bytes_per_frame: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # video id -> reason (extract will fail them)
    forward_frames_per_s: float = 0.0  # the model alone, measured here at its best batch size
    batch_size: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_per_video(self) -> float:
        return self.bytes / self.videos if self.videos else 0.0

    @property
    def model_seconds(self) -> float:
        return self.frames / self.forward_frames_per_s if self.forward_frames_per_s else 0.0

    def as_dict(self) -> dict:
        return {"videos": self.videos, "frames": self.frames, "files": self.files, "bytes": self.bytes,
                "bytes_per_video": round(self.bytes_per_video, 1), "token_bytes_per_frame": self.token_bytes_per_frame,
                "unreadable": self.unreadable, "forward_frames_per_s": round(self.forward_frames_per_s, 2),
                "batch_size": self.batch_size, "model_seconds": round(self.model_seconds, 1), "notes": self.notes}


def header_frames(path: str) -> tuple[int, float, str, int, int]:
    """(frame count, fps, container format, width, height) from the container header; no frame
    is decoded."""
    check_file(path)
    container, stream = _open_pyav(path)
    try:
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        n = int(stream.frames or 0) or (_expected_frames(container, stream) or 0)
        return n, fps, container.format.name, stream.width, stream.height
    finally:
        container.close()


def estimate(cfg, measure: bool = True) -> Estimate:
    """Estimate the store ``run_extract(cfg)`` writes (a new store: already cached videos are not subtracted)."""
    from featcache.extract import root_attrs, validate
    from featcache.encoder import FrozenEncoder

    validate(cfg)
    items = read_manifest(cfg.manifest)
    encoder = FrozenEncoder(cfg.encoder)
    attrs = to_json(root_attrs(cfg, encoder))
    attrs = dict(attrs, fingerprint=schema.fingerprint(attrs), schema_version=schema.SCHEMA_VERSION,
                 created_at="2026-01-01T00:00:00+00:00")
    est = Estimate(token_bytes_per_frame=frame_bytes(attrs))
    est.bytes += _group_bytes(attrs) + _group_bytes({})  # root + videos/
    est.files += 2
    arrays_meta: dict[tuple, tuple[int, int]] = {}
    needs_luv = any(p.kind == "keyframes" for p in cfg.policies)
    for item in items:
        try:
            n, fps, fmt, width, height = header_frames(item.path)
            if n <= 0:
                raise DecodeError("the container header gives no frame count")
        except DecodeError as exc:
            est.unreadable[item.video_id] = str(exc)
            est.bytes += _group_bytes(_record(item, status="failed", reason=str(exc)))
            est.files += 1
            continue
        record, t = _video_record(item, cfg, n, fps, fmt, needs_luv, (width, height))
        plan = video_arrays(attrs, t, n if needs_luv else None)
        key = tuple((name, shape, kind) for name, shape, kind, _ in plan)
        if key not in arrays_meta:
            arrays_meta[key] = _arrays_meta_bytes(plan)
        meta, files = arrays_meta[key]
        est.bytes += _group_bytes(record) + meta + arrays_bytes(plan)
        est.files += 1 + files
        est.videos += 1
        est.frames += t
    if any(p.kind == "keyframes" for p in cfg.policies) and len(cfg.policies) > 1:
        est.notes.append("key frames are assumed to fall anywhere in the video: their overlap with the other "
                         "policies' frames is estimated, not known")
    if measure and est.frames:
        from featcache.batchsize import probe

        entry, _ = probe(encoder)
        est.batch_size = int(entry["batch_size"])
        est.forward_frames_per_s = float(entry["frames_per_s"][str(est.batch_size)])
    return est


def _record(item: VideoItem, **extra) -> dict:
    return {"video_id": item.video_id, "path": item.path, "split": item.split, "labels": list(item.labels),
            "extra": item.extra, **extra}


def _video_record(item: VideoItem, cfg, n: int, fps: float, fmt: str, needs_luv: bool,
                  size: tuple[int, int]) -> tuple[dict, int]:
    """The record extract would write for a video of ``n`` frames, and its cached frame count."""
    picked, keyframes = {}, {}
    max_count = max([p.count for p in cfg.policies if p.fixed] or [1])
    for policy in cfg.policies:
        if policy.kind == "uniform":
            picked[str(policy)] = uniform_indices(n, policy.count)
        elif policy.kind == "stride":
            picked[str(policy)] = np.arange(0, n, policy.count)
        elif policy.kind == "fps":
            picked[str(policy)] = fps_indices(np.arange(n) / fps, policy.count)
        else:  # positions depend on the pixels (see _video_record's callers' note)
            keyframes[str(policy)] = np.unique(uniform_indices(n, policy.count))
    known = np.unique(np.concatenate(list(picked.values()))) if picked else np.zeros(0, np.int64)
    positions = {k: np.searchsorted(known, v).tolist() for k, v in picked.items()}
    extra = [known]
    for name, idx in keyframes.items():
        # key frames anywhere in the video: a fraction len(known)/n of them is expected to be frames
        # already taken; placeholders with the digits of real indices, after the known frames
        new = idx[:int(round(len(idx) * (1 - sum(len(e) for e in extra) / n)))]
        start = sum(len(e) for e in extra)
        positions[name] = list(range(start, start + len(new)))
        extra.append(new)
    indices = np.sort(np.concatenate(extra))
    pool_size = len(indices)
    stamps = indices / fps
    if fmt not in SEQUENTIAL_FORMATS and cfg.decoder != "pyav":  # decord reports float32 seconds
        stamps = stamps.astype(np.float32).astype(np.float64)
    source = {"num_frames": n, "fps": fps, "width": size[0], "height": size[1],
              "decoder": "pyav" if fmt in SEQUENTIAL_FORMATS or cfg.decoder == "pyav" else "decord",
              "decoder_note": "", "expected_frames": n, "truncated": False}
    record = _record(item, source=source, frame_indices=indices.tolist(), timestamps=stamps.tolist(),
                     policies=positions, num_cached_frames=pool_size, short=n < max_count, status="done",
                     has_luv_scores=needs_luv)
    return record, pool_size


def _group_bytes(attrs: dict) -> int:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    docs = GroupMetadata(attributes=to_json(attrs)).to_buffer_dict(default_buffer_prototype())
    return sum(len(b.to_bytes()) for b in docs.values())


def _arrays_meta_bytes(plan: list[tuple]) -> tuple[int, int]:
    """(bytes, files) of the arrays' metadata and chunk files, rendered by zarr in memory."""
    import zarr

    from featcache.cache.store import _CHUNK_KEYS

    store = zarr.storage.MemoryStore()
    group = zarr.create_group(store)
    for name, shape, kind, dims in plan:
        group.create_array(name, shape=shape, chunks=shape, dtype=kind, compressors=None,
                           chunk_key_encoding=_CHUNK_KEYS, dimension_names=dims)
    docs = {k: v for k, v in store._store_dict.items() if k.endswith("zarr.json") and k != "zarr.json"}
    return sum(len(v.to_bytes()) for v in docs.values()), 2 * len(docs)  # metadata + one chunk file each


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n}"
