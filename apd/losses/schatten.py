"""Simplicity: a Schatten-p penalty on the components that are active (method notes 1.7)."""

from __future__ import annotations

import torch
from torch import Tensor

from apd.components import Components
from apd.targets.base import Layer


def schatten_loss(
    components: Components, layers: tuple[Layer, ...], mask: Tensor, *, p: float, n_params: int
) -> Tensor:
    """`(1/(n_params batch)) sum_b sum_l sum_c s_bc sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + 1e-16)^(p/2)`.

    Singular values are approximated by `|A column| |B row|` per rank index m. `mask (batch, I, C)`
    may be boolean (top-k) or real (Lp). Returns `(instances,)`.
    """
    per_layer = []
    for layer in layers:
        a, b = components.factors(layer)
        norms = a.pow(2).sum(-2) * b.pow(2).sum(-1)  # (I, C, m)
        per_layer.append((norms + 1e-16).pow(p / 2).sum(-1))  # (I, C)
    per_component = torch.stack(per_layer).sum(0)
    weighted = mask.to(per_component.dtype) * per_component
    return weighted.sum(dim=(0, 2)) / (n_params * mask.shape[0])
