"""Scrubbed / anti-scrubbed ablation losses (docs/method.md).

Every component is kept independently with probability 1/2; the components mapped to the sample's
active features are then forced ON (scrubbed) or OFF (anti-scrubbed). A good decomposition loses
little when scrubbed and a lot when anti-scrubbed. Losses are per-sample MSEs vs the target output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from apd.methods.base import Decomposition
    from apd.targets.base import Target


def forced_components(x: Tensor, feature_map: Tensor, C: int) -> Tensor:
    """`(batch, I, C)` bool: components mapped to the active features of each sample.

    `x (batch, I, f)`, `feature_map (I, f)` = the component of each feature.
    """
    active = (x != 0).to(x.dtype)
    owner = torch.nn.functional.one_hot(feature_map, C).to(x.dtype)  # (I, f, C)
    return torch.einsum("b i f, i f c -> b i c", active, owner) > 0


def scrub_masks(keep: Tensor, forced: Tensor) -> tuple[Tensor, Tensor]:
    """(scrubbed, anti-scrubbed) masks `(batch, I, C)` from random `keep` and `forced` (bool)."""
    return keep | forced, keep & ~forced


def per_sample_mse(out: Tensor, ref: Tensor) -> Tensor:
    """Mean squared error over outputs: `(batch, I, d)` pairs -> `(batch, I)`."""
    return (out - ref).pow(2).mean(dim=-1)


def masked_output(target: Target, components: Decomposition, x: Tensor, mask: Tensor) -> Tensor:
    """Output of the APD model using only the components kept by `mask (batch, I, C)`."""
    return target(x, components.layer_fns(target.layers, mask.to(x.dtype)))


def monosemantic_baseline(x: Tensor, labels: Tensor, n_neurons: int) -> Tensor:
    """One neuron per function for the first `n_neurons` features, the identity for the rest.

    `x, labels (batch, I, f)` -> `(batch, I, f)` (the paper's naive baseline, docs/method.md).
    """
    return torch.cat([labels[..., :n_neurons], x[..., n_neurons:]], dim=-1)
