"""featcache: decode videos once, run a frozen image foundation model once, train many heads.

Stage 1 (`featcache extract`) writes patch tokens with full provenance to a Zarr store;
stage 2 reads them. The library face, as timm's ``create_model`` / ``list_models``::

    import featcache
    cache = featcache.open_cache("caches/motion.zarr")          # a featcache.Cache
    len(cache), "v001" in cache, list(cache)[:3]                # extracted videos
    train = cache.dataset(frames="uniform:8", split="train")    # a featcache.CacheDataset
    head = featcache.create_head("pool", **train.head_args())   # featcache.list_heads() names them all

The names below are imported on first use, so ``import featcache`` stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from featcache.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from featcache.cache.store import Cache

_LAZY = {
    "Cache": "featcache.cache.store",
    "VideoEntry": "featcache.cache.store",
    "CacheWriter": "featcache.cache.writer",
    "CacheDataset": "featcache.cache.torch_dataset",
    "View": "featcache.spec.view",
    "create_head": "featcache.heads.registry",
    "list_heads": "featcache.heads.registry",
    "register_head": "featcache.heads.registry",
    "FeatcacheError": "featcache.errors",
}


def open_cache(path: str) -> Cache:
    """Open a featcache store read-only: a :class:`featcache.Cache`."""
    from featcache.cache.store import open_cache as _open

    return _open(path)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", "open_cache", *_LAZY]
