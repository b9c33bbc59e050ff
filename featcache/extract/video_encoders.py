"""Frozen video encoders (``--model tv:NAME``): clips in, spatio-temporal tokens out.

The one place that dispatches on the model name: :func:`make_encoder` returns the timm
:class:`featcache.extract.encoder.FrozenEncoder` for image models and a :class:`VideoEncoder` for
``tv:`` (torchvision) and ``hf:`` (transformers VideoMAE / V-JEPA 2, featcache/extract/hf_video.py) models.

Preprocessing is the weights' own (``<Model>_Weights.KINETICS400_V1.transforms``, torchvision's
``VideoClassification`` preset, torchvision/transforms/_presets.py L86-125): resize of every
frame (bilinear, ``antialias=False``) to ``resize_size`` (one number: the short side; two: a
fixed (h, w)), centre crop, ``/ 255``, mean/std. Frames are decoded at their source size and
resized with that same ``torchvision.transforms.functional.resize`` on uint8 frames
(featcache/video/clip_prepare.py), so the model sees what the preset gives it. The clip length and
sampling rate come from the weights' metadata (``_docs``: ``frame_rate=15 ... clip_len=16`` for
r3d_18, resnet.py L312-320; mvit_v2_s 16 frames at 7.5 fps, mvit.py L646-652; s3d 128 at 15,
s3d.py L163-169; swin3d_t 32 at 15, swin_transformer.py L525-527).

Output per clip: ``(1 + T'*H'*W', C)`` tokens, the pooled output first (the vector the model's
classifier reads: ``avgpool`` of the last feature map for the ResNets and Swin3D, the class
token for MViT, the mean of S3D's ``AvgPool3d(2, 7, 7)`` output, whose 1x1 classifier commutes
with the mean), then the last feature map's T' x H' x W' positions in row-major order (t slowest).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

import torch

from featcache.device import resolve_device
from featcache.errors import FeatcacheError, OptionError
from featcache.extract.encoder import EncoderConfig, FrozenEncoder, Pending, read_state_dict, resolve_precision
from featcache.video.clip_prepare import ClipSpec

VIDEO_PREFIXES = ("tv:", "hf:")
# torchvision video models featcache runs, by family (how their tokens are read)
TV_MODELS = {"r3d_18": "resnet", "mc3_18": "resnet", "r2plus1d_18": "resnet", "s3d": "s3d",
             "mvit_v1_b": "mvit", "mvit_v2_s": "mvit", "swin3d_t": "swin", "swin3d_s": "swin", "swin3d_b": "swin"}
# --model-arg keys featcache reads itself (preprocessing / sampling overrides); the rest go to the builder
PREPROCESS_ARGS = ("crop_size", "resize_size", "clip_len", "frame_rate")
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def is_video_model(name: str) -> bool:
    return name.startswith(VIDEO_PREFIXES)


def make_encoder(cfg: EncoderConfig, policies: tuple = ()):
    """The frozen encoder for ``cfg.model``: a VideoEncoder for ``tv:`` / ``hf:``, FrozenEncoder otherwise."""
    if cfg.model.startswith(VIDEO_PREFIXES):
        return VideoEncoder(cfg, policies)
    return FrozenEncoder(cfg)


@dataclass(frozen=True)
class PresetFacts:
    """A video model's preprocessing and sampling: torchvision's preset (``weights_facts``) or a
    transformers video processor (``hf_video._facts``), with --model-arg overrides applied."""

    weights: str
    url: str | None
    crop_size: list[int]  # (height, width)
    resize_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    clip_len: int
    frame_rate: float | None
    min_temporal_size: int | None = None
    resizer: str = "torchvision"  # or hf: the model's own video processor
    source: str | None = None  # hf: the model whose processor resizes
    antialias: bool = False
    prefix: str | None = None  # what the pooled token is, when not the classifier's input
    preset: str | None = None
    resize_backend: str | None = None


def weights_facts(name: str, model_args: dict) -> dict:
    """Preprocessing and sampling of a torchvision video model from its weights enum (overridden
    by the PREPROCESS_ARGS of ``model_args``)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    preset = weights.transforms()  # VideoClassification
    docs = weights.meta.get("_docs", "")
    rate = re.search(r"frame_rate=([\d.]+)", docs)
    length = re.search(r"clip_len=(\d+)", docs)
    facts = {"weights": f"{type(weights).__name__}.{weights.name}", "url": weights.url,
             "crop_size": list(preset.crop_size), "resize_size": list(preset.resize_size),
             "mean": [float(v) for v in preset.mean], "std": [float(v) for v in preset.std],
             "interpolation": preset.interpolation.value, "clip_len": int(length.group(1)) if length else 16,
             "frame_rate": float(rate.group(1)) if rate else 15.0,
             "min_temporal_size": weights.meta.get("min_temporal_size")}
    for key in PREPROCESS_ARGS:
        if key in model_args:
            value = model_args[key]
            facts[key] = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])] \
                if key in ("crop_size", "resize_size") else value
    if len(facts["crop_size"]) == 1:
        facts["crop_size"] = facts["crop_size"] * 2
    return facts


class VideoEncoder:
    """A frozen video model (torchvision, or transformers for ``hf:``) with its own preprocessing; call it on uint8 clips
    (B, T, S, S, 3) (already resized and cropped); returns (B, 1, 1 + T'H'W', C) float32 tokens."""

    cut_block = None
    num_prefix_tokens = 1
    layers = (-1,)

    def __init__(self, cfg: EncoderConfig, policies: tuple = ()):
        self.cfg = cfg
        self.name = cfg.model[3:]
        _check_options(cfg)
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        clips = [p for p in policies if getattr(p, "unit", "") == "clip"]
        self.policy = clips[0] if clips else None  # what clip_prepare cuts (None: a bare encoder, e.g. estimate's)
        self._load(cfg)  # family, facts (preprocessing, sampling), model, weights_info
        own = (self.facts.clip_len, self.facts.frame_rate)  # the model's clip length and sampling rate
        frames, rate = self.policy.clip_shape(*own) if clips else own  # windows:W/S@fps:F cuts its own
        if rate is None:
            raise FeatcacheError(f"--model {cfg.model}: its files give no sampling rate for clips:N; give "
                                 "--model-arg frame_rate=R (frames per second)")
        self.frames, self.rate = int(frames), float(rate)
        self.model.eval().requires_grad_(False).to(self.device)
        self.preprocess = self._preprocess()
        self._mean = torch.tensor(self.facts.mean).view(1, 3, 1, 1, 1).to(self.device)
        self._std = torch.tensor(self.facts.std).view(1, 3, 1, 1, 1).to(self.device)
        h, w = self.facts.crop_size
        try:
            tokens, self.clip_grid = self._forward_tokens(self._normalise(torch.zeros(1, self.frames, h, w, 3,
                                                                                      device=self.device)))
        except RuntimeError as exc:
            raise FeatcacheError(f"--model {cfg.model}: cannot run a {self.frames}-frame {h}x{w} clip "
                                 f"({str(exc).splitlines()[0][:160]}); give clips this model takes") from None
        _, self.num_tokens, self.dim = tokens.shape
        self.grid = (1, self.num_tokens - 1)  # the flattened T'H'W' sequence (clip_grid keeps its shape)

    def _load(self, cfg: EncoderConfig) -> None:
        self.hf = None
        if cfg.model.startswith("hf:"):  # transformers VideoMAE / V-JEPA 2 (featcache/extract/hf_video.py)
            from featcache.extract.hf_video import load_hf

            self.hf, self.model, self.weights_info, facts = load_hf(cfg, PREPROCESS_ARGS, load_weights_file)
            self.facts = PresetFacts(**facts)
            self.family = self.hf.family
            return
        if self.name not in TV_MODELS:
            raise FeatcacheError(f"--model {cfg.model}: unknown torchvision video model {self.name!r}; expected one of "
                                 + ", ".join(f"tv:{m}" for m in TV_MODELS))
        self.family = TV_MODELS[self.name]
        self.facts = PresetFacts(**weights_facts(self.name, cfg.model_args))
        self.model, self.weights_info = _build(self.name, cfg)

    # ---------------------------------------------------------------- what the decoding side needs
    @property
    def short_side(self) -> int:
        return 0  # decode at the source size; clip_prepare resizes as torchvision's preset

    @property
    def clip_spec(self) -> ClipSpec:
        """What featcache.video.clip_prepare needs to cut, resize and crop clips (picklable)."""
        f = self.facts
        return ClipSpec(str(self.policy) if self.policy else None, self.frames, self.rate, list(f.resize_size),
                        list(f.crop_size), f.interpolation, f.resizer, f.source)

    def _preprocess(self) -> dict:
        f = self.facts
        return {"input_size": [3, self.frames, *f.crop_size], "clip_len": self.frames, "frame_rate": self.rate,
                "model_clip_len": int(f.clip_len), "model_frame_rate": None if f.frame_rate is None else float(f.frame_rate),
                "resize_size": f.resize_size,
                "resize": "short side" if len(f.resize_size) == 1 else "fixed (height, width)",
                "crop": "center", "crop_size": f.crop_size, "interpolation": f.interpolation,
                "antialias": f.antialias, "mean": f.mean, "std": f.std, "scale": "1/255",
                "preset": f.preset or f"torchvision {f.weights}.transforms (VideoClassification)",
                "resize_backend": f.resize_backend
                or "torchvision.transforms.functional.resize on uint8 frames decoded at source size"}

    # ---------------------------------------------------------------- forward
    def _normalise(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.permute(0, 4, 1, 2, 3).float() / 255  # (B, T, H, W, 3) -> (B, 3, T, H, W)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, S, S, 3) -> float32 (B, 1, N, C) on the CPU."""
        x = self._normalise(clips.to(self.device, non_blocking=True))
        amp = self.precision in _AMP
        with torch.autocast(self.device.type, dtype=_AMP.get(self.precision), enabled=amp):
            tokens, _ = self._forward_tokens(x)
        return tokens.float().unsqueeze(1).cpu()

    def submit(self, clips: torch.Tensor) -> Pending:
        return Pending(self(clips))

    def _forward_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, 3, T, H, W) normalised -> (B, 1 + T'H'W', C) tokens (pooled first) and (T', H', W')."""
        m = self.model
        if self.hf is not None:
            from featcache.extract.hf_video import hf_tokens

            return hf_tokens(self.hf, m, x)
        if self.family == "mvit":  # MViT.forward up to its norm (torchvision mvit.py L546-560; x is 5-D already)
            x = m.conv_proj(x).flatten(2).transpose(1, 2)  # (B, T'H'W', C0)
            x = m.pos_encoding(x)  # class token prepended
            thw = (m.pos_encoding.temporal_size,) + tuple(m.pos_encoding.spatial_size)
            for block in m.blocks:
                x, thw = block(x, thw)
            return m.norm(x), tuple(int(v) for v in thw)  # (B, 1 + T'H'W', C): the class token is the pooled output
        if self.family == "swin":  # SwinTransformer3d.forward up to its norm (swin_transformer.py L462-467)
            f = m.norm(m.features(m.pos_drop(m.patch_embed(x))))  # (B, T', H', W', C)
            pooled = f.mean(dim=(1, 2, 3))  # AdaptiveAvgPool3d(1)
            grid = tuple(f.shape[1:4])
            f = f.flatten(1, 3)  # (B, T'H'W', C)
        else:
            if self.family == "resnet":  # VideoResNet.forward up to avgpool (resnet.py L251-259)
                f = m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x)))))  # (B, C, T', H', W')
                pooled = m.avgpool(f).flatten(1)
            else:  # S3D.forward (s3d.py L146-150): classifier(avgpool) then mean; the 1x1 conv commutes with the mean
                f = m.features(x)
                pooled = m.avgpool(f).mean(dim=(2, 3, 4))
            grid = tuple(f.shape[2:])
            f = f.flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, T'H'W', C)
        return torch.cat([pooled[:, None], f], dim=1), tuple(int(v) for v in grid)

    def provenance(self) -> dict:
        return {
            "model": {"name": self.cfg.model, "args": dict(self.cfg.model_args), "weights": self.weights_info,
                      "num_params": int(sum(p.numel() for p in self.model.parameters())), "kind": "video",
                      "family": self.family, "weights_enum": self.facts.weights},
            "preprocess": self.preprocess,
            "layers": [-1],
            "layers_requested": [-1],
            "tokens": {"num_prefix_tokens": 1, "grid": list(self.grid), "num_tokens": self.num_tokens,
                       "dim": self.dim, "unit": "clip", "clip_grid": list(self.clip_grid),
                       "prefix": self.facts.prefix or "the pooled output (what the model's classifier reads)",
                       "order": "pooled output, then the last feature map's T'xH'xW' positions row-major (t slowest)"},
            "compute": {"precision": self.precision, "device_type": self.device.type},
            "cut": None,
        }


def _check_options(cfg: EncoderConfig) -> None:
    """Options of image models a video encoder does not take: one line each."""
    if tuple(cfg.layers) != (-1,):
        raise OptionError("layers", f"{cfg.model} caches its last feature map only (--layers -1)")
    if cfg.cut_block is not None:
        raise OptionError("cut_block", f"{cfg.model} is a video encoder; cuts are for ViT image models")
    if cfg.token_pool != 1:
        raise OptionError("token_pool", f"not for video encoders ({cfg.model})")


def _build(name: str, cfg: EncoderConfig):
    """The torchvision model with its weights (hub, random or a file); (model, weights provenance)."""
    import torchvision.models as tvm

    args = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.model_args.items() if k not in PREPROCESS_ARGS}
    try:
        if cfg.weights == "hub":
            weights = tvm.get_model_weights(name).DEFAULT
            try:
                model = tvm.get_model(name, weights=weights, **args)
            except (OSError, RuntimeError) as exc:
                raise FeatcacheError(
                    f"--weights hub: cannot load {weights.url} ({type(exc).__name__}); put the file in "
                    f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} or use --weights PATH / random") from None
            return model, {"source": "hub", "url": weights.url, "enum": f"{type(weights).__name__}.{weights.name}"}
        if cfg.weights == "random":
            torch.manual_seed(0)
            return tvm.get_model(name, weights=None, **args), {"source": "random", "seed": 0}
        model = tvm.get_model(name, weights=None, **args)
    except TypeError as exc:
        raise OptionError("model_arg", f"tv:{name} does not accept these options: {exc}") from None
    return model, load_weights_file(model, cfg.weights)


def load_weights_file(model, path: str) -> dict:
    if not os.path.isfile(path):
        raise OptionError("weights", f"no such file {path!r}; expected hub, random or a .pth/.safetensors file")
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes of another architecture
        first = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln][:1]
        raise FeatcacheError(f"--weights {path}: the file does not fit {type(model).__name__} "
                             f"({first[0][:160] if first else 'size mismatch'}); is it a checkpoint of this --model?") from None
    bad = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] or result.unexpected_keys
    if bad:
        what = "misses" if result.missing_keys else "has unexpected"
        raise FeatcacheError(f"--weights {path}: the file {what} keys for {type(model).__name__} "
                             f"(e.g. {', '.join(bad[:3])}); is it a checkpoint of this --model?")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"source": "file", "path": os.path.abspath(path), "sha256": digest}

