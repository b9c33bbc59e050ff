"""`featcache cache info|verify|repair|status|pack|export|import`."""
from __future__ import annotations

import json
from typing import Optional

import typer

from featcache.cli.app import cache_app, user_errors
from featcache.errors import FeatcacheError, OptionError


def without_verify_hint(problem: str) -> str:
    """A problem line without the "run featcache cache verify PATH" advice the store's readers
    append (meant for `train` and others, not for verify or repair themselves)."""
    import re

    return re.sub(r"[;,]? ?run featcache cache verify [^\s)]+", "", problem)


@cache_app.command("info", epilog="Example:\n\n  featcache cache info caches/ucf101.zarr --json")
def cache_info(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """What a cache holds: model, preprocessing, layers, policies, videos, sizes."""
    from featcache.cache.info import cache_facts, format_facts

    with user_errors():
        facts = cache_facts(path)
    typer.echo(json.dumps(facts.to_json(), indent=2) if as_json else format_facts(facts))


@cache_app.command("verify", epilog="Example:\n\n  featcache cache verify caches/ucf101.zarr")
def cache_verify(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    quick: bool = typer.Option(False, "--quick", help="Check structure only: skip reading token values and "
                               "their checksums (the default, --deep, reads every row once)."),
):
    """Check the index and every video entry are complete and consistent, and every video's rows
    match their checksums; exit 1 when not."""
    from featcache.cache.store import open_cache

    with user_errors():
        cache = open_cache(path)
        problems = cache.verify(check_values=not quick, deep=not quick)
    done, failed = len(cache.video_ids("done")), len(cache.failures())
    redo = [v for ids in cache.interrupted().values() for v in ids]
    for p in problems:
        typer.echo(f"problem: {without_verify_hint(p)}")
    for n in cache.notes:
        typer.echo(f"note: {n}")
    note = (f"; {len(redo)} interrupted write(s) will be redone by the next extract run "
            f"({', '.join(redo[:5])}{', ...' if len(redo) > 5 else ''})") if redo else ""
    hint = f"; `featcache cache repair {path}` records the broken videos as failed, the next extract redoes them"
    verdict = "FAILED" if problems else "ok"
    typer.echo(f"verify {verdict}: {done} videos done, {failed} failed, {len(problems)} problem(s){note}"
               + (hint if problems and cache.layout == "packed" else ""))
    if problems:
        raise typer.Exit(1)


@cache_app.command("repair", epilog="Example:\n\n  featcache cache repair caches/ucf101.zarr   # then re-run the extract command")
def cache_repair(
    path: str = typer.Argument(..., help="A packed featcache store."),
    quick: bool = typer.Option(False, "--quick", help="Check structure only; skip reading token values."),
):
    """Record every video `cache verify` finds broken as failed (nothing is deleted), so the next
    extract run redoes it."""
    from featcache.cache.pack import repair

    with user_errors():
        done = repair(path, check_values=not quick)
    if done.root_rebuilt:
        typer.echo(f"rebuilt: the root zarr.json, from segment {done.root_rebuilt}")
    for vid in done.reindexed:
        typer.echo(f"re-indexed: {vid} (its index row was lost; its rows match their checksums)")
    for vid, why in done.unrecoverable.items():
        typer.echo(f"not re-indexed: {vid}: {why}; the next extract redoes it")
    for vid, problems in done.dropped.items():
        typer.echo(f"marked failed: {vid}: {'; '.join(without_verify_hint(p) for p in problems)}")
    redo = len(done.dropped) + len(done.unrecoverable)
    typer.echo(f"repair: {len(done.dropped)} broken video(s) recorded as failed, {len(done.reindexed)} re-indexed"
               + (f"; re-run the extract command to redo {redo}" if redo else ""))


@cache_app.command("status", epilog="Example:\n\n  featcache cache status caches/k400.zarr --shards 64")
def cache_status(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    manifest: Optional[str] = typer.Option(None, help="The manifest (default: the one the cache was made from)."),
    shards: int = typer.Option(1, help="Show progress per shard of N."),
):
    """Progress across shards: done / failed / in progress / pending videos."""
    from featcache.cache.store import open_cache
    from featcache.data.manifest import read_manifest
    from featcache.launch.extract_array import ShardStatus, shard_status

    with user_errors():
        cache = open_cache(path)
        manifest = manifest or cache.facts.manifest_path
        if not manifest:
            raise FeatcacheError("--manifest: this cache does not record its manifest; give it")
        if shards < 1:
            raise FeatcacheError(f"--shards: must be at least 1, got {shards}")
        rows = shard_status(cache, [it.video_id for it in read_manifest(manifest)], shards)
    for r in rows:
        typer.echo(f"shard {r.shard}/{shards}: {r.done} done, {r.failed} failed, "
                   f"{r.in_progress} in progress, {r.pending} pending")
    total = ShardStatus.total(rows)
    typer.echo(f"total: {total.done} done, {total.failed} failed, {total.in_progress} in progress, "
               f"{total.pending} pending")


@cache_app.command("pack", epilog="Examples:\n\n  featcache cache pack old_round2.zarr --out new.zarr   # convert a schema-1 store\n\n"
                                   "  featcache cache pack k700.zarr --out k700_packed.zarr  # merge 1,000 tasks' segments")
def cache_pack(
    path: str = typer.Argument(..., help="A featcache store (either layout); it is only read."),
    out: str = typer.Option(..., "--out", "-o", help="The new packed store to write (must not exist)."),
    segment_gb: float = typer.Option(4.0, "--segment-gb", help="Roll over to a new segment past this many GB."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Convert a schema-1 store into the packed layout, or merge a store's segments into few large
    ones; tokens and records are copied unchanged, superseded copies and unpublished tails dropped."""
    from featcache.cache.pack import pack

    with user_errors():
        if not segment_gb > 0:
            raise FeatcacheError(f"--segment-gb: must be > 0, got {segment_gb}")
        s = pack(path, out, segment_bytes=int(segment_gb * 1e9), show_progress=not quiet)
    typer.echo(f"packed {s.videos} videos and {s.failed} failure records into {out}: "
               f"{s.segments_after} segment(s), {s.files_after} files, {s.bytes_after / 1e6:.1f} MB "
               f"(was {s.segments_before or 'no'} segment(s), {s.files_before} files, {s.bytes_before / 1e6:.1f} MB)")
    for vid, reason in s.unreadable.items():
        typer.echo(f"unreadable: {vid}: {reason}")
    typer.echo(f"check it with: featcache cache verify {out}")


@cache_app.command("export", epilog="Examples:\n\n  featcache cache export c.zarr --format hdf5 c.h5\n\n"
                   "  featcache cache export c.zarr --format npy c_npy/\n\n"
                   "  featcache cache export c.zarr --format actionformer --pool stride:4 --annotations thumos14.json tal/")
def cache_export(
    path: str = typer.Argument(..., help="A featcache Zarr store."),
    out: str = typer.Argument(..., help="OUT.h5, or a new folder for the other formats."),
    fmt: str = typer.Option("hdf5", "--format", help="hdf5 (one file), npy (per-video .npy + .json), or "
                            "actionformer / opentad (per-video (T, C) features + annotations for temporal localisation)."),
    pool: Optional[str] = typer.Option(None, help="actionformer/opentad: the evenly spaced cached pool to export "
                                       "(stride:S, fps:F or windows:W/S@fps:F; default: the store's first such pool)."),
    layer: Optional[int] = typer.Option(None, help="actionformer/opentad: which cached layer (default -1, the last)."),
    tokens: Optional[str] = typer.Option(None, help="actionformer/opentad: cls (the prefix token, default) or mean "
                                         "(of the patch tokens)."),
    annotations: Optional[str] = typer.Option(None, help="actionformer/opentad: an ActivityNet-style JSON whose "
                                              "segments and subsets are merged into the export's annotations.json."),
):
    """Export tokens, per-video records and the provenance (HDF5, .npy), or features for ActionFormer / OpenTAD."""
    from featcache.cache.export import export_cache
    from featcache.cache.export_tal import TAL_FORMATS, export_tal

    with user_errors():
        if fmt in TAL_FORMATS:
            s = export_tal(path, fmt, out, pool, -1 if layer is None else layer, tokens or "cls", annotations)
            typer.echo(f"exported {s.videos} videos to {out} ({fmt}: stride {s.stride}, "
                       f"{s.frames_per_feature} frame(s) per feature, {s.labels} action labels); "
                       f"loader settings in {out}/featcache_export.json")
            if s.unannotated:
                typer.echo(f"note: {s.unannotated} videos have no segments in annotations.json (listed in "
                           "featcache_export.json); give --annotations to merge yours")
            if s.missing:
                typer.echo(f"note: {len(s.missing)} annotated videos are not in the store: "
                           f"{', '.join(s.missing[:5])}{' ...' if len(s.missing) > 5 else ''}")
            return
        given = [f"--{n}" for n, v in (("pool", pool), ("layer", layer), ("tokens", tokens),
                                        ("annotations", annotations)) if v is not None]
        if given:
            raise OptionError(given[0][2:], f"applies to --format actionformer or opentad, not {fmt}")
        n = export_cache(path, fmt, out)
    typer.echo(f"exported {n} videos to {out} ({fmt})")


@cache_app.command("import", epilog="Examples:\n\n  featcache cache import c.h5 --out c.zarr\n\n  featcache cache import i3d_features.h5 --manifest ucf101.csv --model-name i3d --out i3d.zarr")
def cache_import(
    src: str = typer.Argument(..., help="A featcache HDF5 export, or an HDF5 file with one dataset per video id."),
    out: str = typer.Option(..., "--out", "-o", help="The Zarr store to create."),
    manifest: Optional[str] = typer.Option(None, help="Labels and splits for a foreign file (video_id,path,label,split)."),
    model_name: str = typer.Option("unknown", help="Foreign file: the model that made the features (recorded)."),
    frames: Optional[str] = typer.Option(None, help="Foreign file: resample every video to uniform:K frames."),
):
    """Import an HDF5 feature file into a store so it can be trained on."""
    from featcache.cache.export import import_hdf5

    with user_errors():
        n = import_hdf5(src, out, manifest, model_name, frames)
    typer.echo(f"imported {n} videos into {out}")
