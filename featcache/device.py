"""Device selection shared by extraction and training."""
from __future__ import annotations

import torch

from featcache.errors import FeatcacheError, OptionError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("device", f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device
