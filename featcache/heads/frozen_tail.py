"""The frozen tail of a cached ViT, rebuilt from a cache's provenance.

A cache extracted with ``--cut-block J`` holds, per frame, the residual stream entering block J
(``cut``). Running ``blocks[J:]`` and the final norm on it gives the model's final tokens: in fp32
it equals ``forward_features`` exactly (timm ``VisionTransformer.forward_features``: blocks then
``norm``). Adapters placed in those blocks (heads/adapter.py) are then trained from the cache
while decoding, resizing, patch embedding and the first J blocks never run again.

The tail is rebuilt from what the store records: the timm model name and create args, and the
weights: hub weights by name, a weights file checked against the recorded sha256 (another file is
refused naming both hashes), or random weights from the recorded seed.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from featcache.cache.facts import Facts, StoreAttrs, WeightsFacts, store_attrs, thaw
from featcache.errors import FeatcacheError


@dataclass(frozen=True, kw_only=True)
class BackboneSpec(Facts):
    """What a head needs to rebuild the frozen tail: saved with its checkpoint as JSON (keys in
    this order), read back with ``from_json``."""

    _sections: ClassVar = {"weights": WeightsFacts}
    model: str | None = None  # the timm name recorded by the store
    args: Mapping | None = None  # its create_model kwargs
    weights: WeightsFacts | None = None  # the store's model.weights
    img_size: int | None = None
    cut: int | None = None  # the first block of the tail
    depth: int | None = None  # blocks of the model


def backbone_spec(store: StoreAttrs) -> dict:
    """:class:`BackboneSpec` of a cache cut with ``--cut-block``, JSON-ready. ``store``: the
    cache's facts (``cache.facts``; ``cache.attrs`` is read as them)."""
    store = store_attrs(store)
    cut, model = store.cut, store.model
    if not cut:
        raise FeatcacheError("the cache holds no cut of the backbone; re-extract with --cut-block J "
                             "(e.g. --cut-block 0 for adapters in every block)")
    return BackboneSpec(model=model.name, args=model.args, weights=model.weights,
                        img_size=int(store.preprocess.input_size[-1]), cut=int(cut.block),
                        depth=int(cut.depth)).to_json()


class FrozenTail(nn.Module):
    """``blocks[cut:]`` and the final norm of the cached model, frozen (eval mode, no grad)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = BackboneSpec.from_json(spec)
        model = build_model(self.spec)
        self.blocks = nn.ModuleList(model.blocks[self.spec.cut:])
        self.norm = copy.deepcopy(model.norm)
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: dropout, drop-path and norms always as at inference


def build_model(spec: BackboneSpec | dict) -> nn.Module:
    """The timm model of a :class:`BackboneSpec` (or its JSON) with its recorded weights."""
    from featcache.extract.encoder import EncoderConfig, build_model

    spec = spec if isinstance(spec, BackboneSpec) else BackboneSpec.from_json(spec)
    weights, args = spec.weights or WeightsFacts(), dict(thaw(spec.args))
    source = weights.source
    if source == "file":
        path = weights.path
        cfg = EncoderConfig(model=spec.model, weights=path, img_size=spec.img_size, model_args=args)
        try:
            model, info = build_model(cfg)
        except FeatcacheError as exc:
            raise FeatcacheError(f"the frozen tail needs the cache's weights file: {exc}") from None
        found = WeightsFacts.from_json(info).sha256  # the file loaded, described as a store records it
        if found != weights.sha256:
            raise FeatcacheError(f"weights file {path}: sha256 {found} is not the cache's "
                                 f"{weights.sha256}; the frozen tail must be the network that made the cache")
        return model
    if source not in ("hub", "random"):
        raise FeatcacheError(f"the cache's weights ({source}) cannot be rebuilt for a frozen tail")
    cfg = EncoderConfig(model=spec.model, weights="hub" if source == "hub" else "random",
                        img_size=spec.img_size, model_args=args)
    with torch.random.fork_rng():  # random weights reseed torch's global generator
        model, _ = build_model(cfg)
    return model
