"""Heads by name: ``@register_head("r3d")`` on the class, ``create_head("r3d", ...)`` to build one.

Pure: imports nothing from featcache. Every head takes the same leading arguments,
``(in_dim, num_classes, num_frames, grid, num_prefix_tokens)``, then its own keyword options.
"""
from __future__ import annotations

import inspect

_HEADS: dict[str, type] = {}
COMMON_ARGS = ("in_dim", "num_classes", "num_frames", "grid", "num_prefix_tokens")


def register_head(name: str):
    def wrap(cls):
        if name in _HEADS:
            raise ValueError(f"head {name!r} is registered twice")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return wrap


def _load_builtin() -> None:
    import featcache.heads  # noqa: F401  (each head module registers itself on import)


def list_heads() -> list[str]:
    _load_builtin()
    return sorted(_HEADS)


def head_options(name: str) -> dict:
    """Option name -> default for one head (everything after the common arguments)."""
    cls = _get(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", *COMMON_ARGS)}


def _get(name: str) -> type:
    _load_builtin()
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; available: {', '.join(sorted(_HEADS))}")
    return _HEADS[name]


def create_head(name: str, *, in_dim: int, num_classes: int, num_frames: int, grid: tuple[int, int],
                num_prefix_tokens: int, **options):
    """Build a registered head; unknown options are an error naming the valid ones."""
    cls = _get(name)
    valid = head_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"head {name!r} has no option {', '.join(unknown)}; options: {', '.join(valid) or 'none'}")
    return cls(in_dim=in_dim, num_classes=num_classes, num_frames=num_frames, grid=tuple(grid),
               num_prefix_tokens=num_prefix_tokens, **options)
