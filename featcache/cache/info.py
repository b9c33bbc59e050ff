"""`featcache cache info`: the facts a store holds, as a dict and as text."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from featcache.cache.facts import StoreAttrs, thaw
from featcache.cache.store import open_cache

_SECTIONS = ("model", "preprocess", "layers", "tokens", "compute", "frames", "storage")  # of the root, as stored


@dataclass(frozen=True)
class VideoCounts:
    done: int
    failed: int
    interrupted: int  # unpublished by an interrupted commit: the next extract run redoes them
    per_split: dict[str, int]
    labels: int  # distinct labels of the done videos
    decoders: dict[str, int]


@dataclass(frozen=True)
class CacheFacts:
    """Everything `cache info` prints: the store's root attributes and what it holds."""

    path: str
    store: StoreAttrs
    videos: VideoCounts
    failures: dict[str, str]  # video id -> why it failed
    cached_frames: int
    bytes_per_frame: int
    size_on_disk: int
    layout: str
    segments: int
    superseded_bytes: int  # older copies and racing duplicates: cache pack drops them
    unindexed_bytes: int  # rows of interrupted commits no index points to
    files: int

    def to_json(self) -> dict:
        """`cache info --json`."""
        a = self.store
        return {"path": self.path, "schema_version": a.schema_version, "featcache_version": a.featcache_version,
                "created_at": a.created_at, "fingerprint": a.fingerprint,
                **{k: thaw(getattr(a, k)) for k in _SECTIONS}, "cut": thaw(a.cut),
                "videos": dict(vars(self.videos)), "failures": self.failures, "cached_frames": self.cached_frames,
                "bytes_per_frame": self.bytes_per_frame, "size_on_disk": self.size_on_disk, "layout": self.layout,
                "segments": self.segments, "superseded_bytes": self.superseded_bytes,
                "unindexed_bytes": self.unindexed_bytes, "files": self.files}


def cache_facts(path: str) -> CacheFacts:
    """Everything `cache info` prints (``.to_json()``: JSON-ready)."""
    cache = open_cache(path)
    done = [r for r in cache.video_records().values() if r.done]
    failures = cache.failures()
    videos = VideoCounts(done=len(done), failed=len(failures),
                         interrupted=sum(len(v) for v in cache.interrupted().values()),
                         per_split=dict(Counter(r.split for r in done)),
                         labels=len({label for r in done for label in r.labels}),
                         decoders=dict(Counter(r.decoder for r in done)))
    return CacheFacts(path=cache.path, store=cache.facts, videos=videos, failures=failures,
                      cached_frames=sum(len(r.frame_indices) for r in done), bytes_per_frame=cache.bytes_per_frame,
                      size_on_disk=cache.size_on_disk(), layout=cache.layout, segments=len(cache.segments()),
                      superseded_bytes=cache.superseded_bytes(), unindexed_bytes=cache.unindexed_bytes(),
                      files=cache.file_count())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _waste(f: CacheFacts) -> str:
    """Bytes no reader uses: superseded copies (grown videos, duplicate writers) and interrupted rows."""
    parts = [f"{_mb(n)} {what}" for n, what in ((f.superseded_bytes, "in superseded copies"),
                                               (f.unindexed_bytes, "of interrupted writes")) if n]
    return f"; {', '.join(parts)} (featcache cache pack leaves them behind)" if parts else ""


def _weights(a: StoreAttrs, clip: bool = False) -> str | None:
    w = a.model.weights
    hub = (f"hub {w.enum} ({w.url})" if w.url else f"hub {w.hf_hub_id}") if clip else f"hub {w.hf_hub_id or w.url}"
    return {"file": f"file {w.path} (sha256 {str(w.sha256)[:12]}...)", "hub": hub,
            "random": f"RANDOM (seed {w.seed}) -- not a pretrained network"}.get(w.source)


def _head(f: CacheFacts, kind: str) -> list[str]:
    """The lines both kinds of store print first."""
    a, m = f.store, f.store.model
    return [
        f"cache        {f.path}",
        f"written by   featcache {a.featcache_version} (schema {a.schema_version}) at {a.created_at}",
        f"fingerprint  {a.fingerprint}",
        f"model        {m.name} {thaw(m.args) or ''} ({m.num_params / 1e6:.1f} M params, {kind})",
        f"weights      {_weights(a, kind == 'video encoder')}",
    ]


def _videos(v: VideoCounts) -> str:
    return (f"videos       {v.done} done, {v.failed} failed, {v.interrupted} interrupted; "
            f"splits {v.per_split}; {v.labels} labels; decoders {v.decoders}")


def _int8(a: StoreAttrs) -> str:
    return "; int8 with per-channel then per-token scales, read back as float16" if a.dtype == "int8" else ""


def format_facts(f: CacheFacts) -> str:
    a = f.store
    if a.clip_rows:  # a video encoder's cache: rows are clips (featcache/extract/video_encoders.py)
        return format_clip_facts(f)
    t, p, cut = a.tokens, a.preprocess, a.cut
    lines = [
        *_head(f, a.model.kind),
        f"preprocess   {p.input_size[1]}x{p.input_size[2]}, resize short side {p.resize_short_side} "
        f"({p.interpolation}, {'PIL' if p.resizer == 'pil' else 'swscale'}), {p.crop} crop, mean {thaw(p.mean)}, "
        f"std {thaw(p.std)}",
        f"layers       {thaw(a.layers)}",
        f"tokens       {t.num_prefix_tokens} prefix + {t.grid[0]}x{t.grid[1]} patches, dim {t.dim}, "
        f"stored as {a.dtype}, computed in {a.compute.precision}"
        + (f"; patches pooled ({t.pool}) from the model's {t.model_grid[0]}x{t.model_grid[1]} grid" if t.pool else "")
        + _int8(a),
        f"frames       {', '.join(a.policies)} (pool = their union)",
        *([f"cut          residual stream entering block {cut.block} of {cut.depth} "
           f"(float16): adapters can go into blocks {cut.block}..{cut.depth - 1}; the frozen "
           f"tail is rebuilt from the model and weights above"] if cut else []),
        _videos(f.videos),
        f"size         {f.cached_frames} frames x {_mb(f.bytes_per_frame)}/frame; {_mb(f.size_on_disk)} on disk",
        "layout       " + (f"packed: {f.segments} segment(s), {f.files} files and folders{_waste(f)}"
                            if f.layout == "packed"
                            else f"schema 1, a folder per video ({f.files} files and folders); convert it with "
                                 f"featcache cache pack {f.path} --out NEW.zarr"),
    ]
    lines += [f"failed       {vid}: {reason}" for vid, reason in f.failures.items()]
    return "\n".join(lines)


def format_clip_facts(f: CacheFacts) -> str:
    """`cache info` of a video encoder's cache: one row per clip."""
    a = f.store
    t, p, g = a.tokens, a.preprocess, a.tokens.clip_grid
    lines = [
        *_head(f, "video encoder"),
        f"preprocess   clips of {p.clip_len} frames at {p.frame_rate:g} fps; resize {thaw(p.resize_size)} "
        f"({p.resize}, {p.interpolation}, no antialias), {p.crop_size[0]}x{p.crop_size[1]} centre crop, "
        f"mean {thaw(p.mean)}, std {thaw(p.std)} ({p.preset})",
        f"tokens       per clip: 1 pooled + {g[0]}x{g[1]}x{g[2]} (T'xH'xW') tokens, dim {t.dim}, stored as "
        f"{a.dtype}, computed in {a.compute.precision}" + _int8(a),
        f"clips        {a.frames.clip_policy} (one row per distinct clip)",
        _videos(f.videos),
        f"size         {f.cached_frames} clips x {_mb(f.bytes_per_frame)}/clip; {_mb(f.size_on_disk)} on disk",
        f"layout       packed: {f.segments} segment(s), {f.files} files and folders{_waste(f)}",
    ]
    lines += [f"failed       {vid}: {reason}" for vid, reason in f.failures.items()]
    return "\n".join(lines)
