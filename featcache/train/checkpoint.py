"""Head checkpoints: weights plus everything needed to rebuild and trust them.

A checkpoint records the head name, where its class came from (``head_source``: built in, or a
user's file path + sha256, or module + version) and constructor arguments, the resolved training config,
the class list and whether it is multi-label, and the fingerprint and path of the cache it was trained on, so that
``featcache eval`` can refuse a cache from another model or preprocessing.
"""
from __future__ import annotations

import os

import torch

from featcache.errors import FeatcacheError, OptionError
from featcache.heads.registry import create_head
from featcache.train.meta import Checkpoint
from featcache.train.rundir import checkpoint_path


def save(path: str, **payload) -> None:
    """Atomic: write beside, then rename (a kill never leaves a half-written checkpoint)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str) -> dict:
    """The checkpoint as stored (:func:`read` parses it)."""
    if not os.path.isfile(path):
        raise FeatcacheError(f"no checkpoint at {path}; is this a featcache train run directory?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FeatcacheError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})"[:300]) from None


def read(path: str) -> Checkpoint:
    """The checkpoint at ``path``, parsed (:class:`~featcache.train.meta.Checkpoint`)."""
    return Checkpoint.from_json(load(path))


def build_head(ckpt: Checkpoint | dict) -> torch.nn.Module:
    """The head of a checkpoint with its weights loaded, in eval mode (frozen parts, such as an
    adapter head's frozen tail, are rebuilt from their recorded provenance, not loaded)."""
    ckpt = Checkpoint.from_json(ckpt)
    args = dict(ckpt.head_args)
    if ckpt.head == "r3d" and "mlp_bn" not in args and "mlp.0.bias" in ckpt.state_dict:
        args["mlp_bn"] = False  # trained before the released head's batch norm became r3d's default
    source = ckpt.meta.head_source
    try:
        head = create_head(ckpt.head, **args, source=source.to_json() if source else None)
    except (ValueError, TypeError) as exc:
        raise FeatcacheError(f"head {ckpt.head}: {exc}") from None
    load_trainable(head, ckpt.state_dict)
    return head.eval()


def load_trainable(head: torch.nn.Module, state: dict) -> None:
    """Load a checkpoint's state; only the head's ``frozen_prefixes`` may be absent from it."""
    result = head.load_state_dict(state, strict=False)
    frozen = getattr(head, "frozen_prefixes", ())
    missing = [k for k in result.missing_keys if not k.startswith(frozen)] if frozen else result.missing_keys
    if missing or result.unexpected_keys:
        bad = (missing or result.unexpected_keys)[:3]
        raise FeatcacheError(f"checkpoint does not fit head {type(head).__name__} ({', '.join(bad)})")


def init_from(head: torch.nn.Module, head_name: str, view_dict: dict, path: str) -> str:
    """Load the transferable part of a pre-trained head (``featcache pretrain``) into ``head``: the
    parameters under the head class's ``transferable`` prefixes (r3d: the TMM stage; the
    classifier stays new). The token selection of the two views (layers, tokens, spatial,
    channels) must match. Returns the checkpoint file used."""
    if os.path.isdir(path):
        path = checkpoint_path(path, "best")
    ckpt = read(path)
    if ckpt.head != head_name:
        raise FeatcacheError(f"--init {path}: pre-trained head is {ckpt.head!r}, this run trains {head_name!r}")
    keys = ("layers", "tokens", "spatial", "channels")
    config = ckpt.meta.config or {}
    theirs = {k: config.get(k, 0 if k == "channels" else None) for k in keys}
    ours = {k: view_dict[k] for k in keys}
    if theirs != ours:
        show = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
        raise FeatcacheError(f"--init {path}: the pre-training's token selection ({show(theirs)}) differs from this "
                             f"run's ({show(ours)}); they must match")
    prefixes = getattr(type(head), "transferable", ())
    if not prefixes:
        raise OptionError("init", f"head {head_name} has no part to initialise from a pre-training")
    own = head.state_dict()
    state = {k: v for k, v in ckpt.state_dict.items() if k.startswith(prefixes)}
    for name, value in state.items():
        if name not in own or own[name].shape != value.shape:
            shape = tuple(own[name].shape) if name in own else "absent"
            raise FeatcacheError(f"--init {path}: {name} is {tuple(value.shape)} there and {shape} here; "
                                 "give the head the pre-training's options")
    missing = sorted(k for k in own if k.startswith(prefixes) and k not in state)
    if missing:
        raise FeatcacheError(f"--init {path}: the pre-trained head lacks {missing[0]}")
    head.load_state_dict(state, strict=False)
    return path
