"""Feature -> component map from one-hot inputs (docs/method.md) and the dedicated fraction (9)."""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot_inputs(n_features: int, n_instances: int, device: torch.device | str) -> Tensor:
    """`(features, instances, features)`: sample f is `x_f = 1` in every instance."""
    eye = torch.eye(n_features, device=device)
    return eye.unsqueeze(1).expand(n_features, n_instances, n_features).contiguous()


def feature_component_map(onehot_attr: Tensor) -> Tensor:
    """Per-sample top-1 component of each one-hot input: `(instances, features, C)` -> `(I, f)`."""
    return onehot_attr.argmax(dim=-1)


def component_use_counts(feature_map: Tensor, C: int) -> Tensor:
    """How many features map to each component: `(I, f)` -> `(I, C)` (long)."""
    counts = torch.zeros(feature_map.shape[0], C, dtype=torch.long, device=feature_map.device)
    return counts.scatter_add_(1, feature_map, torch.ones_like(feature_map))


def dedicated_features(feature_map: Tensor, C: int) -> Tensor:
    """`(I, f)` bool: feature f's top-1 component is not the top-1 of any other feature."""
    return component_use_counts(feature_map, C).gather(1, feature_map) == 1


def dedicated_not_mono(feature_map: Tensor, dedicated: Tensor, represents: Tensor) -> Tensor:
    """`(I,)` dedicated features whose component is not mono for that very feature.

    `represents (I, C, f)`: component c represents feature f (neuron contributions above the
    cutoff). A dedicated component passes when it represents its feature and no other.
    """
    own = represents.gather(1, feature_map.unsqueeze(1)).squeeze(1)  # (I, f): c(f) represents f
    n_repr = represents.sum(-1).gather(1, feature_map)  # (I, f): features c(f) represents
    mono = own & (n_repr == 1)
    return (dedicated & ~mono).sum(-1)
