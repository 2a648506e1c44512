"""The gated family: a hand-coded residual ReLU MLP computing `sum_i a_i F_i(x)` (docs/method.md).

Inputs `(x, a_0..a_{n-1})`: `x ~ U[lo, hi]`, control bits `a_i` on with a small probability.
`F_i(x) = a cos(bx + c) + d sin(ex + f) + g` with seeded coefficients (a, d, g ~ U(-1, 1);
b, e ~ U(0.1, 1); c, f ~ U(-pi, pi)). Each function gets `neurons_per_function` monosemantic ReLUs
with knots `t_k = linspace(lo, hi, N)`, so the network is the piecewise-linear interpolation of
F_i through the knots; the neurons are spread over the layers by a seeded permutation.

Residual stream `(x, a_0..a_{n-1}, y)`: the input is embedded into the first n+1 dimensions and the
output read off the last. Neuron k of function i has pre-activation
`x - t_k + h + S (a_i - 1)` (h = knot spacing, S = suppression); its output weight (the change of
slope at its knot) writes into y. The input biases are frozen and not decomposed (as in the
reference code); the ground truth is one rank-1 component per function in every decomposed matrix:
function i's true mechanism is its hand-set neurons (their `mlp_in` columns and `mlp_out` rows), so
the verdict matches component weights to those mechanisms (`apd.metrics.mechanisms`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from apd.config import PositiveInt, Probability
from apd.data import sample_sparse_features
from apd.targets.base import Layer, LayerFn, Target
from apd.targets.family import (
    MECHANISM_CHECKS,
    MECHANISM_COLUMNS,
    MECHANISM_KEYS,
    Column,
    EvalContext,
    Family,
    TargetSpec,
    ValueRange,
    mechanism_metrics,
)


def function_coeffs(n_functions: int, generator: torch.Generator) -> Tensor:
    """Coefficients `(n_functions, 7)` ordered (a, b, c, d, e, f, g)."""
    u = torch.rand(n_functions, 7, generator=generator)
    lo = torch.tensor([-1.0, 0.1, -math.pi, -1.0, 0.1, -math.pi, -1.0])
    hi = torch.tensor([1.0, 1.0, math.pi, 1.0, 1.0, math.pi, 1.0])
    return lo + u * (hi - lo)


def gated_functions(x: Tensor, coeffs: Tensor) -> Tensor:
    """`F_i(x)` for every function: `x (...)` -> `(..., n_functions)`."""
    a, b, c, d, e, f, g = (coeffs[:, j] for j in range(7))
    x = x.unsqueeze(-1)
    return a * torch.cos(b * x + c) + d * torch.sin(e * x + f) + g


class GatedMLP(Target):
    """Residual MLP with hand-set weights; `forward` maps `(batch, 1, n_functions + 1)` to `(batch, 1, 1)`."""

    kind = "gated"
    act_recon_relu = False
    """Layer outputs exclude the frozen bias, so the loss compares pre-activations, not ReLU(.)."""
    coeffs: Tensor
    b_in: Tensor
    neuron_function: Tensor

    def __init__(
        self,
        n_functions: int = 4,
        neurons_per_function: int = 10,
        n_layers: int = 2,
        value_range: tuple[float, float] = (0.0, 5.0),
        seed: int = 0,
    ) -> None:
        super().__init__()
        n_neurons = n_functions * neurons_per_function
        if n_neurons % n_layers or neurons_per_function < 2:
            raise ValueError(f"{n_neurons} neurons do not split over {n_layers} layers")
        self.n_functions, self.n_layers, self.value_range = n_functions, n_layers, value_range
        self.d_embed, self.d_mlp = n_functions + 2, n_neurons // n_layers
        self.n_instances, self.n_inputs, self.n_outputs = 1, n_functions + 1, 1
        gen = torch.Generator().manual_seed(seed)
        coeffs = function_coeffs(n_functions, gen)
        self.register_buffer("coeffs", coeffs)

        lo, hi = value_range
        knots = torch.linspace(lo, hi, neurons_per_function)
        h = (hi - lo) / (neurons_per_function - 1)
        self.suppression = (hi - lo) + h + 1.0  # > max(x - t_k + h): an off gate keeps neurons off
        # slope changes at the knots of the interpolant through (lo - h, 0), (t_k, F(t_k))
        values = torch.cat([torch.zeros(n_functions, 1), gated_functions(knots, coeffs).T], dim=1)
        slopes = values.diff(dim=1) / h
        out_w = torch.cat([slopes[:, :1], slopes.diff(dim=1)], dim=1)  # (n_functions, N)

        w_in = torch.zeros(self.d_embed, n_neurons)
        w_out = torch.zeros(n_neurons, self.d_embed)
        func = torch.arange(n_functions).repeat_interleave(neurons_per_function)
        w_in[0] = 1.0
        w_in[1 + func, torch.arange(n_neurons)] = self.suppression
        bias = (h - knots).repeat(n_functions) - self.suppression
        w_out[:, -1] = out_w.flatten()

        perm = torch.randperm(n_neurons, generator=gen).view(n_layers, self.d_mlp)
        self.register_buffer("neuron_function", func[perm])
        self.mlp_in = nn.ParameterList([nn.Parameter(w_in[:, p].unsqueeze(0)) for p in perm])
        self.mlp_out = nn.ParameterList([nn.Parameter(w_out[p].unsqueeze(0)) for p in perm])
        self.register_buffer("b_in", bias[perm].unsqueeze(1))  # (layers, instances, d_mlp)
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

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        r = F.pad(x, (0, 1))  # y starts at 0
        for i in range(self.n_layers):
            hidden = F.relu(self.apply_layer(f"mlp_in_{i}", r, layer_fns) + self.b_in[i])
            r = r + self.apply_layer(f"mlp_out_{i}", hidden, layer_fns)
        return r[..., -1:]

    def labels(self, x: Tensor) -> Tensor:
        """The analytic output `sum_i a_i F_i(x)`, `(batch, 1, 1)`."""
        return (x[..., 1:] * gated_functions(x[..., 0], self.coeffs)).sum(-1, keepdim=True)

    def sample(
        self,
        batch_size: int,
        *,
        feature_probability: float,
        value_range: tuple[float, float],
        data_generation_type: str = "at_least_zero_active",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The gated inputs: `feature_probability` is the control-bit rate, x spans the model's own range."""
        return self.sample_inputs(
            batch_size,
            control_probability=feature_probability,
            data_generation_type=data_generation_type,
            generator=generator,
        )

    def sample_inputs(
        self,
        batch_size: int,
        *,
        control_probability: float,
        data_generation_type: str = "at_least_zero_active",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`(batch, 1, n_functions + 1)`: x ~ U[lo, hi] and control bits (sparse-feature rules)."""
        lo, hi = self.value_range
        device = self.coeffs.device
        x = torch.rand(batch_size, 1, 1, generator=generator, device=device) * (hi - lo) + lo
        bits = sample_sparse_features(
            batch_size,
            1,
            self.n_functions,
            feature_probability=control_probability,
            value_range=(1.0, 1.0),
            data_generation_type=data_generation_type,
            generator=generator,
            device=device,
        )
        return torch.cat([x, bits], dim=-1)


class GatedSpec(TargetSpec):
    """Hand-coded gated function model (no training); `feature_probability` is the control-bit rate."""

    kind: Literal["gated"] = "gated"
    n_functions: PositiveInt = 4
    neurons_per_function: Annotated[int, Field(ge=2)] = 10
    n_layers: PositiveInt = 2
    feature_probability: Probability = 0.05
    value_range: ValueRange = (0.0, 5.0)
    """Range of the real input x."""

    @model_validator(mode="after")
    def _split(self) -> Self:
        if (self.n_functions * self.neurons_per_function) % self.n_layers:
            raise ValueError("n_functions * neurons_per_function must be divisible by n_layers")
        return self


class GatedFamily(Family):
    kind = "gated"
    label = "gated functions"
    spec_type = GatedSpec
    metric_keys = MECHANISM_KEYS
    checks = MECHANISM_CHECKS
    columns = (*MECHANISM_COLUMNS, Column("identity_error", "identity-pattern errors (count)"))
    summary_keys = ("mechanism_cos", "split_share")

    def build(self, spec: Any, seed: int = 0) -> Target:
        return GatedMLP(spec.n_functions, spec.neurons_per_function, spec.n_layers, spec.value_range, seed)

    def train_loss(self, spec: Any, model: Target, x: Tensor) -> Tensor:
        """MSE to the analytic output: the interpolation error of the hand-set network."""
        return ((model(x) - model.labels(x)) ** 2).mean()

    def describe(self, spec: Mapping[str, Any]) -> str:
        keys = ("n_functions", "neurons_per_function", "n_layers")
        if not all(isinstance(spec.get(k), int) for k in keys):
            return self.label
        n, per, layers = (spec[k] for k in keys)
        return f"gated functions, {n} x {per} ReLUs over {layers} layers"

    def mechanisms(self, model: Target) -> dict[str, Tensor] | None:
        """Function i: the `mlp_in` columns and `mlp_out` rows of its neurons, `(1, n_functions, d_in, d_out)`."""
        assert isinstance(model, GatedMLP)
        out = {}
        funcs = torch.arange(model.n_functions, device=model.neuron_function.device)
        for layer in range(model.n_layers):
            own = (model.neuron_function[layer][None, :] == funcs[:, None]).float()  # (functions, d_mlp)
            w_in, w_out = model.mlp_in[layer].detach(), model.mlp_out[layer].detach()  # (1, d, n), (1, n, d)
            out[f"mlp_in_{layer}"] = torch.einsum("k n, i d n -> i k d n", own, w_in)
            out[f"mlp_out_{layer}"] = torch.einsum("k n, i n d -> i k n d", own, w_out)
        return out

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        truth = self.mechanisms(ctx.target)
        assert truth is not None
        metrics, _ = mechanism_metrics(ctx.target, ctx.components, truth)
        return metrics, None
