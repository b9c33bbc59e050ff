"""Hugging Face ``transformers`` video encoders (``--model hf:NAME``): VideoMAE and V-JEPA 2.

``NAME`` is a hub id (``MCG-NJU/videomae-base``, ``facebook/vjepa2-vitl-fpc64-256``; loaded from
the local hub cache when the hub is unreachable) or a local folder holding the model's
``config.json`` (and its video processor's ``video_preprocessor_config.json`` /
``preprocessor_config.json``); the name is kept in the provenance. ``--weights hub`` loads the
model's own weights from there; ``random`` builds the architecture of its config (seed 0); a file
is loaded as a state dict. Needs the ``hf`` extra (``pip install featcache[hf]``).

Preprocessing is the model's own video processor (``AutoVideoProcessor``: shortest-edge resize,
centre crop, ``rescale_factor``, mean/std): the decoding side runs the processor itself with
rescaling and normalisation off (uint8 in, uint8 out; featcache/video/clip_prepare.py), the model's
process rescales and normalises. The clip length is the config's (VideoMAE ``num_frames``,
V-JEPA 2 ``frames_per_clip``); the files give no sampling rate, so ``clips:N`` needs
``--model-arg frame_rate=R`` (VideoMAE's Kinetics recipe samples every 4th frame of 30 fps
video: 7.5).

Tokens per clip: the encoder's last hidden state, ``(T/tubelet) x (H/patch) x (W/patch)``
patch tokens (no class token), after the final norm; the prefix token is their mean, which
``VideoMAEForVideoClassification`` normalises and classifies when ``use_mean_pooling``
(transformers modeling_videomae.py L737-739). V-JEPA 2's own classifier pools with attention
(not cached): its prefix is the same mean.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from featcache.errors import FeatcacheError, OptionError
from featcache.extract.encoder import EncoderConfig

HF_TYPES = {"videomae": "pixel_values", "vjepa2": "pixel_values_videos"}  # model_type -> the forward's input name


def _offline_if_hub_unreachable(timeout: float = 3.0) -> None:
    """A closed network makes the hub client retry for ~47 s per file: fail fast instead (cached
    files still load), as featcache.extract.encoder does for timm."""
    import socket
    from urllib.parse import urlparse

    if not os.environ.get("HF_HUB_OFFLINE"):
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            os.environ["HF_HUB_OFFLINE"] = "1"
    if os.environ.get("HF_HUB_OFFLINE"):  # huggingface_hub read the variable when it was imported (timm imports it)
        try:
            import huggingface_hub.constants as hf_constants

            hf_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass


def _transformers(model: str):
    _offline_if_hub_unreachable()
    try:
        import transformers
    except ImportError:
        raise FeatcacheError(f"--model {model}: needs the transformers package (pip install 'featcache[hf]')") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@dataclass(frozen=True)
class HFModel:
    """What the forward needs besides the model: its input name and its config."""

    family: str  # the config's model_type
    input_name: str
    config: object


def load_hf(cfg: EncoderConfig, reserved: tuple[str, ...], load_file) -> tuple:
    """(HFModel, model, weights provenance, facts) of ``hf:NAME``; ``reserved``: the --model-arg
    keys featcache reads itself (the rest set config fields); ``load_file(model, path)`` loads a
    weights file (featcache.extract.video_encoders.load_weights_file)."""
    tf = _transformers(cfg.model)
    source = cfg.model[3:]
    try:
        config = tf.AutoConfig.from_pretrained(source)
        processor = tf.AutoVideoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise FeatcacheError(f"--model {cfg.model}: cannot read its config and video processor "
                             f"({type(exc).__name__}); give a local folder with them, or a hub id cached here") from None
    if config.model_type not in HF_TYPES:
        raise FeatcacheError(f"--model {cfg.model}: a {config.model_type} model; hf: takes " + ", ".join(HF_TYPES))
    for key, value in cfg.model_args.items():
        if key not in reserved:
            setattr(config, key, value)
    model, info = _build(tf, config, source, cfg, load_file)
    return HFModel(config.model_type, HF_TYPES[config.model_type], config), model, info, \
        _facts(config, processor, source, cfg.model_args)


def hf_tokens(hf: HFModel, model, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, 3, T, H, W) normalised -> (B, 1 + T'H'W', C): the patch tokens' mean, then the tokens."""
    extra = {"skip_predictor": True} if hf.family == "vjepa2" else {}
    out = model(**{hf.input_name: x.transpose(1, 2)}, **extra)  # the model takes (B, T, 3, H, W)
    tokens = out.last_hidden_state  # (B, T'H'W', C)
    c = hf.config
    patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
    grid = (x.shape[2] // c.tubelet_size, x.shape[3] // patch, x.shape[4] // patch)
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1), grid


def _facts(config, processor, source: str, model_args: dict) -> dict:
    """Preprocessing and sampling of a transformers video model (VideoEncoder's ``facts``)."""
    size, crop = processor.size, processor.crop_size
    if not size.shortest_edge or not (crop and crop.height):
        raise FeatcacheError(f"--model hf:{source}: its video processor does not resize a shortest edge and "
                             "centre-crop; not supported")
    frames = getattr(config, "num_frames", None) or getattr(config, "frames_per_clip", None)
    resample = getattr(processor.resample, "name", str(processor.resample)).lower()
    facts = {"weights": f"{type(config).__name__} from {source}", "url": None,
             "crop_size": [int(crop.height), int(crop.width)], "resize_size": [int(size.shortest_edge)],
             "mean": [float(v) for v in processor.image_mean], "std": [float(v) for v in processor.image_std],
             "interpolation": {"2": "bilinear", "3": "bicubic"}.get(resample, resample),
             "clip_len": int(model_args.get("clip_len", frames)), "frame_rate": model_args.get("frame_rate"),
             "min_temporal_size": None, "resizer": "hf", "source": source, "antialias": True,  # image_processing_backends.py L239
             "prefix": "the mean of the patch tokens (VideoMAE's use_mean_pooling input)",
             "preset": f"transformers {type(processor).__name__} (rescale {processor.rescale_factor:g})",
             "resize_backend": "the model's video processor on uint8 frames decoded at source size"}
    if abs(processor.rescale_factor - 1 / 255) > 1e-12:
        raise FeatcacheError(f"--model hf:{source}: rescale_factor {processor.rescale_factor} is not 1/255")
    return facts


def _build(tf, config, source: str, cfg: EncoderConfig, load_file):
    """The model with its weights: (model, weights provenance)."""
    if cfg.weights == "random":
        torch.manual_seed(0)
        return tf.AutoModel.from_config(config), {"source": "random", "seed": 0, "config": source}
    if cfg.weights == "hub":
        try:
            model = tf.AutoModel.from_pretrained(source, config=config)
        except OSError as exc:
            raise FeatcacheError(f"--weights hub: cannot load the weights of {source} ({type(exc).__name__}); "
                                 "use a local folder, --weights PATH or --weights random") from None
        return model, {"source": "hub", "hf_hub_id": source}
    if not os.path.isfile(cfg.weights):
        raise OptionError("weights", f"no such file {cfg.weights!r}; expected hub, random or a .pth/.safetensors file")
    model = tf.AutoModel.from_config(config)
    return model, load_file(model, cfg.weights)

