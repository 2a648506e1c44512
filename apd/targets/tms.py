"""Toy Model of Superposition: `x_hat = ReLU(W^T [H] W x + b)` with tied W (Elhage et al. 2022)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apd.targets.base import Layer, LayerFn, Target


class TMS(Target):
    """TMS with `n_instances` independent models; optional frozen hidden layers (identity or random)."""

    def __init__(
        self,
        n_features: int,
        n_hidden: int,
        n_instances: int = 1,
        n_hidden_layers: int = 0,
        hidden_init: str = "identity",
    ) -> None:
        super().__init__()
        self.n_features, self.n_hidden = n_features, n_hidden
        self.n_instances, self.n_inputs, self.n_outputs = n_instances, n_features, n_features
        self.W = nn.Parameter(torch.empty(n_instances, n_features, n_hidden))
        nn.init.xavier_normal_(self.W)
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))
        hidden = []
        for _ in range(n_hidden_layers):
            if hidden_init == "identity":
                h = torch.eye(n_hidden).expand(n_instances, n_hidden, n_hidden).clone()
            elif hidden_init == "random":
                h = torch.randn(n_instances, n_hidden, n_hidden)
            else:
                raise ValueError(f"hidden_init must be identity or random (got {hidden_init!r})")
            hidden.append(nn.Parameter(h, requires_grad=False))
        self.hidden = nn.ParameterList(hidden)
        self.layers = (
            Layer("linear1", "linear1"),
            *(Layer(f"hidden_{i}", f"hidden_{i}") for i in range(n_hidden_layers)),
            Layer("linear2", "linear1", transposed=True),
        )
        self.act_recon_layers = tuple(layer.name for layer in self.layers)

    def weights(self) -> dict[str, Tensor]:
        return {"linear1": self.W, **{f"hidden_{i}": h for i, h in enumerate(self.hidden)}}

    def default_m(self) -> int:
        return min(self.n_features, self.n_hidden) + 1

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        h = self.apply_layer("linear1", x, layer_fns)
        for i in range(len(self.hidden)):
            h = self.apply_layer(f"hidden_{i}", h, layer_fns)
        return F.relu(self.apply_layer("linear2", h, layer_fns) + self.b_final)
