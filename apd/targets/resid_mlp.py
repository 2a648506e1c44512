"""Residual MLP for compressed computation: `r += ReLU(r W_in) W_out` per layer, `y = r W_E^T`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apd.targets.base import Layer, LayerFn, Target


class ResidMLP(Target):
    """Residual MLP with a frozen random unit-norm embedding `W_E` and `W_U = W_E^T`; no biases."""

    act_recon_relu = True

    def __init__(
        self,
        n_features: int,
        d_embed: int,
        d_mlp: int,
        n_layers: int = 1,
        n_instances: int = 1,
        embed_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.n_features, self.d_embed, self.d_mlp, self.n_layers = n_features, d_embed, d_mlp, n_layers
        self.n_instances, self.n_inputs, self.n_outputs = n_instances, n_features, n_features
        gen = torch.Generator().manual_seed(embed_seed) if embed_seed is not None else None
        w_e = torch.randn(n_instances, n_features, d_embed, generator=gen)
        self.register_buffer("W_E", w_e / w_e.norm(dim=-1, keepdim=True))
        self.mlp_in = nn.ParameterList()
        self.mlp_out = nn.ParameterList()
        for _ in range(n_layers):
            w_in, w_out = torch.empty(n_instances, d_embed, d_mlp), torch.empty(n_instances, d_mlp, d_embed)
            for i in range(n_instances):  # nn.Linear's default (kaiming-uniform) per instance
                nn.init.kaiming_uniform_(w_in[i].T, a=5**0.5)
                nn.init.kaiming_uniform_(w_out[i].T, a=5**0.5)
            self.mlp_in.append(nn.Parameter(w_in))
            self.mlp_out.append(nn.Parameter(w_out))
        self.layers = tuple(
            layer
            for i in range(n_layers)
            for layer in (Layer(f"mlp_in_{i}", f"mlp_in_{i}"), Layer(f"mlp_out_{i}", f"mlp_out_{i}"))
        )
        self.act_recon_layers = tuple(f"mlp_in_{i}" for i in range(n_layers))

    def weights(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i in range(self.n_layers):
            out[f"mlp_in_{i}"], out[f"mlp_out_{i}"] = self.mlp_in[i], self.mlp_out[i]
        return out

    def default_m(self) -> int:
        return min(self.d_embed, self.d_mlp)

    def embed(self, x: Tensor) -> Tensor:
        return torch.einsum("b i f, i f d -> b i d", x, self.W_E)

    def unembed(self, r: Tensor) -> Tensor:
        return torch.einsum("b i d, i f d -> b i f", r, self.W_E)

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        r = self.embed(x)
        for i in range(self.n_layers):
            hidden = F.relu(self.apply_layer(f"mlp_in_{i}", r, layer_fns))
            r = r + self.apply_layer(f"mlp_out_{i}", hidden, layer_fns)
        return self.unembed(r)
