"""Residual-MLP neuron contributions ("virtual weights", docs/method.md) and mono/duo/poly/dead.

For feature f and neuron n of a layer: `contrib[f, n] = (W_E W_in)[f, n] * (W_out W_E^T)[n, f]`,
how strongly feature f is read into neuron n times how strongly n writes back onto f. Neurons of
all layers are concatenated (layer 0 first); inter-layer interactions are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def neuron_contributions(w_e: Tensor, w_in: Sequence[Tensor], w_out: Sequence[Tensor]) -> Tensor:
    """Contributions `(I, C, features, neurons)` of weights with a component axis.

    `w_e (I, f, d_embed)`, per layer `w_in (I, C, d_embed, d_mlp)` and `w_out (I, C, d_mlp, d_embed)`.
    For the target itself pass its weights with a component axis of size 1.
    """
    per_layer = []
    for wi, wo in zip(w_in, w_out, strict=True):
        read = torch.einsum("i f d, i c d n -> i c f n", w_e, wi)
        write = torch.einsum("i c n d, i f d -> i c f n", wo, w_e)
        per_layer.append(read * write)
    return torch.cat(per_layer, dim=-1)


def represented_features(contrib: Tensor, cutoff: float) -> Tensor:
    """`(I, C, f)` bool: component c represents f if some neuron's contribution exceeds `cutoff`."""
    return contrib.amax(dim=-1) > cutoff


@dataclass(frozen=True)
class Polysemanticity:
    """Component categories per instance, each `(instances,)` long."""

    n_dead: Tensor
    n_mono: Tensor
    n_duo: Tensor
    n_poly: Tensor
    n_represented: Tensor
    """Features represented by at least one component."""


def polysemanticity(represents: Tensor) -> Polysemanticity:
    """Count components representing 0, 1, 2 and >2 features, from `represents (I, C, f)`."""
    per_comp = represents.sum(-1)  # (I, C)
    return Polysemanticity(
        n_dead=(per_comp == 0).sum(-1),
        n_mono=(per_comp == 1).sum(-1),
        n_duo=(per_comp == 2).sum(-1),
        n_poly=(per_comp > 2).sum(-1),
        n_represented=represents.any(dim=1).sum(-1),
    )


def best_component_per_feature(contrib: Tensor) -> Tensor:
    """`c*(f) = argmax_c max_n contrib_c[f, n]` (the paper's figure 5): `(I, C, f, N)` -> `(I, f)`."""
    return contrib.amax(dim=-1).argmax(dim=1)
