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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} requested but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "meta":
        raise ConfigError(f"device: {name} holds no data; use auto, cpu or cuda")
    if device.type not in ("cpu", "cuda"):
        try:  # mps, xpu, ...: only where this torch build and machine have them
            torch.empty(0, device=device)
        except RuntimeError:
            raise ConfigError(f"device: {name} is not supported by this torch build or machine") from None
    return device
