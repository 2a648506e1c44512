"""User-supplied target: a stack of linear layers with ReLU between them, read from a file.

File format: a `.pt` file holding a dict (`torch.save`; values are tensors or Python numbers and
lists, read with `weights_only=True`), or an `.npz` file (`numpy.savez`). Entry names:

* `W0, W1, ..., W{L-1}` (required): layer weights in the toolkit's `y = x @ W` convention, shape
  `(d_in, d_out)`, or `(instances, d_in, d_out)` for several models. `W{l}`'s `d_out` must equal
  `W{l+1}`'s `d_in`. (A `torch.nn.Linear` weight is `(d_out, d_in)`: store `linear.weight.T`.)
* `b0, ..., b{L-1}` (optional, any subset): biases `(d_out,)` or `(instances, d_out)`. They are
  kept frozen and are not decomposed.
* `feature_probability` (optional scalar, default 0.05) and `value_range` (optional pair, default
  `(0, 1)`): the sparse-feature input distribution (method notes 2.1) used while decomposing.

The network is `h_0 = x`, `h_{l+1} = ReLU(h_l @ W_l + b_l)`, with no ReLU after the last layer.
Every `W_l` is decomposed as layer `layer_{l}`. Example, used as `target: {path: net.pt}`:

    torch.save({"W0": w0, "b0": b0, "W1": w1, "feature_probability": 0.02}, "net.pt")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apd.errors import ConfigError
from apd.targets.base import Layer, LayerFn, Target

DEFAULT_FEATURE_PROBABILITY = 0.05
DEFAULT_VALUE_RANGE = (0.0, 1.0)


class LinearStack(Target):
    """Linear layers with ReLU between them; weights `(instances, d_in, d_out)`, frozen biases."""

    act_recon_relu = False
    """Layer outputs exclude the bias, so the loss compares pre-activations, not ReLU(.)."""

    def __init__(self, weights: list[Tensor], biases: list[Tensor | None]) -> None:
        super().__init__()
        self.W = nn.ParameterList([nn.Parameter(w.detach().clone().float()) for w in weights])
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            bias = torch.zeros(w.shape[0], w.shape[-1]) if b is None else b.detach().clone().float()
            self.register_buffer(f"b{i}", bias)
        self.n_instances, self.n_inputs, self.n_outputs = weights[0].shape[0], weights[0].shape[1], weights[-1].shape[2]
        self.layers = tuple(Layer(f"layer_{i}", f"layer_{i}") for i in range(len(weights)))
        self.act_recon_layers = tuple(layer.name for layer in self.layers[:-1])

    def weights(self) -> dict[str, Tensor]:
        return {f"layer_{i}": w for i, w in enumerate(self.W)}

    def default_m(self) -> int:
        return max(min(w.shape[-2], w.shape[-1]) for w in self.W)

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        for i in range(len(self.W)):
            x = self.apply_layer(f"layer_{i}", x, layer_fns) + getattr(self, f"b{i}")
            if i < len(self.W) - 1:
                x = F.relu(x)
        return x


def read_arrays(path: Path) -> dict[str, Any]:
    """The raw entries of a `.pt` (dict) or `.npz` file; ConfigError naming the file otherwise."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(data[k].copy()) for k in data.files}
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/numpy raise many types for truncated or foreign files
        raise ConfigError(f"{path}: not a readable target file ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a dict of arrays (got {type(data).__name__})")
    return data


def linear_stack_from_arrays(data: Mapping[str, Any], path: Path) -> tuple[LinearStack, float, tuple[float, float]]:
    """Build the model and read its data defaults (feature_probability, value_range)."""
    unknown = [k for k in data if not re.fullmatch(r"[Wb]\d+|feature_probability|value_range", k)]
    if unknown:
        raise ConfigError(
            f"{path}: unknown entry {unknown[0]!r} (expected W0.., b0.., feature_probability, value_range)"
        )
    n = sum(1 for k in data if k.startswith("W"))
    if n == 0 or any(f"W{i}" not in data for i in range(n)):
        raise ConfigError(f"{path}: expected weights W0..W{{L-1}} (got {sorted(data)})")
    if any(k.startswith("b") and int(k[1:]) >= n for k in data):
        raise ConfigError(f"{path}: a bias b{{l}} has no weight W{{l}}")
    weights = [_tensor(data[f"W{i}"], f"W{i}", path) for i in range(n)]
    weights = [w.unsqueeze(0) if w.dim() == 2 else w for w in weights]
    for i, w in enumerate(weights):
        if w.dim() != 3 or w.shape[0] != weights[0].shape[0]:
            raise ConfigError(
                f"{path}: W{i}: expected (d_in, d_out) or (instances, d_in, d_out) (got {tuple(w.shape)})"
            )
        if i and w.shape[1] != weights[i - 1].shape[2]:
            raise ConfigError(f"{path}: W{i}: d_in {w.shape[1]} != d_out {weights[i - 1].shape[2]} of W{i - 1}")
    biases: list[Tensor | None] = []
    for i, w in enumerate(weights):
        b = _tensor(data[f"b{i}"], f"b{i}", path) if f"b{i}" in data else None
        if b is not None:
            b = b.expand(w.shape[0], w.shape[2]) if b.shape in ((w.shape[2],), (1, w.shape[2])) else b
            if b.shape != (w.shape[0], w.shape[2]):
                raise ConfigError(f"{path}: b{i}: expected ({w.shape[2]},) (got {tuple(b.shape)})")
        biases.append(b)
    p = float(data.get("feature_probability", DEFAULT_FEATURE_PROBABILITY))
    vr = [float(v) for v in torch.as_tensor(data.get("value_range", DEFAULT_VALUE_RANGE)).flatten()]
    if not 0.0 <= p <= 1.0 or len(vr) != 2 or vr[0] > vr[1]:
        raise ConfigError(f"{path}: feature_probability must be in [0, 1] and value_range a pair lo <= hi")
    return LinearStack(weights, biases), p, (vr[0], vr[1])


def _tensor(value: Any, key: str, path: Path) -> Tensor:
    t = torch.as_tensor(value)
    if t.is_complex() or t.dtype == torch.bool or not torch.isfinite(t.float()).all():
        raise ConfigError(f"{path}: {key}: expected finite real numbers (got {t.dtype})")
    return t.float()
