"""featcache: decode videos once, run a frozen image foundation model once, train many heads.

Stage 1 (`featcache extract`) writes patch tokens with full provenance to a Zarr store;
stage 2 reads them. ``open_cache(path)`` is the Python entry point to a store.
"""

from featcache.version import __version__


def open_cache(path: str):
    """Open a featcache store read-only (see featcache.cache.store.Cache)."""
    from featcache.cache.store import open_cache as _open

    return _open(path)


__all__ = ["__version__", "open_cache"]
