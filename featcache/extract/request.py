"""What the user asked for (:class:`ExtractRequest`) and what a run does (:class:`ExtractPlan`).

The request is frozen and holds the options as given: ``batch_size`` and ``decode_workers`` may
be :data:`AUTO`, ``frames`` is the asked policies. :func:`resolve_plan` turns it, once, into a
plan against the store and the device: the store's policies (the asked ones plus those cached
earlier), a batch size (probed, cached per device, or the video-encoder default) and a number of
decode workers. ``run_extract`` builds one plan and never rebinds the request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Union

from featcache.cache import schema
from featcache.errors import FeatcacheError, OptionError
from featcache.extract.encoder import EncoderConfig
from featcache.extract.video_encoders import is_video_model
from featcache.spec.policy import FramePolicy, parse_policies, scores_needed
from featcache.video.decode import DECODERS
from featcache.video.resize import RESIZERS

AUTO = "auto"  # the one spelling of "resolve this for me" in a request (batch size, decode workers)
Auto = Literal["auto"]
SHORT_VIDEO_MODES = ("repeat", "fail")
VIDEO_BATCH = 4  # clips per forward of a video encoder under --batch-size auto


@dataclass(frozen=True)
class ExtractRequest:
    """Everything `featcache extract` was asked; the CLI builds one of these (``cli/extract.py``
    ``build_request``), and so does ``featcache estimate`` from the same options."""

    manifest: str
    out: str
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    frames: str = "uniform:16"  # policies; the union of their frames is cached once
    batch_size: Union[int, Auto] = 32  # frames per forward pass, spanning videos; AUTO: probed per device (batchsize.py)
    dtype: str = "float16"  # storage dtype of the tokens
    decoder: str = "auto"  # auto = pyav, one in-order pass; decord / torchcodec: random access checked against PyAV
    luv_size: tuple[int, int] | str = (64, 48)  # (w, h) scale of key-frame LUV scoring, or "full" (the source size)
    short_videos: str = "repeat"  # fewer frames than a policy asks: repeat frames or fail the video
    truncated: str = "warn"  # fewer frames decoded than the container promises: warn (record field) or fail the video
    overwrite: bool = False  # replace an existing cache made with other settings (never one whose settings match)
    shard: tuple[int, int] | None = None  # (index, count): process only this shard of the videos
    prefetch: int = 4  # decoded videos waiting for the model
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    crops: int = 1  # 1: the centre crop; 3: also the first and last crop along the long side (spatial views)
    decode_workers: Union[int, Auto] = 0  # decode processes (0: in this process between forwards; AUTO: the free cores)
    stream: int | None = None  # the container's video stream index; None: the one ffmpeg shows by default
    train_views: int = 0  # augmented training views per video (random-resized crop + flip), cached beside the centre
    view_aug: str = "torchvision"  # their recipe (featcache.video.views.RECIPES)
    view_seed: int = 0  # seeds every video's view draws (with its id): a resume draws the same views
    resize: str = "swscale"  # swscale: FFmpeg scales at decode time; pil: torchvision's resize of PIL images (video.resize)

    @cached_property
    def policies(self) -> tuple[FramePolicy, ...]:
        """``frames`` parsed (once); FeatcacheError naming the bad part."""
        try:
            return parse_policies(self.frames)
        except ValueError as exc:
            raise OptionError("frames", f"{exc}") from None


ExtractConfig = ExtractRequest  # the earlier name, kept for scripts and benchmarks


@dataclass(frozen=True)
class ExtractPlan:
    """A request resolved against the store and the device: what ``run_extract`` runs."""

    request: ExtractRequest
    policies: tuple[FramePolicy, ...]  # the store's: the asked ones and those cached earlier
    batch_size: int  # frames (clips) per forward
    decode_workers: int  # decode processes; 0: between forwards in the model's process
    batch_size_note: str = ""  # how the batch size was chosen (AUTO only)
    probe: dict | None = None  # the probed or cached entry of batchsize.py (AUTO on an image model)
    probe_cached: bool = False  # that entry came from the per-device cache


def resolve_plan(request: ExtractRequest, encoder, store_policies: tuple[str, ...], workers: int,
                 has_work: bool) -> ExtractPlan:
    """The plan of ``request``: ``store_policies`` parsed, ``workers`` (resolved by the caller,
    which owns the torch threads) and the batch size (AUTO: the video-encoder default, or probed
    on ``encoder`` when there is work)."""
    policies = parse_policies(",".join(store_policies))
    if request.batch_size != AUTO:
        return ExtractPlan(request, policies, request.batch_size, workers)
    if is_video_model(request.encoder.model):  # not probed: clips are costly and few
        return ExtractPlan(request, policies, VIDEO_BATCH, workers,
                           f"batch size {VIDEO_BATCH} clips (auto is not probed for video encoders)")
    from featcache.extract.batchsize import probe

    entry, how = probe(encoder) if has_work else ({"batch_size": 32}, "auto: nothing to extract")
    size = int(entry["batch_size"])
    return ExtractPlan(request, policies, size, workers, f"batch size {size} ({how})", entry,
                       how.startswith("auto: cached"))


def validate(cfg: ExtractRequest) -> None:
    """Fail fast on bad options, before any model is built."""
    cfg.policies  # noqa: B018  (parses --frames)
    clips = [str(p) for p in cfg.policies if p.unit == "clip"]
    if is_video_model(cfg.encoder.model) and not clips:
        raise FeatcacheError(f"--frames {cfg.frames}: {cfg.encoder.model} is a video encoder; it takes a clip policy "
                             "(clips:N, or fps:F,windows:W/S)")
    if clips and not is_video_model(cfg.encoder.model):
        raise FeatcacheError(f"--frames {clips[0]}: clip policies are for video encoders (--model tv:NAME); "
                             f"{cfg.encoder.model} is an image model: use uniform:N, keyframes:N, stride:S or fps:F")
    if clips and cfg.crops != 1:
        raise FeatcacheError("--crops 3: video encoders cache the centre crop only")
    if cfg.batch_size != AUTO and (not _is_int(cfg.batch_size) or cfg.batch_size < 1):
        raise OptionError("batch_size", f"expected auto or an integer >= 1, got {cfg.batch_size!r}")
    if cfg.dtype not in schema.STORAGE_DTYPES:
        raise OptionError("dtype", f"unknown {cfg.dtype!r}; expected one of {', '.join(schema.STORAGE_DTYPES)}")
    if cfg.decoder not in DECODERS:
        raise OptionError("decoder", f"unknown {cfg.decoder!r}; expected one of {', '.join(DECODERS)}")
    if cfg.short_videos not in SHORT_VIDEO_MODES:
        raise OptionError("short_videos", f"unknown {cfg.short_videos!r}; expected repeat or fail")
    if cfg.luv_size != "full" and not (isinstance(cfg.luv_size, (tuple, list)) and len(cfg.luv_size) == 2
                                       and all(isinstance(v, int) and v >= 2 for v in cfg.luv_size)):
        raise OptionError("luv_size", f"expected WxH such as 64x48, or full, got {cfg.luv_size!r}")
    if cfg.luv_size == "full" and cfg.decoder in ("decord", "torchcodec") and scores_needed(cfg.policies):
        raise FeatcacheError(f"--luv-size full is scored in the in-order pass; use --decoder auto or pyav, "
                             f"not {cfg.decoder}")
    if cfg.truncated not in ("warn", "fail"):
        raise OptionError("truncated", f"unknown {cfg.truncated!r}; expected warn or fail")
    if cfg.decode_workers != AUTO and (not _is_int(cfg.decode_workers) or cfg.decode_workers < 0):
        raise OptionError("decode_workers", f"expected auto or an integer >= 0, got {cfg.decode_workers}")
    if cfg.resize not in RESIZERS:
        raise OptionError("resize", f"unknown {cfg.resize!r}; expected one of {', '.join(RESIZERS)}")
    if cfg.resize != "swscale" and is_video_model(cfg.encoder.model):
        raise FeatcacheError(f"--resize {cfg.resize}: {cfg.encoder.model} is a video encoder, whose frames are "
                             "resized as its own preset does already; drop --resize")
    if cfg.crops not in (1, 3):
        raise OptionError("crops", f"expected 1 or 3, got {cfg.crops}")
    if cfg.dtype == "int8" and cfg.crops == 3:
        raise FeatcacheError("--dtype int8 with --crops 3: int8 stores hold the centre crop only; use float16")
    if cfg.encoder.token_pool != 1 and cfg.encoder.cut_block is not None:
        raise FeatcacheError("--token-pool with --cut-block: the cut keeps the full grid; give one of them")
    if cfg.crops == 3 and cfg.encoder.cut_block is not None:
        raise FeatcacheError("--crops 3 with --cut-block: the cut is cached for the centre crop only; give one of them")
    _validate_views(cfg)
    if cfg.overwrite and cfg.shard is not None:
        raise FeatcacheError(
            "--overwrite with --shard: each shard would replace the store under the others; replace it once "
            f"with `featcache extract {cfg.manifest} --out {cfg.out} --overwrite --init-only` (same options, "
            "no --shard), then start the shards without --overwrite")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_views(cfg: ExtractRequest) -> None:
    from featcache.video.views import RECIPES

    if not isinstance(cfg.train_views, int) or cfg.train_views < 0:
        raise OptionError("train_views", f"expected an integer >= 0, got {cfg.train_views!r}")
    if cfg.view_aug not in RECIPES:
        raise OptionError("view_aug", f"unknown {cfg.view_aug!r}; expected one of {', '.join(RECIPES)}")
    if cfg.train_views and is_video_model(cfg.encoder.model):
        raise FeatcacheError(f"--train-views {cfg.train_views}: training views are cached for image models only; "
                             f"{cfg.encoder.model} is a video encoder")
    if cfg.train_views and cfg.encoder.cut_block is not None:
        raise FeatcacheError("--train-views with --cut-block: the cut is cached for the centre crop only; give one "
                             "of them")
