"""`featcache extract` (local, --devices, --slurm)."""
from __future__ import annotations

from typing import Optional

import typer

from featcache.cli.app import SLURM_OPTIONS, app, parse_ints, parse_kv, parse_shard, parse_size, user_errors
from featcache.errors import FeatcacheError

EXTRACT_EXAMPLES = """
Examples:

  featcache extract data/ucf101.csv --out caches/ucf101_dinov2.zarr --frames uniform:16,keyframes:8

  featcache extract manifest.csv --out tiny.zarr --weights random --model-arg depth=2 --precision fp32

  featcache extract manifest.csv --out c.zarr --model tf_efficientnet_lite0 --weights lite0.pth

  ls videos/*.mp4 > videos.txt; featcache extract videos.txt --out c.zarr   # a plain list: ids from file names

  featcache extract charades.csv --out clips.zarr --model tv:mvit_v2_s --frames fps:2,windows:16/2   # video encoder
"""


@app.command(epilog=EXTRACT_EXAMPLES)
def extract(
    manifest: str = typer.Argument(..., help="CSV or JSONL manifest with video_id,path (label,split optional: "
                                   "training can take them from train --manifest), or a text file of video paths, one per line."),
    out: str = typer.Option(..., "--out", "-o", help="The Zarr store to create or resume."),
    model: str = typer.Option("vit_small_patch14_dinov2.lvd142m", help="Any timm model name, or tv:NAME for a torchvision video encoder (r3d_18, mc3_18, r2plus1d_18, s3d, mvit_v2_s, swin3d_t), hf:NAME for a transformers one (VideoMAE, V-JEPA 2; hub id or folder), with --frames clips:N or fps:F,windows:W/S."),
    weights: str = typer.Option("hub", help="hub (timm pretrained), random, or a .pth/.safetensors file."),
    model_arg: list[str] = typer.Option([], "--model-arg", help="Extra timm create_model option KEY=VALUE (repeatable); VALUE is YAML, e.g. depth=2 or 'pretrained_cfg_overlay={mean: [0.5, 0.5, 0.5]}'."),
    img_size: int = typer.Option(224, help="Square input size of the model."),
    frames: str = typer.Option("uniform:16", help="Frame policies, e.g. uniform:16,keyframes:8 (their union is cached)."),
    layers: str = typer.Option("-1", help="ViT blocks to cache, e.g. -1 or -4,-1."),
    crops: int = typer.Option(1, help="Spatial crops per frame through the model: 1 (centre) or 3 (first, centre, last along the long side; for --spatial-views 3)."),
    train_views: int = typer.Option(0, "--train-views", help="Also cache K augmented training views of every frame (random-resized crop + flip, one box per video and view, drawn from --view-seed and the video id); train with --set train_views=random. Image models."),
    view_aug: str = typer.Option("torchvision", "--view-aug", help="Recipe of --train-views: torchvision (RandomResizedCrop defaults + flip 0.5) or jepa (V-JEPA's frozen-eval scale/ratio, no flip)."),
    view_seed: int = typer.Option(0, "--view-seed", help="Seed of the --train-views draws (recorded in the store)."),
    cut_block: Optional[int] = typer.Option(None, help="Also cache the residual stream entering this ViT block (0 = after the embeddings; negative from the end) for in-backbone adapters."),
    batch_size: str = typer.Option("auto", help="Frames per forward pass (batches span videos): auto (the fastest of 8/16/32/64 on this device, probed once and cached) or a number."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", help="auto, fp32, bf16 or fp16 (autocast)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model's forward (opt-in: compiling takes a while; see benchmarks/RESULTS.md)."),
    dtype: str = typer.Option("float16", help="Storage dtype of the tokens: float16, float32 or int8 (per-channel then per-token scales; read back as float16)."),
    token_pool: str = typer.Option("1", help="Average-pool the patch grid before storing: K (K x K windows, e.g. 2 = 4x fewer patch tokens) or mean (prefix tokens + the mean patch token: a linear-probe layout)."),
    decoder: str = typer.Option("auto", help="auto (= pyav: one in-order pass per video), decord or torchcodec (random access, checked against PyAV; torchcodec needs its extra)."),
    stream: Optional[int] = typer.Option(None, help="The container's video stream to decode (its index, as ffmpeg -map 0:N counts); default: the one ffmpeg shows (highest resolution). Recorded per video (source.stream)."),
    resize: str = typer.Option("swscale", help="How frames reach the model's resize size: swscale (FFmpeg scales them while decoding; fast) or pil (decoded at source size, then PIL's antialiased resize as torchvision's Resize on PIL images: the pixels of a torchvision preset or timm's eval transform). Recorded in the store. Image models."),
    luv_size: str = typer.Option("64x48", help="Resolution of key-frame LUV scoring: WxH (every frame scaled to it, bilinear) or full (the source size; slower). Recorded in the store."),
    short_videos: str = typer.Option("repeat", help="Videos shorter than a policy: repeat frames or fail."),
    truncated: str = typer.Option("warn", help="Videos with fewer frames than their container promises (a file cut short): warn (a summary line and source.truncated in the record) or fail."),
    shard: Optional[str] = typer.Option(None, help="Process only shard I/N of the videos (stable hash of the id)."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default; fewer when decode workers share the CPU)."),
    decode_workers: str = typer.Option("auto", help="Decode processes (spawned; frames through shared memory): auto (the cores the model leaves: all but one beside a GPU, those beyond torch's threads on a CPU) or N (0 = decode in the model's process, between forwards)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache made with other settings (one whose settings match is kept and resumed)."),
    init_only: bool = typer.Option(False, "--init-only", help="Create the store (with --overwrite: replace one made with other settings) and exit; run once before starting --shard workers by hand."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    devices: Optional[str] = typer.Option(None, help="One worker per device, each a shard: all, or cuda:0,cuda:1."),
    slurm: bool = typer.Option(False, "--slurm", help="Submit a Slurm job array (submitit), one task per shard."),
    shards: int = typer.Option(8, help="--slurm: number of array tasks (shards)."),
    partition: Optional[str] = SLURM_OPTIONS.partition,
    gpus_per_task: int = SLURM_OPTIONS.gpus_per_task,
    cpus_per_task: int = SLURM_OPTIONS.cpus_per_task,
    mem_gb: int = SLURM_OPTIONS.mem_gb,
    time: int = typer.Option(240, "--time", help="--slurm: time limit per task (minutes); preempted or timed-out tasks requeue and resume."),
    slurm_logs: str = SLURM_OPTIONS.slurm_logs,
    cluster: str = SLURM_OPTIONS.cluster,
    wait: bool = typer.Option(False, "--wait", help="--slurm: wait for every task, one progress line per poll, then their summaries."),
    poll: float = SLURM_OPTIONS.poll,
):
    """Decode the videos of MANIFEST, run the frozen model, write tokens to a Zarr cache.

    Re-running the same command resumes: finished videos are skipped, failed ones retried.
    """
    from featcache.extract.pipeline import prepare_store, run_extract

    with user_errors():
        cfg = build_request(
            manifest, out, model=model, weights=weights, model_arg=model_arg, img_size=img_size, frames=frames,
            layers=layers, crops=crops, train_views=train_views, view_aug=view_aug, view_seed=view_seed,
            cut_block=cut_block, batch_size=batch_size, device=device, precision=precision, compile_=compile_,
            dtype=dtype, token_pool=token_pool, decoder=decoder, stream=stream, resize=resize, luv_size=luv_size,
            short_videos=short_videos, truncated=truncated, shard=shard, threads=threads,
            decode_workers=decode_workers, overwrite=overwrite)
        if init_only:
            if shard is not None or slurm or devices:
                raise FeatcacheError("--init-only prepares the store for workers; give it without --shard, --slurm or --devices")
            _print_replaced(prepare_store(cfg), out)
            typer.echo(f"cache ready at {out}; start the workers (e.g. --shard I/N) without --overwrite")
            return
        if slurm:
            return _launch(cfg, shards, partition, gpus_per_task, cpus_per_task, mem_gb, time, slurm_logs, cluster,
                           wait, poll)
        if devices:
            return _on_devices(cfg, devices)
        summary = run_extract(cfg, show_progress=not quiet)
    _print_replaced(summary.replaced, out)
    _print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(1)


def build_request(manifest: str, out: str, *, model: str, weights: str, model_arg: list[str], img_size: int,
                  frames: str, layers: str, crops: int, train_views: int, view_aug: str, view_seed: int,
                  cut_block: int | None, batch_size: str, device: str, precision: str, compile_: bool, dtype: str,
                  token_pool: str, decoder: str, stream: int | None, resize: str, luv_size: str, short_videos: str,
                  truncated: str, shard: str | None, threads: int, decode_workers: str, overwrite: bool):
    """The ExtractRequest of `featcache extract`'s options as typed (``estimate`` builds its request
    here too, from the same options). A new extract option that changes what is extracted is a
    parameter here and a field of ``ExtractRequest``."""
    from featcache.extract.encoder import EncoderConfig
    from featcache.extract.request import AUTO, ExtractRequest

    if stream is not None and stream < 0:
        raise FeatcacheError(f"--stream {stream}: a stream index is 0 or more (ffprobe lists them)")
    enc = EncoderConfig(model=model, weights=weights, img_size=img_size, layers=parse_ints(layers, "--layers"),
                        precision=precision, device=device, cut_block=cut_block,
                        token_pool=_word_or_int(token_pool, "--token-pool", "mean"), compile=compile_,
                        model_args=parse_model_args(model_arg))
    return ExtractRequest(manifest=manifest, out=out, encoder=enc, frames=frames,
                          batch_size=_word_or_int(batch_size, "--batch-size", AUTO), dtype=dtype, decoder=decoder,
                          luv_size=parse_size(luv_size), short_videos=short_videos, truncated=truncated,
                          overwrite=overwrite, shard=parse_shard(shard), crops=crops, threads=threads,
                          decode_workers=_word_or_int(decode_workers, "--decode-workers", AUTO, minimum=0),
                          stream=stream, train_views=train_views, view_aug=view_aug, view_seed=view_seed,
                          resize=resize)


def request_options(parsed: dict) -> dict:
    """The options of ``build_request`` among those click parsed for the extract command."""
    import inspect

    return {name: parsed[name] for name in inspect.signature(build_request).parameters}


def _word_or_int(text: str, option: str, word: str, minimum: int = 1):
    """``word`` itself, or an integer >= ``minimum``; anything else is a one-line error."""
    if text == word:
        return text
    if not text.isdigit() or int(text) < minimum:
        raise FeatcacheError(f"{option}: expected {word} or an integer >= {minimum}, got {text!r}")
    return int(text)


ESTIMATE_EXAMPLES = """
Examples:

  featcache estimate data/ucf101.csv --frames uniform:16,keyframes:8

  featcache estimate manifest.csv --dtype int8 --token-pool 2 --json
"""


@app.command(epilog=ESTIMATE_EXAMPLES, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def estimate(
    ctx: typer.Context,
    manifest: str = typer.Argument(..., help="The manifest extract would read."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON (the total is `bytes`)."),
    no_time: bool = typer.Option(False, "--no-time", help="Skip the short measured forward (no time estimate)."),
):
    """Bytes on disk (per frame, per video, total), files and model time of an extraction, before
    running it. Takes every `featcache extract` option (e.g. --frames, --layers, --dtype,
    --token-pool, --cut-block, --model); frame counts come from the container headers."""
    import json

    from featcache.extract.estimate import estimate as run_estimate
    from featcache.extract.estimate import human

    with user_errors():
        command = typer.main.get_command(app).get_command(ctx, "extract")
        try:
            parsed = command.make_context("extract", [manifest, "--out", "estimate.zarr", *ctx.args],
                                          resilient_parsing=False).params
        except Exception as exc:  # a usage error of typer's (vendored) click: one line, exit 2
            if not hasattr(exc, "format_message"):
                raise
            raise FeatcacheError(f"estimate: {exc.format_message()}") from None
        est = run_estimate(build_request(**request_options(parsed)), measure=not no_time)
    if as_json:
        typer.echo(json.dumps(est.as_dict(), indent=1))
        return
    typer.echo(f"{est.videos} videos, {est.frames} cached {est.unit}s; {human(est.token_bytes_per_frame)} of arrays "
               f"per {est.unit}, {human(est.bytes_per_video)} per video")
    typer.echo(f"total {human(est.bytes)} ({est.bytes} bytes) in {est.files} files, metadata included")
    if est.bytes_min != est.bytes_max:
        typer.echo(f"range {human(est.bytes_min)} to {human(est.bytes_max)}: how many key frames coincide with the "
                   "other policies' frames only scoring reveals")
    if est.forward_frames_per_s:
        typer.echo(f"model time ~{est.model_seconds:.0f} s at {est.forward_frames_per_s:.1f} frames/s "
                   f"(batch {est.batch_size}, measured here; decoding not included)")
    for note in est.notes:
        typer.echo(f"note: {note}")
    for video_id, reason in est.unreadable.items():
        typer.echo(f"unreadable: {video_id}: {reason}")


def _launch(cfg, shards, partition, gpus, cpus, mem_gb, time_min, logs, cluster, wait, poll) -> None:
    import os

    from featcache.data.manifest import read_manifest
    from featcache.launch.extract_array import launch_slurm, published
    from featcache.launch.submitit import SlurmConfig, wait_for_tasks

    jobs, replaced = launch_slurm(cfg, SlurmConfig(shards, partition, gpus, cpus, mem_gb, time_min, logs=logs,
                                                   cluster=cluster))
    _print_replaced(replaced, cfg.out)
    array = jobs[0].job_id.split("_")[0]
    typer.echo(f"submitted {len(jobs)} task(s) (job {array}); logs in {logs}/{array}/; "
               f"progress: featcache cache status {cfg.out} --shards {shards}")
    if not wait:
        return
    total = len(read_manifest(cfg.manifest))
    outcomes = wait_for_tasks(jobs, lambda: f"videos in the store: {published(cfg.out)}/{total}", typer.echo,
                              poll_s=poll, log_path=os.path.join(logs, array, "featcache-wait.log"))
    failed = 0
    for o in outcomes:
        if o.result is None:
            failed += 1
            typer.echo(f"shard {o.shard}/{shards}: task {o.job_id} failed: {o.error}; log: {o.log}")
            continue
        r = o.result
        failed += len(r["failed"])
        typer.echo(f"shard {r['shard'][0]}/{shards}: {r['done']} done, {r['skipped']} already cached, "
                   f"{len(r['failed'])} failed, {r['frames']} frames in {r['wall_s']:.1f} s")
    if failed:
        raise typer.Exit(1)


def _on_devices(cfg, devices: str) -> None:
    from featcache.launch.extract_array import parse_devices, run_on_devices

    names = parse_devices(devices)
    summaries, replaced = run_on_devices(cfg, names)
    _print_replaced(replaced, cfg.out)
    for name, summary in zip(names, summaries):
        typer.echo(f"[{name}] ", nl=False)
        _print_summary(summary, cfg.out)
    if any(s.failed for s in summaries):
        raise typer.Exit(1)


def summary_line(s, out: str) -> str:
    """The first line of an extraction's summary (see :func:`_print_summary`)."""
    mb = s.bytes_written / 1e6
    grew = (f"grew {s.extended} cached videos by {s.new_frames} frames for the policies added to the store "
            "(only those frames decoded at full size and encoded), " if s.extended else "")
    tail = f"{s.frames} frames in {s.wall_s:.1f} s = {s.frames_per_s:.1f} frames/s; {mb:.1f} MB written to {out}"
    return (f"{grew}extracted {s.done} {'new ' if s.extended else ''}videos, {len(s.failed)} failed, "
            f"{s.skipped} already {'complete' if s.extended else 'cached'} (of {s.total}); {tail}")


def parse_model_args(pairs: list[str]) -> dict:
    """``--model-arg KEY=VALUE`` pairs (see :func:`featcache.cli.app.parse_kv`)."""
    return parse_kv(pairs, "--model-arg")


def _print_replaced(replaced: list[str], out: str) -> None:
    if replaced:
        typer.echo(f"--overwrite: replaced the cache at {out} (it was made with other settings: {', '.join(replaced)})")


def _print_summary(s, out: str) -> None:
    """One summary line: videos extracted, failed, already cached, and (after policies were added
    to the store) the cached videos that grew, counted among the total, never as a second tally."""
    typer.echo(summary_line(s, out))
    if s.batch_size_note:
        typer.echo(s.batch_size_note)
    if s.decode_note and s.total - s.skipped:
        typer.echo(s.decode_note)
    for line in s.warnings:
        typer.echo(f"warning: {line}")
    if s.decoder_messages:
        shown = ", ".join(f"{v} ({n})" for v, n in list(s.decoder_messages.items())[:5])
        typer.echo(f"note: the decoder (FFmpeg) printed {sum(s.decoder_messages.values())} message line(s) for "
                   f"{len(s.decoder_messages)} video(s): {shown}{' ...' if len(s.decoder_messages) > 5 else ''}; "
                   "kept in each video's record (source.decoder_log), not printed over the progress bar")
    for video_id, reason in s.failed.items():
        typer.echo(f"failed: {video_id}: {reason}")
    if s.stopped:  # last, where a log's tail shows it
        typer.echo(f"featcache: error: extraction stopped: {s.stopped}; {s.not_attempted} video(s) not attempted; "
                   "every video above is either in the cache or named failed: run the same command again once "
                   "the cause is fixed to continue", err=True)
