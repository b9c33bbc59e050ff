"""The decoding side of stage 1, one video at a time: decode, select frames, crop.

``prepare`` is a plain function of a manifest item and a picklable ``DecodeSpec``, so it runs the
same in the extraction process (between forwards) or in decode worker processes
(``DecodePool``: started from a fork server, a fresh process that has decoded nothing, since
decord deadlocks in children forked from a process that did; spawned where there is no fork
server; one thread each, frames handed back through shared memory). As with any multiprocessing
start method but fork, a script that extracts with workers must do so under
``if __name__ == "__main__":`` (workers import the main module). Publishing stays in the main
process.

Long module: one video's decode, a done video's growth (its typed record in, the merged pool's
positions out) and the worker pool that runs them are one unit around ``Prepared``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from featcache.data.manifest import VideoItem
from featcache.errors import FeatcacheError
from featcache.spec.policy import FramePolicy, short_below
from featcache.video.decode import DecodeError, decode_video
from featcache.video.resize import pil_resize
from featcache.video.select import select_frames
from featcache.video.views import with_views


@dataclass(frozen=True)
class DecodeSpec:
    """Everything the decoding side needs (no model): picklable for worker processes."""

    policies: tuple[FramePolicy, ...]  # parsed once, from --frames
    short_videos: str
    luv_size: tuple[int, int] | str | None  # (w, h) or "full"; only with key-frame policies
    decoder: str
    short_side: int
    interpolation: str
    img_size: int
    crops: int
    clip: object | None = None  # video encoders: VideoEncoder.clip_spec, a clip_prepare.ClipSpec (clips are cut, resized and cropped)
    stream: int | None = None  # --stream N: the container's video stream; None: the one ffmpeg shows
    views: tuple[str, int, int] | None = None  # --train-views: (recipe, count, seed); video.views draws them
    resizer: str = "swscale"  # --resize: swscale at decode time, or pil (video.resize: source-size frames, PIL's resize)


@dataclass
class Chosen:
    """What ``pick`` chose while a video decoded (read after decoding)."""

    scores: np.ndarray | None = None  # every frame's LUV score, or None (no policy scores)
    positions: dict | None = None  # policy -> positions into the pool
    pool: np.ndarray | None = None  # the pool's source indices (kept when a done video grows)


@dataclass(frozen=True)
class Grown:
    """Where a growing video's cached and new frames go in its merged pool."""

    old_at: np.ndarray
    new_at: np.ndarray


@dataclass
class Prepared:
    item: VideoItem
    record: dict
    frames: np.ndarray | None = None  # (crops * T + views * T, S, S, 3) uint8: crops first/centre/last, then views
    scores: np.ndarray | None = None
    reason: str = ""  # set when the video failed
    grown: Grown | None = None  # extending a done video: where its old and new frames go
    shared: tuple | None = None  # (name, shape) of the frames in shared memory, from a worker


def crop(frames: np.ndarray, size: int, position: int = 1, count: int = 1) -> np.ndarray:
    """Crop resized uint8 frames (K, H, W, 3) -> (K, S, S, 3). ``count=1``: the centre crop
    (torchvision rounding). ``count=3``: crop ``position`` 0/1/2 along the long side (left /
    centre / right, or top / centre / bottom) at offsets 0, margin/2, margin, centred on the
    short side: the three spatial views of SlowFast's and ST-Adapter's testing
    (``video_dataset/dataset.py`` crops at 0, margin/2, margin)."""
    h, w = frames.shape[1:3]
    if h < size or w < size:
        raise ValueError(f"frames of {w}x{h} are smaller than the {size}x{size} crop")
    left, top = crop_origin(w, h, size, position, count)
    return np.ascontiguousarray(frames[:, top:top + size, left:left + size])


def crop_origin(w: int, h: int, size: int, position: int = 1, count: int = 1) -> tuple[int, int]:
    """(left, top) of :func:`crop`'s square in a ``w`` x ``h`` frame."""
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    if count == 3 and position != 1:
        if w >= h:
            left = 0 if position == 0 else w - size
        else:
            top = 0 if position == 0 else h - size
    return left, top


def prepare(item: VideoItem, spec: DecodeSpec, old=None) -> Prepared:
    """Decode and crop the frames of ``item`` its policies pick; with ``old`` (a done video's
    record, a ``cache.facts.VideoRecord``), only the frames it lacks. Never raises for a bad video: ``reason`` says why."""
    if spec.clip is not None:  # a video encoder: clips, not frames
        from featcache.video.clip_prepare import prepare_clips

        return prepare_clips(item, spec, Prepared, (captured_stderr, _with_log, decoder_log))
    policies = spec.policies
    max_count = short_below(policies)  # stride pools are never short
    record = {"video_id": item.video_id, "path": item.path, "split": item.split,
              "labels": list(item.labels), "extra": item.extra}
    chosen = Chosen()

    def pick(n: int, scores: np.ndarray | None, stamps: np.ndarray) -> np.ndarray:
        if n < max_count and spec.short_videos == "fail":
            raise DecodeError(f"video has {n} frames, fewer than the {max_count} requested")
        chosen.scores = scores
        pool, chosen.positions = select_frames(policies, n, chosen.scores, stamps)
        if old is None:
            return pool
        chosen.pool = pool
        new = np.setdiff1d(pool, old.frame_indices)
        # a video that gains no frame still needs its frame count and scores: one frame is decoded, dropped
        return new if len(new) else np.asarray(old.frame_indices[:1])

    fixed = tuple(p for p in policies if not p.needs_scores)
    keep_best = max([p.scored_frames for p in policies] or [0])

    def guess(n: int, stamps: np.ndarray) -> np.ndarray:
        """What ``pick`` will choose besides key frames if the header's frame count is right."""
        idx = select_frames(fixed, n, None, stamps)[0] if fixed else np.zeros(0, np.int64)
        return idx if old is None else np.union1d(idx, np.asarray(old.frame_indices[:1], dtype=np.int64))

    order, views = (0, 1, 2) if spec.crops == 3 else (1,), []
    # --resize pil: frames decoded at source size (short side 0), each resized by PIL as it is decoded;
    # key-frame LUV scores stay on swscale's small frames (the decoder's own pass at luv_size)
    short_side, post = spec.short_side, None
    if spec.resizer == "pil":
        short_side, post = 0, functools.partial(pil_resize, short_side=spec.short_side,
                                                interpolation=spec.interpolation)
    messages: list[str] = []  # what FFmpeg (inside decord / PyAV) prints: kept in the record, not on the terminal
    try:
        with captured_stderr(messages):
            video = decode_video(item.path, pick, short_side, spec.luv_size, spec.decoder, spec.interpolation,
                                 keep_best, guess, spec.stream, post)
        # with 3 crops: [first crop's frames, centre crop's, last crop's], split again at publishing
        frames = np.concatenate([crop(video.frames, spec.img_size, p, spec.crops) for p in order])
        if spec.views is not None:  # then each training view's frames: [view 0's, view 1's, ...]
            frames, views = with_views(frames, video, item.video_id, spec.views, spec.img_size, old)
    except DecodeError as exc:
        return Prepared(item, _with_log(record, messages), reason=str(exc))
    except Exception as exc:  # one bad file must not end the run; the reason names the error
        return Prepared(item, _with_log(record, messages), reason=f"unexpected {type(exc).__name__}: {exc}"[:300])
    if old is not None:
        return _grown(item, old, video, frames, chosen, len(order) + len(views))
    record.update(
        source={"num_frames": video.num_frames, "fps": video.fps, "width": video.width,
                "height": video.height, "decoder": video.decoder, "decoder_note": video.note,
                "expected_frames": video.expected_frames, "truncated": video.looks_truncated,
                **video.source_fields(), **decoder_log(messages)},
        frame_indices=video.indices, timestamps=video.timestamps, pts_seconds=video.pts.tolist(),
        policies=chosen.positions, num_cached_frames=len(video.indices),
        short=video.num_frames < max_count, **({"views": views} if views else {}))
    return Prepared(item, record, frames, chosen.scores)


DECODER_LOG_LINES = 20  # distinct decoder messages kept per video (the count covers all)


def decoder_log(messages: list[str]) -> dict:
    """``decoder_messages`` (how many lines the decoder printed) and ``decoder_log`` (the first
    distinct ones, FFmpeg's context pointers dropped) for a video's record."""
    distinct = []
    for line in messages:
        line = re.sub(r" @ 0x[0-9a-f]+\]", "]", line.strip())
        if line and line not in distinct and len(distinct) < DECODER_LOG_LINES:
            distinct.append(line)
    return {"decoder_messages": sum(1 for m in messages if m.strip()), "decoder_log": distinct}


def _with_log(record: dict, messages: list[str]) -> dict:
    return {**record, **decoder_log(messages)} if any(m.strip() for m in messages) else record


@contextlib.contextmanager
def captured_stderr(sink: list[str]):
    """Collect what is written to file descriptor 2 (FFmpeg logs there from C, past Python's
    sys.stderr) into ``sink`` instead of the terminal, where it would print over the progress bar."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.extend(tmp.read().decode("utf-8", errors="replace").splitlines())


def _grown(item: VideoItem, old, video, frames: np.ndarray, chosen: Chosen, crops: int) -> Prepared:
    """A done video (``old``, its VideoRecord) gaining the frames of added policies: only
    ``video.indices`` not already cached go through the model; old and new frames are merged at publishing."""
    old_idx = np.asarray(old.frame_indices, dtype=np.int64)
    keep = ~np.isin(video.indices, old_idx)  # the probe frame of a video that gains none is dropped
    new_idx = video.indices[keep]
    merged = np.union1d(old_idx, new_idx)
    policies = {name: np.searchsorted(merged, old_idx[list(pos)]).tolist() for name, pos in old.policies.items()}
    for name, pos in chosen.positions.items():
        if name not in policies:
            policies[name] = np.searchsorted(merged, chosen.pool[pos]).tolist()
    stamps = np.empty(len(merged))
    stamps[np.searchsorted(merged, old_idx)] = old.timestamps
    stamps[np.searchsorted(merged, new_idx)] = video.timestamps[keep]
    start = old.source.unknown.get("start_seconds", video.start) if old.source is not None else video.start
    record = {k: v for k, v in old.to_json().items() if k not in ("status", "has_luv_scores")}
    if video.clock and isinstance(record.get("source"), dict) and "clock" not in record["source"]:
        record["source"]["clock"] = video.clock  # a store extracted before clocks were recorded gains it
    record.update(frame_indices=merged, timestamps=stamps, pts_seconds=(stamps + start).tolist(), policies=policies,
                  num_cached_frames=len(merged))
    frames = frames.reshape(crops, -1, *frames.shape[1:])[:, keep].reshape(-1, *frames.shape[1:])
    grown = Grown(np.searchsorted(merged, old_idx), np.searchsorted(merged, new_idx))
    return Prepared(item, record, frames, chosen.scores, grown=grown)


# ---------------------------------------------------------------- worker processes
def _init_worker() -> None:
    """One thread per decode worker (the cores are shared with the model's threads); torch is
    not imported here: decoding does not need it."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


def _prepare_shared(item: VideoItem, spec: DecodeSpec, old) -> Prepared:
    """``prepare`` in a worker: the frames go into a shared-memory block the main process frees."""
    from multiprocessing import shared_memory

    out = prepare(item, spec, old)
    if out.frames is not None and out.frames.size:
        shm = shared_memory.SharedMemory(create=True, size=out.frames.nbytes)
        np.ndarray(out.frames.shape, np.uint8, buffer=shm.buf)[...] = out.frames
        out.shared, out.frames = (shm.name, out.frames.shape), None
        shm.close()
    return out


def _receive(out: Prepared) -> Prepared:
    """Move a worker's frames out of shared memory (and free the block)."""
    from multiprocessing import shared_memory

    if out.shared is not None:
        name, shape = out.shared
        shm = shared_memory.SharedMemory(name=name)
        try:
            out.frames = np.array(np.ndarray(shape, np.uint8, buffer=shm.buf))
        finally:
            shm.close()
            shm.unlink()
        out.shared = None
    return out


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def auto_workers(device_type: str) -> int:
    """Decode workers for the cores the model leaves: on a GPU all but one core (the model's
    host thread); on the CPU the cores beyond torch's threads (0: decode in a thread)."""
    import torch

    cores = usable_cores()
    if device_type == "cuda":
        return max(1, cores - 1)
    return max(0, cores - torch.get_num_threads())


class DecodePool:
    """``workers`` spawned processes running ``prepare``; ``map`` yields results in item order
    with at most ``ahead`` videos decoded or in flight beyond the one being consumed."""

    def __init__(self, workers: int, ahead: int):
        import multiprocessing

        self.ahead = max(ahead, workers)
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["featcache.video.prepare"])  # workers start with this module imported
        else:
            context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)

        self.pending: list = []

    def map(self, items: list[VideoItem], spec: DecodeSpec, grow: dict):
        from concurrent.futures.process import BrokenProcessPool

        it = iter(items)

        def submit() -> None:
            item = next(it, None)
            if item is not None:
                self.pending.append(self.pool.submit(_prepare_shared, item, spec, grow.get(item.video_id)))

        try:
            for _ in range(self.ahead + 1):
                submit()
            while self.pending:
                out = _receive(self.pending.pop(0).result())
                submit()
                yield out
        except BrokenProcessPool:
            raise FeatcacheError("a decode worker process died (killed, out of memory, or a script that starts "
                                 "extraction without `if __name__ == \"__main__\":`, which worker processes need); "
                                 "re-run to resume, or use --decode-workers 0") from None

    def close(self) -> None:
        """Stop: queued videos are cancelled, finished ones' shared memory freed."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self.pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                _receive(future.result())
        self.pending = []
