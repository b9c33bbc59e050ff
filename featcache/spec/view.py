"""What a head sees of each cached video: one frozen type, parsed once where the config is built.

A ``View`` is a frame policy served from the cached pool, the cached layers to use, which tokens
(prefix/CLS, patches, both), an optional spatial pooling of the patch grid and an optional
average pooling of the channels (AdViSe's channel compression). It knows its own
``Layout`` (frames, tokens, channels, prefix tokens, grid) against a cache's shape (``CacheShape``:
plain values the cache layer reads from its root attributes; this layer does not know their JSON)
and whether a cache can serve it at all. Train, eval, ablate and the dataset all use this one type;
configs and checkpoints keep it as the flat keys ``view, layers, tokens, spatial, channels``.

Pure: imports only the frame-policy vocabulary and the error type.
"""
from __future__ import annotations

from dataclasses import dataclass

from featcache.errors import FeatcacheError
from featcache.spec.policy import FramePolicy, UniformPolicy, parse_policy, scores_needed  # noqa: F401  (parse_policy re-exported)

TOKEN_MODES = ("all", "cls", "patch")
VIEW_KEYS = ("view", "layers", "tokens", "spatial", "channels", "source")  # the config keys that make up a View
SOURCES = ("tokens", "cut")


@dataclass(frozen=True)
class CacheShape:
    """What a view is checked and laid out against: plain values of a cache (built by the cache
    layer, ``featcache.cache.facts.StoreAttrs.shape``; anything with these attributes serves)."""

    policies: tuple[str, ...]  # the cached frame policies (the pool is their union)
    layers: tuple[int, ...]  # the cached blocks
    grid: tuple[int, int]  # the stored patch grid (H', W')
    num_prefix_tokens: int
    dim: int  # channels of one cached layer
    clip_rows: bool = False  # rows are clips of a video encoder, not frames
    crops: bool = False  # side crops cached (extract --crops 3)
    cut: bool = False  # the residual stream entering a cut block cached (extract --cut-block)


@dataclass(frozen=True)
class Layout:
    """Shape of one video's view: ``(frames, num_tokens, dim)`` with its token structure."""

    frames: int
    num_tokens: int
    dim: int
    num_prefix_tokens: int
    grid: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.frames, self.num_tokens, self.dim


@dataclass(frozen=True)
class View:
    """Frames, layers, tokens and spatial pooling of what a head sees. Hashable: equal views
    read equal data, so it is the key under which a sweep shares one read."""

    frames: FramePolicy = UniformPolicy(8)  # a policy string is parsed on construction
    layers: tuple[int, ...] = (-1,)  # positions in the cached layers; several are concatenated on channels
    tokens: str = "all"  # all = prefix + patches, cls = prefix tokens only, patch = patches only
    spatial: int = 0  # average-pool the patch grid to spatial x spatial (0 = keep)
    # average-pool the channels to this many (0 = keep): AdViSe's channel compression, as its released
    # AdaptiveAvgPool1d(ch) over the channel axis (models/temporal_modeling.py, TemporalModel.__init__
    # TM.CHANNEL_POOL_DIM, applied in spatial_forward before the spatial pooling)
    channels: int = 0
    # (v, V): of the policy's frames, every V-th from the v-th (multi-view testing: the v-th of V
    # interleaved uniform:N views of a uniform:N*V pool). Not a config key.
    subset: tuple[int, int] | None = None
    # tokens: the cached layers' tokens; cut: the residual stream entering the cut block
    # (extract --cut-block), which in-backbone adapter heads run the frozen tail on
    source: str = "tokens"
    # which of 3 cached spatial crops (extract --crops 3): 0 first, 1 centre (= the tokens), 2 last.
    # Not a config key: set by multi-view testing.
    crop: int = 1

    def __post_init__(self):
        if isinstance(self.frames, str):
            object.__setattr__(self, "frames", parse_policy(self.frames))
        layers = self.layers if isinstance(self.layers, (list, tuple)) else (self.layers,)
        if not layers or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers):
            raise ValueError(f"layers: expected integers such as [-1] or [-4, -1], got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(layers))
        if self.tokens not in TOKEN_MODES:
            raise ValueError(f"tokens: {self.tokens!r} is not one of {', '.join(TOKEN_MODES)}")
        if isinstance(self.spatial, bool) or not isinstance(self.spatial, int) or self.spatial < 0:
            raise ValueError(f"spatial: expected a grid side >= 0 (0 = keep), got {self.spatial!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels < 0:
            raise ValueError(f"channels: expected a channel count >= 0 (0 = keep), got {self.channels!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source == "cut" and (self.layers != (-1,) or self.tokens != "all" or self.spatial or self.channels):
            raise ValueError("source: cut is the whole residual stream the frozen tail continues from; "
                             "layers, tokens, spatial and channels cannot be changed for it")

    def __str__(self) -> str:
        parts = [str(self.frames)]
        if self.layers != (-1,):
            parts.append(f"layers={','.join(map(str, self.layers))}")
        if self.tokens != "all":
            parts.append(f"tokens={self.tokens}")
        if self.spatial:
            parts.append(f"spatial={self.spatial}")
        if self.channels:
            parts.append(f"channels={self.channels}")
        if self.subset:
            parts.append(f"view {self.subset[0] + 1} of {self.subset[1]}")
        if self.source != "tokens":
            parts.append(f"source={self.source}")
        if self.crop != 1:
            parts.append(f"crop {self.crop}")
        return " ".join(parts)

    def as_dict(self) -> dict:
        """The flat config keys of this view (what config.yaml and checkpoints hold)."""
        return {"view": str(self.frames), "layers": list(self.layers), "tokens": self.tokens,
                "spatial": self.spatial, "channels": self.channels, "source": self.source}

    # ------------------------------------------------------------------ against a cache
    def check(self, cache: CacheShape, dense: bool = False) -> None:
        """Raise FeatcacheError when a cache of this shape cannot serve the view
        (before any data is read; frames missing from a video's pool are found per video).
        A ``stride:S`` view has as many frames as each video: only ``dense`` readers (featcache
        pretrain) take one."""
        cached = list(cache.policies)
        clip_rows = cache.clip_rows
        if clip_rows != (self.frames.unit == "clip"):
            raise FeatcacheError(
                f"view {self.frames}: the cache holds clips of a video encoder ({', '.join(cached)}); train on "
                "clips:K (K of its clips per video)" if clip_rows else
                f"view {self.frames}: clip views are for caches of video encoders (--model tv:NAME); "
                f"this cache holds frames ({', '.join(cached)})")
        if clip_rows and self.spatial:
            raise FeatcacheError("spatial: clip tokens are a flattened T'xH'xW' sequence; spatial pooling is for "
                                 "frame caches (use spatial: 0)")
        if self.crop != 1 and not cache.crops:
            raise FeatcacheError("spatial views: the cache holds the centre crop only; re-extract with --crops 3")
        if self.source == "cut" and not cache.cut:
            raise FeatcacheError("source: cut asked for (an in-backbone adapter head), but the cache holds no cut; "
                                 "re-extract with --cut-block J (e.g. 0 for adapters in every block)")
        if not self.frames.fixed and not dense:
            raise FeatcacheError(f"view {self.frames}: a dense pool has a different number of frames per video; "
                                 "train on uniform:N or keyframes:N (served from it), or pre-train on it "
                                 "with featcache pretrain")
        if self.frames.served_from == "itself" and str(self.frames) not in cached:
            raise FeatcacheError(f"view {self.frames}: the cache holds {', '.join(cached)}, not this dense pool; "
                                 f"re-extract with --frames {','.join(cached)},{self.frames}")
        if self.frames.needs_scores and not scores_needed(parse_policy(p) for p in cached):
            raise FeatcacheError(f"view {self.frames}: the cache has no key frames (it holds {', '.join(cached)}); "
                                 f"re-extract with --frames {','.join(cached)},{self.frames}")
        num_layers = len(cache.layers)
        for layer in self.layers:
            if not -num_layers <= layer < num_layers:
                raise FeatcacheError(f"layers: {layer} is out of range; the cache holds {num_layers} layer(s) "
                                     f"(blocks {list(cache.layers)})")
        grid = cache.grid
        if self.spatial > min(grid):
            raise FeatcacheError(f"spatial: {self.spatial} must be between 0 and the cached grid {grid[0]}x{grid[1]}")
        if self.tokens == "cls" and not cache.num_prefix_tokens:
            raise FeatcacheError("tokens: cls asked for, but the cached model has no prefix (CLS) tokens")
        dim = cache.dim * len(self.layers)
        if self.channels > dim:
            raise FeatcacheError(f"channels: {self.channels} must be between 0 and the view's {dim} channels")

    def layout(self, cache: CacheShape) -> Layout:
        """The view's shape per video for a cache of this shape."""
        prefix = cache.num_prefix_tokens
        grid = tuple(cache.grid)
        if self.spatial:
            grid = (self.spatial, self.spatial)
        if self.tokens == "cls":
            grid = (0, 0)
        if self.tokens == "patch":
            prefix = 0
        dim = self.channels or cache.dim * len(self.layers)
        frames = self.frames.fixed_length or 0  # 0: a dense pool's length follows each video
        frames = frames // self.subset[1] if self.subset else frames
        return Layout(frames, prefix + grid[0] * grid[1], dim, prefix, grid)

    @property
    def reads_plain(self) -> bool:
        """True when the view is one cached layer as stored: frames copy straight from disk."""
        return (len(self.layers) == 1 and self.tokens == "all" and not self.spatial and not self.channels
                and self.source == "tokens" and self.crop == 1)
