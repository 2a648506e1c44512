"""Simplicity: a Schatten-p penalty on the components that are active (docs/method.md §1.7)."""

from __future__ import annotations

import torch
from torch import Tensor

from apd.methods.apd.components import Components
from apd.targets.base import Layer


def schatten_loss(
    components: Components,
    layers: tuple[Layer, ...],
    mask: Tensor,
    *,
    p: float | Tensor,
    n_params: int,
    form: str = "paper",
) -> Tensor:
    """`(1/(n_params batch)) sum_b sum_l sum_c s_bc sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + 1e-16)^(p/2)`.

    Singular values are approximated by `|A column| |B row|` per rank index m. `mask (batch, I, C)`
    may be boolean (top-k) or real (Lp). `form="code"` puts the mask inside the power,
    `(s_bc |A|^2 |B|^2 + 1e-16)^(p/2)`, as the reference code does: the same for a boolean mask up to
    a constant, different for Lp weights (docs/method.md). Returns `(instances,)`. `p`: one value, or
    one per instance `(instances,)` (a pack's members' own).
    """
    half_p = p / 2 if isinstance(p, float | int) else (p / 2).view(-1, 1, 1)  # against (I, C, m)
    per_layer = []
    for layer in layers:
        a, b = components.factors(layer)
        per_layer.append(a.pow(2).sum(-2) * b.pow(2).sum(-1))  # (I, C, m)
    if form == "code":
        w = mask.to(per_layer[0].dtype).unsqueeze(-1)  # (batch, I, C, 1)
        total = sum((w * norms + 1e-16).pow(half_p).sum(dim=(0, 2, 3)) for norms in per_layer)
        return total / (n_params * mask.shape[0])  # type: ignore[operator,return-value]
    per_component = torch.stack([(norms + 1e-16).pow(half_p).sum(-1) for norms in per_layer]).sum(0)  # (I, C)
    weighted = mask.to(per_component.dtype) * per_component
    return weighted.sum(dim=(0, 2)) / (n_params * mask.shape[0])
