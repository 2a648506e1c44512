"""The target-model contract: a network whose decomposed layers can be swapped for functions.

Shapes: inputs and activations are `(batch, instances, d)`; every decomposed weight is
`(instances, d_in, d_out)` and a layer computes `y = x @ W` (the reference code's convention).
The instances axis is always present (size 1 for a single model).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from apd.data import sample_sparse_features
from apd.errors import ApdError

LayerFn = Callable[[Tensor], Tensor]
"""Maps a layer input `(batch, instances, d_in)` to its output `(batch, instances, d_out)`."""


@dataclass(frozen=True)
class Layer:
    """A decomposed layer. Tied layers share `param` (TMS's linear2 uses linear1 transposed)."""

    name: str
    param: str
    transposed: bool = False


class Target(nn.Module):
    """Base class of target models. Subclasses set the attributes below and `forward`."""

    kind: ClassVar[str]
    """The family (`apd.targets.registry.FAMILIES`) whose ground truth judges decompositions of it."""
    layers: tuple[Layer, ...]
    n_instances: int
    n_inputs: int
    n_outputs: int
    act_recon_layers: tuple[str, ...]
    """Layers whose outputs the hidden-activation reconstruction loss compares."""
    act_recon_relu: bool = False
    """Apply ReLU before comparing (residual MLP: the MLP's hidden activations)."""
    shared_tensors: ClassVar[tuple[str, ...]] = ()
    """Parameters or buffers without the instances axis, the same for every instance (a pack tiles
    every other tensor along that axis, `apd.pack.tile_target`)."""

    def weights(self) -> dict[str, Tensor]:
        """Decomposed parameters by name, each `(instances, d_in, d_out)`."""
        raise NotImplementedError

    def default_m(self) -> int:
        """Default inner rank of components for this target."""
        raise NotImplementedError

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        raise NotImplementedError

    def labels(self, x: Tensor) -> Tensor:
        """What the network was trained to output for inputs `x` (its task labels)."""
        raise ApdError(f"{type(self).__name__}: this target has no task labels")

    def sample(
        self,
        batch_size: int,
        *,
        feature_probability: float,
        value_range: tuple[float, float],
        data_generation_type: str = "at_least_zero_active",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Inputs `(batch, instances, n_inputs)` on the model's device: sparse features (docs/method.md)."""
        return sample_sparse_features(
            batch_size,
            self.n_instances,
            self.n_inputs,
            feature_probability=feature_probability,
            value_range=value_range,
            data_generation_type=data_generation_type,
            generator=generator,
            device=self.device,
        )

    @property
    def device(self) -> torch.device:
        for t in itertools.chain(self.parameters(), self.buffers()):
            return t.device
        return torch.device("cpu")

    def param_shapes(self) -> dict[str, tuple[int, int]]:
        return {name: (w.shape[-2], w.shape[-1]) for name, w in self.weights().items()}

    def layer_weight(self, layer: Layer) -> Tensor:
        w = self.weights()[layer.param]
        return w.transpose(-1, -2) if layer.transposed else w

    def apply_layer(self, name: str, a: Tensor, layer_fns: Mapping[str, LayerFn] | None) -> Tensor:
        """Run layer `name` on `a`: through `layer_fns[name]` if given, else the target's weight."""
        if layer_fns is not None and name in layer_fns:
            return layer_fns[name](a)
        layer = self.layer_by_name(name)
        return torch.einsum("b i d, i d e -> b i e", a, self.layer_weight(layer))

    def layer_by_name(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def run_with_cache(
    model: Target,
    x: Tensor,
    layer_fns: Mapping[str, LayerFn] | None = None,
    *,
    grad_outputs: bool = False,
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """Forward pass that records each decomposed layer's (input, output).

    With `grad_outputs`, every recorded output requires grad, so `autograd.grad(out, h)` works
    even when the layer's weights are frozen.
    """
    cache: dict[str, tuple[Tensor, Tensor]] = {}

    def recorder(name: str) -> LayerFn:
        def fn(a: Tensor) -> Tensor:
            if layer_fns is not None and name in layer_fns:
                h = layer_fns[name](a)
            else:
                h = torch.einsum("b i d, i d e -> b i e", a, model.layer_weight(model.layer_by_name(name)))
            if grad_outputs and not h.requires_grad:
                h.requires_grad_()
            cache[name] = (a, h)
            return h

        return fn

    out = model(x, {layer.name: recorder(layer.name) for layer in model.layers})
    return out, cache
