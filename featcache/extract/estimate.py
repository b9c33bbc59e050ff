"""`featcache estimate`: what an extraction will write, before it runs.

The estimate replays the packed writer's accounting (``cache/packed.py``): the same array plan
(``packed.row_plan``), the same index files (``packed.index_bytes``, with the rows each video
gets), the same seal (shard indexes and each array's ``zarr.json``, rendered by zarr itself) and
the same roll-over into new segments, so it counts what ``Cache.size_on_disk`` later counts:
every file of the store. Each video's frame count is read from its container header (PyAV, no
decoding); timestamps are rendered as the chosen decoder records them (PyAV, the default:
float64 seconds; decord: float32 seconds). Key frames whose count is fixed but whose
positions depend on the pixels are assumed to fall anywhere in the video, so the share of them
that coincides with other policies' frames is estimated, not known: ``bytes_min``/``bytes_max``
bound it (every key frame already taken / none taken); exact when key frames are the only
policy. A header that misstates the frame count misleads the estimate as it would mislead a
user (``extract`` warns about such files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from featcache.cache import index, packed, schema
from featcache.cache.facts import StoreAttrs, store_attrs
from featcache.cache.store import frame_bytes, to_json
from featcache.data.manifest import VideoItem, read_manifest
from featcache.spec.policy import scores_needed, short_below
from featcache.video.decode import SEQUENTIAL_FORMATS, DecodeError, check_file, constant_rate_clock, display_fields, expected_frames, open_pyav
from featcache.video.prepare import decoder_log
from featcache.video.select import policy_indices, uniform_indices


@dataclass
class Estimate:
    videos: int = 0
    frames: int = 0  # cached frames (the union of the policies', per video)
    forwards: int = 0  # frames through the model: each cached frame's crops and training views
    files: int = 0
    bytes: int = 0
    bytes_min: int = 0  # key frames with other policies: every key frame among the other policies' frames
    bytes_max: int = 0  # ... and none of them
    token_bytes_per_frame: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # video id -> reason (extract will fail them)
    forward_frames_per_s: float = 0.0  # the model alone, measured here at its best batch size
    batch_size: int = 0
    notes: list[str] = field(default_factory=list)
    unit: str = "frame"  # what a cached row is: a frame, or a clip of a video encoder

    @property
    def bytes_per_video(self) -> float:
        return self.bytes / self.videos if self.videos else 0.0

    @property
    def model_seconds(self) -> float | None:
        """Seconds of the model alone; None when it was not timed (``--no-time``, video encoders)."""
        return self.forwards / self.forward_frames_per_s if self.forward_frames_per_s else None

    def as_dict(self) -> dict:
        return {"videos": self.videos, "frames": self.frames, "forwards": self.forwards, "files": self.files, "bytes": self.bytes,
                "bytes_min": self.bytes_min, "bytes_max": self.bytes_max,
                "bytes_per_video": round(self.bytes_per_video, 1), "token_bytes_per_frame": self.token_bytes_per_frame,
                "unreadable": self.unreadable, "forward_frames_per_s": round(self.forward_frames_per_s, 2),
                "batch_size": self.batch_size, "model_seconds": None if self.model_seconds is None else round(self.model_seconds, 1), "notes": self.notes,
                "unit": self.unit}


def _architecture_only(enc, policies):
    """The encoder without its weights (``--no-time``): bytes depend only on the architecture, so
    a timm model is built with random weights and its provenance given the weights facts of the
    same length the real ones have (the store's metadata bytes), without reading or downloading
    them. Video encoders are built as they are."""
    import dataclasses

    from featcache.extract.video_encoders import VIDEO_PREFIXES, make_encoder

    if enc.model.startswith(VIDEO_PREFIXES) or enc.weights == "random":
        return make_encoder(enc, policies)
    encoder = make_encoder(dataclasses.replace(enc, weights="random"), policies)
    if enc.weights == "hub":
        pc = encoder.model.pretrained_cfg
        encoder.weights_info = {"source": "hub", "tag": pc.get("tag"), "hf_hub_id": pc.get("hf_hub_id"),
                                "url": pc.get("url")}
    else:  # the file's sha256 is 64 hex digits, whatever the file
        encoder.weights_info = {"source": "file", "path": os.path.abspath(enc.weights), "sha256": "0" * 64}
    return encoder


def header_frames(path: str) -> tuple[int, float, str, int, int, dict]:
    """(frame count, fps, container format, width, height, the stream clock a constant-rate
    decode records) from the container header; no frame is decoded."""
    check_file(path)
    container, stream = open_pyav(path)
    try:
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        n = int(stream.frames or 0) or (expected_frames(container, stream) or 0)
        return n, fps, container.format.name, stream.width, stream.height, constant_rate_clock(stream, n)
    finally:
        container.close()


def estimate(cfg, measure: bool = True) -> Estimate:
    """Estimate the store ``run_extract(cfg)`` writes (a new store: already cached videos are not subtracted)."""
    from featcache.extract.pipeline import root_attrs, task_name, validate
    from featcache.extract.video_encoders import make_encoder

    validate(cfg)
    items = read_manifest(cfg.manifest)
    encoder = make_encoder(cfg.encoder, cfg.policies) if measure else _architecture_only(cfg.encoder, cfg.policies)
    clip = getattr(encoder, "clip_spec", None)  # a video encoder: rows are clips
    attrs = to_json(root_attrs(cfg, encoder))
    attrs = dict(attrs, fingerprint=schema.fingerprint(attrs), schema_version=schema.SCHEMA_VERSION,
                 created_at="2026-01-01T00:00:00+00:00")  # the length of a real timestamp
    est = Estimate(token_bytes_per_frame=frame_bytes(attrs), unit="frame" if clip is None else "clip")
    needs_luv = scores_needed(cfg.policies)
    task = task_name(cfg.manifest, cfg.shard)
    facts = store_attrs(attrs)
    expected, low, high = (_StoreBytes(attrs, task) for _ in range(3))
    stores = {"expected": expected, "min": low, "max": high}  # how key frames overlap the other policies' frames
    for item in items:
        try:
            n, fps, fmt, width, height, clock = header_frames(item.path)
            if n <= 0:
                raise DecodeError("the container header gives no frame count")
        except DecodeError as exc:
            est.unreadable[item.video_id] = str(exc)
            for store in stores.values():
                store.add(_record(item, status="failed", reason=str(exc)), {})
            continue
        for overlap, store in stores.items():
            record, t = (_video_record(item, cfg, n, fps, fmt, needs_luv, (width, height), clock, overlap)
                         if clip is None else _clip_record(item, cfg, clip, n, fps, (width, height), clock))
            if cfg.train_views:  # the views extract draws (the same boxes: the same seed, id and frame size)
                record["views"] = _views(item, cfg, facts, width, height)
            rows = {schema.TOKENS: t, schema.LUV_SCORES: n if needs_luv else 0, schema.TOKEN_SCALES: t,
                    schema.CHANNEL_SCALES: 1, schema.CUT: t, schema.SIDE_CROPS: t, schema.VIEWS: t,
                    schema.VIEW_SCALES: t}
            store.add(record, rows)
            if overlap == "expected":
                est.videos += 1
                est.frames += t
                est.forwards += t * (cfg.crops + cfg.train_views)  # frames through the model: crops and views
    for store in stores.values():
        store.seal()
    est.bytes, est.files = expected.bytes, expected.files
    est.bytes_min, est.bytes_max = low.bytes, high.bytes
    if scores_needed(cfg.policies) and len(cfg.policies) > 1:
        est.notes.append("key frames are assumed to fall anywhere in the video: their overlap with the other "
                         "policies' frames is estimated, not known")
    if clip is not None and measure and est.frames:
        est.notes.append("model time is not measured for video encoders (rows are clips)")
    elif measure and est.frames:
        from featcache.extract.batchsize import probe

        entry, _ = probe(encoder)
        est.batch_size = int(entry["batch_size"])
        est.forward_frames_per_s = float(entry["frames_per_s"][str(est.batch_size)])
    return est


def _views(item: VideoItem, cfg, facts: StoreAttrs, width: int, height: int) -> list[dict]:
    from featcache.video.decode import resize_to_short_side
    from featcache.video.views import draw_views

    w, h = resize_to_short_side(width, height, facts.preprocess.resize_short_side)
    return draw_views(cfg.view_aug, cfg.train_views, cfg.view_seed, item.video_id, w, h, (width, height))


def _record(item: VideoItem, **extra) -> dict:
    return {"video_id": item.video_id, "path": item.path, "split": item.split, "labels": list(item.labels),
            "extra": item.extra, **extra}


def _video_record(item: VideoItem, cfg, n: int, fps: float, fmt: str, needs_luv: bool,
                  size: tuple[int, int], clock: dict, overlap: str = "expected") -> tuple[dict, int]:
    """The record extract would write for a video of ``n`` frames, and its cached frame count.
    ``overlap``: how many key frames coincide with the other policies' frames (expected: as many
    as chance gives; min: as few as possible, all new frames; max: as many as possible)."""
    picked, keyframes = {}, {}
    max_count = short_below(cfg.policies)
    for policy in cfg.policies:
        if policy.needs_scores:  # positions depend on the pixels (see _video_record's callers' note)
            keyframes[str(policy)] = np.unique(uniform_indices(n, policy.fixed_length))
        else:
            picked[str(policy)] = policy_indices(policy, n, stamps=np.arange(n) / fps)
    known = np.unique(np.concatenate(list(picked.values()))) if picked else np.zeros(0, np.int64)
    positions = {k: np.searchsorted(known, v).tolist() for k, v in picked.items()}
    extra = [known]
    for name, idx in keyframes.items():
        # key frames anywhere in the video: a fraction len(known)/n of them is expected to be frames
        # already taken; placeholders with the digits of real indices, after the known frames
        taken = sum(len(e) for e in extra)
        fresh = {"expected": int(round(len(idx) * (1 - taken / n))), "max": min(len(idx), n - taken),
                 "min": max(0, len(idx) - taken)}[overlap]
        new = idx[:fresh]
        start = sum(len(e) for e in extra)
        positions[name] = list(range(start, start + len(new)))
        extra.append(new)
    indices = np.sort(np.concatenate(extra))
    pool_size = len(indices)
    stamps = indices / fps
    # auto and pyav decode in order with PyAV; decord and torchcodec only formats with a seek index
    decoder = "pyav" if fmt in SEQUENTIAL_FORMATS or cfg.decoder in ("auto", "pyav") else cfg.decoder
    if decoder == "decord":  # decord reports float32 seconds
        stamps = stamps.astype(np.float32).astype(np.float64)
    source = {"num_frames": n, "fps": fps, "width": size[0], "height": size[1],
              "decoder": decoder,
              "decoder_note": "", "expected_frames": n, "truncated": False,
              **display_fields(*size), "clock": clock, **decoder_log([])}  # a clean decode: upright, stream 0, start 0
    record = _record(item, source=source, frame_indices=indices.tolist(), timestamps=stamps.tolist(),
                     pts_seconds=stamps.tolist(),
                     policies=positions, num_cached_frames=pool_size, short=n < max_count, status="done",
                     has_luv_scores=needs_luv)
    return record, pool_size


def _clip_record(item: VideoItem, cfg, clip, n: int, fps: float, size: tuple[int, int], clock: dict) -> tuple[dict, int]:
    """The record extract writes for a video encoder's clips of a video of ``n`` frames (PyAV
    timestamps at the header rate), and its row (clip) count."""
    from featcache.video.clip_prepare import clip_fields
    from featcache.video.clips import policy_clips, unique_clips
    from featcache.video.select import parse_policies

    (policy,) = parse_policies(clip.policy)  # clip: a clip_prepare.ClipSpec
    stamps = np.arange(n) / fps
    clips, short = policy_clips(policy, n, fps, stamps, clip.frames, clip.rate)
    rows, positions = unique_clips(clips)
    source = {"num_frames": n, "fps": fps, "width": size[0], "height": size[1], "decoder": "pyav", "decoder_note": "",
              "expected_frames": n, "truncated": False, **display_fields(*size), "clock": clock, **decoder_log([])}
    record = _record(item, source=source, **clip_fields(policy, clip, rows, stamps[rows], positions, short),
                     status="done", has_luv_scores=False)
    return record, len(rows)


class _StoreBytes:
    """The bytes and files a single writer's packed store of these videos takes, replayed."""

    def __init__(self, attrs: dict, task: str | None = None):
        self.attrs, self.plan, self.task = attrs, packed.row_plan(attrs), task
        self.policies = list(store_attrs(attrs).policies)
        self.table = index.table_of(attrs)
        root = dict(attrs, layout=schema.PACKED_LAYOUT, store_id="0" * 32)
        self.root = root
        self.bytes = len(packed.group_metadata(root)) + len(packed.group_metadata({}))  # root, segments/
        self.files = 2
        self.segment: dict[str, int] | None = None  # rows per array of the open segment
        self.segment_bytes = 0

    def add(self, record: dict, rows: dict[str, int]) -> None:
        if self.segment is None:
            self.segment, self.segment_bytes = {}, 0
            self.bytes += len(packed.group_metadata(packed.segment_attrs(self.root, self.task, pid=1000000)))
            self.files += 1 + len(index.FILES)  # zarr.json, index/0, ids/0, labels/0, positions/0, table/0
            self.index_bytes = dict.fromkeys(index.FILES, 0)
        placed = {}
        for name, count in rows.items():
            if name not in self.plan or not count:
                continue
            start = self.segment.setdefault(name, 0)
            if start == 0:
                self.files += 1  # the array's data file
            placed[name] = [start, count]
            self.segment[name] = start + count
            nbytes = count * packed.row_bytes(self.plan[name])
            self.bytes += nbytes
            self.segment_bytes += nbytes
        status = record.get("status", "done")
        if status == "done":
            record = dict(record, status="done", has_luv_scores=bool(rows.get(schema.LUV_SCORES)))
        for which, nbytes in packed.index_bytes(to_json(record), placed, self.policies,
                                                table=self.table).items():
            self.bytes += nbytes
            self.index_bytes[which] += nbytes
        if self.segment_bytes >= packed.SEGMENT_BYTES:
            self.seal()

    def seal(self) -> None:
        if self.segment is None:
            return
        for name, count in self.segment.items():
            self.bytes += packed.sealed_bytes(name, count, self.attrs)
            self.files += 1  # its zarr.json
        for which, nbytes in self.index_bytes.items():
            self.bytes += len(packed.index_metadata(nbytes, which))
            self.files += 1
        self.segment = None


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n}"
