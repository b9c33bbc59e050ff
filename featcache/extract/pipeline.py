"""Stage 1: manifest -> decoded, selected frames -> frozen model -> Zarr cache.

Videos are decoded, selected and cropped (featcache.video.prepare) either in this process between
forwards or in decode worker processes a bounded number of videos ahead; the model runs on
batches that span videos, and each video is published as soon as all its frames are through.
On CUDA the forward of one batch is queued while the next is assembled (FrozenEncoder.submit).

The request and its resolved plan live in featcache.extract.request; run_extract resolves the
plan once and the loop reads it.

Long module: the run, the store's provenance attributes and the pipeline loop that overlaps
decoding, forwards and publishing are one unit; the loop alone is ~180 lines.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from featcache.cache import index, quant
from featcache.cache.facts import PreprocessFacts, VideoRecord
from featcache.cache.writer import CacheWriter, PublishError
from featcache.data.manifest import VideoItem, read_manifest
from featcache.extract.encoder import FrozenEncoder
from featcache.extract.request import (  # noqa: F401  (ExtractConfig, validate, ...: re-exported)
    AUTO,
    SHORT_VIDEO_MODES,
    VIDEO_BATCH,
    ExtractConfig,
    ExtractPlan,
    ExtractRequest,
    resolve_plan,
    validate,
)
from featcache.extract.video_encoders import is_video_model, make_encoder
from featcache.spec.policy import FramePolicy, scores_needed, short_below
from featcache.version import __version__
from featcache.video.prepare import DecodePool, DecodeSpec, Prepared, auto_workers, prepare, usable_cores


@dataclass
class ExtractSummary:
    total: int = 0  # videos in this run's manifest (shard)
    skipped: int = 0  # already in the cache
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason
    warnings: list[str] = field(default_factory=list)
    decoder_messages: dict[str, int] = field(default_factory=dict)  # video id -> lines FFmpeg printed (in its record)
    replaced: list[str] = field(default_factory=list)  # --overwrite: the differing facts of the replaced store
    batch_size_note: str = ""  # --batch-size auto: the size chosen and how
    decode_note: str = ""  # where decoding ran
    frames: int = 0  # frames through the model
    extended: int = 0  # done videos that gained the frames of policies added to the store
    new_frames: int = 0  # frames those videos gained (the only ones decoded at full size and encoded)
    bytes_written: int = 0
    wall_s: float = 0.0
    stopped: str = ""  # why the run stopped before its last video (a full disk, the store replaced, ...)
    not_attempted: int = 0  # videos of the manifest the stopped run never reached

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0


@dataclass
class _Job:
    decoded: Prepared
    tokens: np.ndarray  # (T, L, N, C) storage dtype, filled batch by batch
    cut: np.ndarray | None = None  # (T, N, C) float16: the residual stream entering the cut block
    sent: int = 0  # frames handed to the model
    filled: int = 0  # frames with tokens


def shard_of(video_id: str, count: int) -> int:
    """Stable shard of a video: independent of manifest order, process and machine."""
    return int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "big") % count


def run_extract(cfg: ExtractRequest, show_progress: bool = True) -> ExtractSummary:
    """Extract every video of the manifest (or shard) not yet in the cache. With
    ``cfg.overwrite`` (never together with a shard) a store made with other settings is
    replaced first; workers of a launcher get ``overwrite=False`` (see :func:`prepare_store`).
    The request is resolved once into an :class:`ExtractPlan` (``request.resolve_plan``)."""
    validate(cfg)
    items = read_manifest(cfg.manifest)
    if cfg.shard is not None:
        index, count = cfg.shard
        items = [it for it in items if shard_of(it.video_id, count) == index]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    encoder = make_encoder(cfg.encoder, cfg.policies)
    writer = CacheWriter.open(cfg.out, root_attrs(cfg, encoder), replace=cfg.overwrite,
                              task=task_name(cfg.manifest, cfg.shard))
    todo, grow = to_extract(writer, items)
    summary = ExtractSummary(total=len(items), skipped=len(items) - len(todo), replaced=writer.replaced)
    relabelled = relabelled_videos(items, writer)
    if relabelled:
        summary.warnings.append(
            f"{len(relabelled)} cached video(s) have other labels or splits in {cfg.manifest} than at their "
            f"extraction (e.g. {relabelled[0]}); the store keeps its own (tokens do not depend on them): "
            f"train with --manifest {cfg.manifest} to use these")
    workers = cfg.decode_workers if cfg.decode_workers != AUTO else auto_workers(encoder.device.type)
    if workers and not cfg.threads and encoder.device.type == "cpu":  # decoders and the model share the cores
        torch.set_num_threads(max(1, usable_cores() - workers))
    summary.decode_note = (f"decoding in {workers} worker process(es), the model on {torch.get_num_threads()} "
                           "thread(s)" if workers else "decoding between forwards in the model's process")
    plan = resolve_plan(cfg, encoder, writer.facts.policies, workers, bool(todo))  # with policies added earlier
    summary.batch_size_note = plan.batch_size_note
    start = time.perf_counter()
    pipe = _Pipeline(plan, encoder, writer, summary, grow)
    try:
        pipe.run(todo, show_progress)
    finally:
        try:
            writer.close()  # publishes the last group and seals this run's segment, also on Ctrl-C
        except PublishError as exc:  # the last group lost (failures), or only the seal (a warning)
            lose_published(summary, exc, grow)
            if not exc.lost:
                summary.warnings.append(str(exc))
        summary.warnings += writer.warnings
    summary.wall_s = time.perf_counter() - start
    if plan.probe is not None and todo:
        from featcache.extract.batchsize import judge

        note = judge(encoder, plan.probe, plan.probe_cached, *pipe.full_batches)
        summary.batch_size_note += f"; {note}" if note else ""
    return summary


def lose_published(summary: ExtractSummary, exc: PublishError, grow: dict | None) -> None:
    """Videos counted done (or extended) whose group commit failed (``exc.lost``): failures in
    the summary, which the next run redoes (the store holds no line for them)."""
    for video_id in exc.lost:
        summary.failed[video_id] = f"written but not published: {exc}"
        if grow and video_id in grow:
            summary.extended -= 1
        else:
            summary.done -= 1


def task_name(manifest: str, shard: tuple[int, int] | None) -> str:
    """What one extraction writes, as its segments record it: two live writers of one task are refused."""
    return f"{os.path.abspath(manifest)}" + (f" shard {shard[0]}/{shard[1]}" if shard is not None else "")


def to_extract(writer: CacheWriter, items: list[VideoItem]) -> tuple[list[VideoItem], dict[str, VideoRecord]]:
    """The items to extract (not done, or done without every policy of the store) and the
    records of the done ones that grow; from the index columns of these items only."""
    found = writer.lookup([it.video_id for it in items])
    wanted = set(writer.facts.policies)
    todo, grow = [], {}
    for it in items:
        have = found.get(it.video_id)
        if have is None or have["status"] != "done":
            todo.append(it)
        elif have["policies"] < len(wanted):
            record = VideoRecord.from_json(writer.record(it.video_id))
            if wanted - set(record.policies or ()):  # done videos that lack a policy of the store gain its frames
                grow[it.video_id] = record
                todo.append(it)
    return todo, grow


def relabelled_videos(items: list[VideoItem], cache) -> list[str]:
    """Ids of done videos whose manifest row gives labels or a split other than their record's."""
    labelled = [it for it in items if it.labels or it.split]
    briefs = cache.briefs([it.video_id for it in labelled], policies=False)
    return [it.video_id for it in labelled if it.video_id in briefs and
            (list(it.labels), it.split) != (list(briefs[it.video_id]["labels"]), briefs[it.video_id]["split"])]


def prepare_store(cfg: ExtractRequest, device: str | None = None) -> list[str]:
    """What a launcher does once, before any worker starts: create the store, or with
    ``cfg.overwrite`` replace one made with other settings (a store whose settings match is
    kept). The model is built on ``device`` (default: the config's) to know the provenance.
    Returns the differing facts of the replaced store (empty when nothing was replaced)."""
    validate(cfg)
    read_manifest(cfg.manifest)  # a bad manifest fails here, not in every worker
    enc = cfg.encoder if device is None else dataclasses.replace(cfg.encoder, device=device)
    encoder = make_encoder(enc, cfg.policies)
    return CacheWriter.open(cfg.out, root_attrs(cfg, encoder), replace=cfg.overwrite).replaced


def root_attrs(cfg: ExtractRequest, encoder: FrozenEncoder) -> dict:
    """The store's provenance: everything needed to interpret its tokens."""
    if is_video_model(cfg.encoder.model):  # rows are clips; the clip policy enters the fingerprint
        attrs = _frame_root_attrs(cfg, encoder)
        attrs["frames"]["clip_policy"] = str(cfg.policies[0])
        attrs["frames"]["clip"] = encoder.clip_spec.to_json()
        attrs["storage"].update(tokens_dims=["clip", "layer", "token", "channel"],
                                token_order="the pooled output first, then the clip's T'xH'xW' positions row-major")
        return attrs
    return _frame_root_attrs(cfg, encoder)


def _frame_root_attrs(cfg: ExtractRequest, encoder: FrozenEncoder) -> dict:
    provenance = encoder.provenance()
    if cfg.resize == "pil":  # a preprocessing fact (absent for swscale, as in older stores): another resize is another store
        provenance["preprocess"] = {**provenance["preprocess"], "resizer": "pil",
                                    "resize_backend": "PIL Image.resize of frames decoded at source size "
                                                      "(torchvision's Resize on PIL images)"}
    return {
        "featcache_version": __version__,
        **provenance,
        "frames": {
            "policies": [str(p) for p in cfg.policies],
            "luv_size": cfg.luv_size if cfg.luv_size == "full" else list(cfg.luv_size),
            "luv_score": "mean |CIE L*u*v* (D65, sRGB) - previous frame's|; frame 0 scores 0",
            "short_videos": cfg.short_videos,
            # --stream N decides which pictures the tokens are of: a fact of the store (absent, as in
            # older stores, when each file's default stream is taken)
            **({"stream": cfg.stream} if cfg.stream is not None else {}),
        },
        "manifest": {"path": os.path.abspath(cfg.manifest)},  # where `cache status` finds the videos
        "storage": {"dtype": cfg.dtype, "tokens_dims": ["frame", "layer", "token", "channel"],
                    "token_order": "prefix (CLS/register) tokens first, then patches row-major",
                    **({"quantization": quant.DESCRIPTION} if cfg.dtype == "int8" else {}),
                    # the index table's columns (a wider row: featcache.cache.index.TABLE_VIEWS) with views only
                    **({"table_arrays": list(index.VIEW_ARRAYS)} if cfg.train_views else {})},
        "crops": None if cfg.crops == 1 else {
            "count": 3, "positions": ["first (left/top)", "centre", "last (right/bottom)"],
            "offsets": "0, margin/2, margin along the long side; centred on the short side",
            "stored": "tokens = the centre crop; side_crops = (first, last)"},
        **_views_attrs(cfg),
    }


def _views_attrs(cfg: ExtractRequest) -> dict:
    """``views`` (and the wider index table it needs) of a store with training views; nothing
    otherwise, so the attributes and fingerprints of stores without views stay as they were."""
    if not cfg.train_views:
        return {}
    from featcache.cache.views import views_attrs
    from featcache.video.views import RECIPES

    return {"views": views_attrs(cfg.train_views, cfg.view_aug, cfg.view_seed, RECIPES[cfg.view_aug].source)}


def decode_spec(cfg: ExtractRequest, encoder, policies: tuple[FramePolicy, ...] | None = None) -> DecodeSpec:
    """What the decoding side needs for this extraction and model: the pipeline's own spec, for
    tools that decode as extraction does (``video.prepare.prepare(item, decode_spec(cfg, enc))``)."""
    policies = cfg.policies if policies is None else policies  # a plan's: the store's policies
    needs_luv = scores_needed(policies)
    return DecodeSpec(policies, cfg.short_videos, cfg.luv_size if needs_luv else None, cfg.decoder,
                      encoder.short_side, PreprocessFacts.from_json(encoder.preprocess).interpolation, encoder.cfg.img_size, cfg.crops,
                      getattr(encoder, "clip_spec", None), cfg.stream,
                      (cfg.view_aug, cfg.train_views, cfg.view_seed) if cfg.train_views else None, cfg.resize)


FATAL_STREAK = 2  # a full disk, quota or read-only store refusing this many videos in a row stops the run


class _Stop(Exception):
    """Raised inside the pipeline when no later video can be written (PublishError.fatal)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def nonfinite(tokens: np.ndarray) -> str:
    """Why tokens cannot be cached ("" when every value is finite)."""
    bad = tokens.size - int(np.count_nonzero(np.isfinite(tokens)))
    return (f"the model produced {bad} NaN or infinite token value(s) (of {tokens.size}; in the stored dtype "
            f"{tokens.dtype}); not cached") if bad else ""


class _Pipeline:
    def __init__(self, plan: ExtractPlan, encoder: FrozenEncoder, writer: CacheWriter, summary: ExtractSummary,
                 grow: dict[str, VideoRecord] | None = None):
        cfg = plan.request
        self.plan, self.cfg, self.encoder, self.writer, self.summary = plan, cfg, encoder, writer, summary
        self.grow = grow or {}
        self.workers = plan.decode_workers
        self.policies = plan.policies
        self.max_count = short_below(self.policies)  # stride pools are never short
        self.needs_luv = scores_needed(self.policies)
        self.jobs: deque[_Job] = deque()
        self.inflight = None  # (parts, Pending): the batch submitted last, not yet collected
        self.pin = encoder.device.type == "cuda"
        self.fatal_streak = 0  # videos in a row the store refused for want of space or permission
        self.full_batches = [0, 0.0, 0]  # batches of exactly batch_size: count, forward seconds, frames
        # the dtype tokens are collected in (int8: float32, quantized at publishing)
        self.kind = np.dtype(np.float32 if cfg.dtype == "int8" else cfg.dtype)

    # ---------------------------------------------------------------- decoding side
    def _prepared(self, items: list[VideoItem]):
        """Each item decoded, selected and cropped, in order: in this thread or in worker processes."""
        spec = decode_spec(self.cfg, self.encoder, self.policies)
        if not self.workers:
            yield from (prepare(item, spec, self.grow.get(item.video_id)) for item in items)
            return
        pool = DecodePool(self.workers, self.cfg.prefetch)
        try:
            yield from pool.map(items, spec, self.grow)
        finally:
            pool.close()

    # ---------------------------------------------------------------- main thread
    def run(self, items: list[VideoItem], show_progress: bool) -> None:
        """Decode (here, or in the worker processes) and feed the model. Without workers, each
        video is decoded between forwards: on a CPU a decoding thread beside torch's threads
        slows their parallel regions more than the decode costs; on a GPU ``submit`` returns
        before the forward ends, so decoding overlaps the device's work anyway."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from featcache.progress import progress as make_progress

        columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TextColumn("videos"),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
        self.start = time.perf_counter()
        with make_progress("extract", "videos", columns, disable=not show_progress) as progress:  # plain lines in logs
            self.progress, self.task = progress, progress.add_task("extract", total=len(items), rate="")
            source = self._prepared(items)
            try:
                for decoded in source:
                    self._accept(decoded)
                    while self._buffered() >= self.plan.batch_size:
                        self._forward()
                while self.jobs or self.inflight:
                    self._forward()
            except _Stop as stop:  # nothing more can be written: the summary says why and what is left
                reached = len(self.summary.failed) + self.summary.done + self.summary.extended + self.summary.skipped
                self.summary.stopped = str(stop.error)
                self.summary.not_attempted = max(0, self.summary.total - reached)
            finally:
                source.close()  # stops the workers

    def _fail(self, decoded: Prepared, reason: str) -> None:
        """Record a failed video in the summary and, when the store takes it, in the store."""
        self.summary.failed[decoded.item.video_id] = reason
        try:
            self.writer.write_failure(decoded.record, reason)
        except PublishError as exc:
            self.summary.failed[decoded.item.video_id] = f"{reason}; its failure record was not written either: {exc}"
        self._advance()

    def _accept(self, decoded: Prepared) -> None:
        if decoded.reason:
            self._fail(decoded, decoded.reason)
            return
        record = VideoRecord.from_json(decoded.record)
        source, found = record.source, record.source.unknown  # found: the decoder's fields without one of their own
        if found.get("decoder_messages"):
            self.summary.decoder_messages[decoded.item.video_id] = found.get("decoder_messages")
        if source.truncated:
            what = f"decoded {source.num_frames} frames, the container promises ~{source.expected_frames}"
            if self.cfg.truncated == "fail":
                self._fail(decoded, f"truncated: {what} (--truncated fail)")
                return
            self.summary.warnings.append(f"{decoded.item.video_id}: {what}; the file may be truncated "
                                         "(source.truncated in its record; --truncated fail refuses such files)")
        if found.get("damaged_packets"):
            self.summary.warnings.append(f"{decoded.item.video_id}: {source.decoder_note} "
                                         "(source.damaged_packets in its record)")
        if record.short and record.clips is not None:
            self.summary.warnings.append(f"{decoded.item.video_id}: {source.num_frames} frames, "
                                         "shorter than one clip; its last frame repeated")
        elif record.short:
            self.summary.warnings.append(
                f"{decoded.item.video_id}: {source.num_frames} frames, fewer than "
                f"{self.max_count} requested; frames repeated")
        e = self.encoder
        shape = (len(decoded.frames), len(e.layers), e.num_tokens, e.dim)
        cut = np.empty((len(decoded.frames), e.num_tokens, e.dim), np.float16) if e.cut_block is not None else None
        self.jobs.append(_Job(decoded, np.empty(shape, dtype=self.kind), cut))

    def _buffered(self) -> int:
        return sum(len(j.decoded.frames) - j.sent for j in self.jobs)

    def _forward(self) -> None:
        """Run one batch of up to batch_size frames, taken in order across videos."""
        parts, room = [], self.plan.batch_size
        for job in self.jobs:
            take = min(room, len(job.decoded.frames) - job.sent)
            if take:
                parts.append((job, job.sent, job.sent + take))
                job.sent += take
                room -= take
            if not room:
                break
        previous, self.inflight = self.inflight, None
        if parts:
            batch = torch.from_numpy(np.concatenate([j.decoded.frames[a:b] for j, a, b in parts]))
            if self.pin:
                batch = batch.pin_memory()
            # on CUDA this batch's copy and forward are queued before the previous batch's tokens
            # are collected, so the host work of one batch overlaps the device work of the other
            t = time.perf_counter()
            self.inflight = (parts, self.encoder.submit(batch), time.perf_counter() - t, len(batch))
        if previous is not None:
            self._collect(*previous)
        while self.jobs and self.jobs[0].filled == len(self.jobs[0].decoded.frames):
            self._publish(self.jobs.popleft())

    def _collect(self, parts: list, pending, submit_s: float = 0.0, size: int = 0) -> None:
        t = time.perf_counter()
        tokens, cut = pending.result()  # (B, L, N, C), (B, N, C) or None
        if size == self.plan.batch_size:  # the forward's own time (on CUDA: the wait, roughly the device's)
            fb = self.full_batches
            fb[0], fb[1], fb[2] = fb[0] + 1, fb[1] + submit_s + time.perf_counter() - t, fb[2] + size
        # cast to the stored dtype in torch (vectorised; numpy's float32 -> float16 is ~5x slower),
        # the same round-to-nearest-even bits
        tokens, cut = tokens.to(getattr(torch, self.kind.name)).numpy(), (cut.to(torch.float16).numpy() if cut is not None else None)
        offset = 0
        for job, a, b in parts:
            job.tokens[a:b] = tokens[offset:offset + b - a]
            if cut is not None:
                job.cut[a:b] = cut[offset:offset + b - a]
            job.filled += b - a
            offset += b - a

    def _publish(self, job: _Job) -> None:
        tokens, side, cut = job.tokens, None, job.cut
        why = nonfinite(tokens)
        if why:  # refused here, named in the summary; never a store that trains to NaN
            self._fail(job.decoded, why)
            return
        views = None
        if self.cfg.train_views:  # ((crops + K) T, ...) -> the crops' rows, then (K, T, ...) views
            rows = len(tokens) // (self.cfg.crops + self.cfg.train_views)
            tokens, views = tokens[:rows * self.cfg.crops], tokens[rows * self.cfg.crops:].reshape(
                self.cfg.train_views, rows, *tokens.shape[1:])
        if self.cfg.crops == 3:  # (3T, ...) in crop order -> centre crop + (first, last)
            parts = np.split(tokens, 3)
            tokens, side = parts[1], np.stack([parts[0], parts[2]])
        try:
            if job.decoded.grown is not None:
                written = self._publish_grown(job.decoded, tokens, cut, side, views)
            else:
                written = self.writer.write_video(job.decoded.record, tokens, job.decoded.scores, cut, side, views)
        except PublishError as exc:
            lose_published(self.summary, exc, self.grow)
            self._fail(job.decoded, str(exc))
            self.fatal_streak = self.fatal_streak + 1 if exc.fatal else 0
            if self.fatal_streak >= FATAL_STREAK or exc.replaced:
                for left in self.jobs:  # decoded, not published: the next run redoes them
                    self.summary.failed[left.decoded.item.video_id] = f"not written: {exc}"
                self.jobs.clear()
                self.inflight = None
                raise _Stop(exc) from None
            return
        self.fatal_streak = 0
        if written is None:  # another writer published this video first; theirs is kept
            self.summary.skipped += 1
        else:
            self.summary.bytes_written += written
            self.summary.done += job.decoded.grown is None  # grown videos are counted in summary.extended
            # every crop went through the model; a clip row is its T frames
            self.summary.frames += len(job.tokens) * (job.decoded.frames.shape[1] if job.decoded.frames.ndim == 5 else 1)
        self._advance()

    def _publish_grown(self, decoded: Prepared, tokens, cut, side, views=None) -> int | None:
        """Old and new frames merged in source order, published in place of the old video."""
        g, entry = decoded.grown, self.writer.video(decoded.item.video_id)
        size = len(g.old_at) + len(g.new_at)  # the merged pool: the cached frames and the new ones

        def merge(old: np.ndarray, new: np.ndarray, axis: int = 0) -> np.ndarray:
            out = np.empty((*old.shape[:axis], size, *old.shape[axis + 1:]), dtype=new.dtype)
            np.moveaxis(out, axis, 0)[g.old_at] = np.moveaxis(old, axis, 0)
            np.moveaxis(out, axis, 0)[g.new_at] = np.moveaxis(new, axis, 0)
            return out

        scores = decoded.scores if decoded.scores is not None else entry.luv_scores
        written = self.writer.replace_video(
            decoded.record, merge(entry.tokens, tokens), scores,
            merge(entry.cut, cut) if cut is not None else None,
            merge(entry.side_crops, side, axis=1) if side is not None else None,
            merge(entry.views, views, axis=1) if views is not None else None)
        if written is not None:
            self.summary.extended += 1
            self.summary.new_frames += len(g.new_at)
        return written

    def _advance(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = f"{self.summary.frames / elapsed:.1f} frames/s" if elapsed else ""
        self.progress.update(self.task, advance=1, rate=rate)
