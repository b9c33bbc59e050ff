"""`featcache cache info`: the facts a store holds, as a dict and as text."""
from __future__ import annotations

from collections import Counter

from featcache.cache.store import open_cache


def cache_facts(path: str) -> dict:
    """Everything `cache info` prints, JSON-ready."""
    cache = open_cache(path)
    a = cache.attrs
    done = [r for r in cache.records().values() if r.get("status") == "done"]
    frames = sum(len(r["frame_indices"]) for r in done)
    return {
        "path": cache.path,
        "schema_version": a["schema_version"],
        "featcache_version": a["featcache_version"],
        "created_at": a.get("created_at"),
        "fingerprint": a["fingerprint"],
        "model": a["model"],
        "preprocess": a["preprocess"],
        "layers": a["layers"],
        "tokens": a["tokens"],
        "compute": a["compute"],
        "frames": a["frames"],
        "storage": a["storage"],
        "cut": a.get("cut"),
        "videos": {
            "done": len(done),
            "failed": len(cache.failures()),
            "interrupted": sum(len(v) for v in cache.interrupted().values()),
            "per_split": dict(Counter(r["split"] for r in done)),
            "labels": len({label for r in done for label in r["labels"]}),
            "decoders": dict(Counter(r["source"]["decoder"] for r in done)),
        },
        "failures": cache.failures(),
        "cached_frames": frames,
        "bytes_per_frame": cache.bytes_per_frame,
        "size_on_disk": cache.size_on_disk(),
        "layout": cache.layout,
        "segments": len(cache.segments()),
        "superseded_bytes": cache.superseded_bytes(),  # older copies and racing duplicates: cache pack drops them
        "unindexed_bytes": cache.unindexed_bytes(),  # rows of interrupted commits no index points to
        "files": cache.file_count(),
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _waste(f: dict) -> str:
    """Bytes no reader uses: superseded copies (grown videos, duplicate writers) and interrupted rows."""
    parts = [f"{_mb(f[k])} {what}" for k, what in (("superseded_bytes", "in superseded copies"),
                                                   ("unindexed_bytes", "of interrupted writes")) if f.get(k)]
    return f"; {', '.join(parts)} (featcache cache pack leaves them behind)" if parts else ""


def format_facts(f: dict) -> str:
    m, t, p, v = f["model"], f["tokens"], f["preprocess"], f["videos"]
    weights = m["weights"]
    if t.get("unit") == "clip":  # a video encoder's cache: rows are clips (featcache/extract/video_encoders.py)
        return format_clip_facts(f)
    wtext = {"file": f"file {weights.get('path')} (sha256 {str(weights.get('sha256'))[:12]}...)",
             "hub": f"hub {weights.get('hf_hub_id') or weights.get('url')}",
             "random": f"RANDOM (seed {weights.get('seed')}) -- not a pretrained network"}.get(weights["source"])
    lines = [
        f"cache        {f['path']}",
        f"written by   featcache {f['featcache_version']} (schema {f['schema_version']}) at {f['created_at']}",
        f"fingerprint  {f['fingerprint']}",
        f"model        {m['name']} {m['args'] or ''} ({m['num_params'] / 1e6:.1f} M params, {m['kind']})",
        f"weights      {wtext}",
        f"preprocess   {p['input_size'][1]}x{p['input_size'][2]}, resize short side {p['resize_short_side']} "
        f"({p['interpolation']}), {p['crop']} crop, mean {p['mean']}, std {p['std']}",
        f"layers       {f['layers']}",
        f"tokens       {t['num_prefix_tokens']} prefix + {t['grid'][0]}x{t['grid'][1]} patches, dim {t['dim']}, "
        f"stored as {f['storage']['dtype']}, computed in {f['compute']['precision']}"
        + (f"; patches pooled ({t['pool']}) from the model's {t['model_grid'][0]}x{t['model_grid'][1]} grid"
           if t.get("pool") else "")
        + ("; int8 with per-channel then per-token scales, read back as float16"
           if f['storage']['dtype'] == "int8" else ""),
        f"frames       {', '.join(f['frames']['policies'])} (pool = their union)",
        *([f"cut          residual stream entering block {f['cut']['block']} of {f['cut']['depth']} "
           f"(float16): adapters can go into blocks {f['cut']['block']}..{f['cut']['depth'] - 1}; the frozen "
           f"tail is rebuilt from the model and weights above"] if f.get("cut") else []),
        f"videos       {v['done']} done, {v['failed']} failed, {v['interrupted']} interrupted; "
        f"splits {v['per_split']}; {v['labels']} labels; decoders {v['decoders']}",
        f"size         {f['cached_frames']} frames x {_mb(f['bytes_per_frame'])}/frame; {_mb(f['size_on_disk'])} on disk",
        "layout       " + (f"packed: {f['segments']} segment(s), {f['files']} files and folders{_waste(f)}"
                            if f["layout"] == "packed"
                            else f"schema 1, a folder per video ({f['files']} files and folders); convert it with "
                                 f"featcache cache pack {f['path']} --out NEW.zarr"),
    ]
    lines += [f"failed       {vid}: {reason}" for vid, reason in f["failures"].items()]
    return "\n".join(lines)


def format_clip_facts(f: dict) -> str:
    """`cache info` of a video encoder's cache: one row per clip."""
    m, t, p, v, fr = f["model"], f["tokens"], f["preprocess"], f["videos"], f["frames"]
    weights = m["weights"]
    wtext = {"file": f"file {weights.get('path')} (sha256 {str(weights.get('sha256'))[:12]}...)",
             "hub": f"hub {weights.get('enum')} ({weights.get('url')})" if weights.get("url")
             else f"hub {weights.get('hf_hub_id')}",
             "random": f"RANDOM (seed {weights.get('seed')}) -- not a pretrained network"}.get(weights["source"])
    g = t["clip_grid"]
    lines = [
        f"cache        {f['path']}",
        f"written by   featcache {f['featcache_version']} (schema {f['schema_version']}) at {f['created_at']}",
        f"fingerprint  {f['fingerprint']}",
        f"model        {m['name']} {m['args'] or ''} ({m['num_params'] / 1e6:.1f} M params, video encoder)",
        f"weights      {wtext}",
        f"preprocess   clips of {p['clip_len']} frames at {p['frame_rate']:g} fps; resize {p['resize_size']} "
        f"({p['resize']}, {p['interpolation']}, no antialias), {p['crop_size'][0]}x{p['crop_size'][1]} centre crop, "
        f"mean {p['mean']}, std {p['std']} ({p['preset']})",
        f"tokens       per clip: 1 pooled + {g[0]}x{g[1]}x{g[2]} (T'xH'xW') tokens, dim {t['dim']}, stored as "
        f"{f['storage']['dtype']}, computed in {f['compute']['precision']}"
        + ("; int8 with per-channel then per-token scales, read back as float16"
           if f['storage']['dtype'] == "int8" else ""),
        f"clips        {fr['clip_policy']} (one row per distinct clip)",
        f"videos       {v['done']} done, {v['failed']} failed, {v['interrupted']} interrupted; "
        f"splits {v['per_split']}; {v['labels']} labels; decoders {v['decoders']}",
        f"size         {f['cached_frames']} clips x {_mb(f['bytes_per_frame'])}/clip; {_mb(f['size_on_disk'])} on disk",
        f"layout       packed: {f['segments']} segment(s), {f['files']} files and folders{_waste(f)}",
    ]
    lines += [f"failed       {vid}: {reason}" for vid, reason in f["failures"].items()]
    return "\n".join(lines)
