"""Head checkpoints: weights plus everything needed to rebuild and trust them.

A checkpoint records the head name and constructor arguments, the resolved training config,
the class list and task, and the fingerprint and path of the cache it was trained on, so that
``featcache eval`` can refuse a cache from another model or preprocessing.
"""
from __future__ import annotations

import os

import torch

from featcache.errors import FeatcacheError
from featcache.registry import create_head


def save(path: str, **payload) -> None:
    """Atomic: write beside, then rename (a kill never leaves a half-written checkpoint)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise FeatcacheError(f"no checkpoint at {path}; is this a featcache train run directory?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatcacheError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"[:300]) from None


def build_head(ckpt: dict) -> torch.nn.Module:
    """The head of a checkpoint with its weights loaded, in eval mode."""
    head = create_head(ckpt["head"], **ckpt["head_args"])
    head.load_state_dict(ckpt["state_dict"])
    return head.eval()
