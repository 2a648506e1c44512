"""Faithfulness: the components must sum to the target's weights (docs/method.md §1.3)."""

from __future__ import annotations

from torch import Tensor

from apd.methods.apd.components import Components
from apd.targets.base import Layer


def faithfulness_loss(
    target_weights: dict[str, Tensor], components: Components, layers: tuple[Layer, ...], *, norm: str = "mean"
) -> Tensor:
    """`sum_l ||W_l - sum_c P_{c,l}||^2 / n_params` per instance `(instances,)`.

    Summed over layers, so a tied layer counts twice, and so does its share of n_params (as in the
    reference code). `norm="sum"` skips the division (the paper appendix's unnormalised form).
    """
    residuals = {p: target_weights[p] - components.total_weight(p) for p in target_weights}
    sq = sum(residuals[layer.param].pow(2).sum(dim=(-2, -1)) for layer in layers)
    n_params = sum(target_weights[layer.param][0].numel() for layer in layers)
    return sq / n_params if norm == "mean" else sq  # type: ignore[return-value]
