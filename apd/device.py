"""Device selection: every run takes a device, and `auto` picks CUDA when present."""

from __future__ import annotations

import torch

from apd.errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` = cuda if available, else cpu; anything else is passed to torch (`cpu`, `cuda:1`, ...)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: not a torch device (got {name!r})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} requested but CUDA is not available")
    return device
