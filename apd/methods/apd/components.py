"""Parameter components: per decomposed parameter, C low-rank matrices `P_c = A_c @ B_c`.

`A: (instances, C, d_in, m)`, `B: (instances, C, m, d_out)`. The same C indexes every parameter,
so a component can span layers. A tied layer (TMS linear2) uses `A' = B^T`, `B' = A^T`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from apd.methods.base import Decomposition, Masks
from apd.targets.base import Layer, LayerFn


class Components(Decomposition):
    """The learned decomposition of a target's decomposed parameters: one group over every layer."""

    GROUP = "components"

    def __init__(
        self,
        param_shapes: dict[str, tuple[int, int]],
        *,
        n_instances: int,
        C: int,
        m: int,
        init_scale: float = 1.0,
        generator: torch.Generator | None = None,
        layers: tuple[Layer, ...] | None = None,
    ) -> None:
        super().__init__()
        self.n_instances, self.m = n_instances, m
        self.params = tuple(param_shapes)
        names = tuple(layer.name for layer in layers) if layers is not None else self.params
        self.groups = {self.GROUP: names}
        self.group_sizes = {self.GROUP: C}
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for name, (d_in, d_out) in param_shapes.items():
            self.A[name] = nn.Parameter(torch.empty(n_instances, C, d_in, m))
            self.B[name] = nn.Parameter(torch.empty(n_instances, C, m, d_out))
        self.init_(init_scale, generator)

    @torch.no_grad()
    def init_(self, gain: float, generator: torch.Generator | None = None) -> None:
        """xavier_normal_ on the whole 4-D tensor, as the reference code does (docs/method.md §1.11)."""
        for p in [*self.A.values(), *self.B.values()]:
            fan_out = p.shape[0] * p.shape[2] * p.shape[3]  # torch: dim0 maps x receptive field
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            std = gain * (2.0 / (fan_in + fan_out)) ** 0.5
            p.normal_(0.0, std, generator=generator)

    def factors(self, layer: Layer) -> tuple[Tensor, Tensor]:
        """(A, B) of a layer, transposed for tied layers."""
        a, b = self.A[layer.param], self.B[layer.param]
        if layer.transposed:
            return b.transpose(-1, -2), a.transpose(-1, -2)
        return a, b

    @property
    def C(self) -> int:
        return self.group_sizes[self.GROUP]

    def weight(self, param: str) -> Tensor:
        """Materialised components `(instances, C, d_in, d_out)`."""
        return self.A[param] @ self.B[param]

    def component_weights(self, param: str) -> Tensor:
        return self.weight(param)

    def total_weight(self, param: str) -> Tensor:
        """Sum over components `(instances, d_in, d_out)`: what the full APD model uses."""
        return torch.einsum("i c d m, i c m e -> i d e", self.A[param], self.B[param])

    def inner_acts(self, layer: Layer, x: Tensor) -> Tensor:
        """`x @ A_c` for every component: `(batch, instances, C, m)`."""
        a, _ = self.factors(layer)
        return torch.einsum("b i d, i c d m -> b i c m", x, a)

    def component_acts(self, layer: Layer, x: Tensor) -> Tensor:
        """Each component's share of the layer output `(batch, instances, C, d_out)`."""
        _, b = self.factors(layer)
        return torch.einsum("b i c m, i c m e -> b i c e", self.inner_acts(layer, x), b)

    def layer_fn(self, layer: Layer, mask: Masks | None = None) -> LayerFn:
        """The layer as APD computes it: all components, or those kept by `mask (batch, instances, C)`."""
        _, b = self.factors(layer)
        if isinstance(mask, Mapping):
            mask = mask[self.GROUP]

        def fn(x: Tensor) -> Tensor:
            inner = self.inner_acts(layer, x)
            if mask is not None:
                inner = inner * mask.unsqueeze(-1)
            return torch.einsum("b i c m, i c m e -> b i e", inner, b)

        return fn

    def layer_fns(self, layers: tuple[Layer, ...], mask: Masks | None = None) -> dict[str, LayerFn]:
        return {layer.name: self.layer_fn(layer, mask) for layer in layers}

    @torch.no_grad()
    def normalize_A_(self) -> None:
        """Unit L2 norm for every column `A[i, c, :, m]` (unit_norm_matrices)."""
        for a in self.A.values():
            for sl in component_chunks(a):  # the norm and the division read the chunk once from memory
                a_c = a[:, sl]
                # a dot product over d_in: 4x faster on the CPU than `norm(dim=-2)`, which reduces a strided axis
                a_c.div_(torch.linalg.vecdot(a_c, a_c, dim=-2).sqrt_().unsqueeze(-2))

    @torch.no_grad()
    def project_A_grads_(self) -> None:
        """Remove the gradient component parallel to each unit-norm column of A."""
        for a in self.A.values():
            if a.grad is not None:
                for sl in component_chunks(a):
                    a_c, g_c = a[:, sl], a.grad[:, sl]
                    parallel = torch.linalg.vecdot(g_c, a_c, dim=-2).unsqueeze(-2)  # (I, c, 1, m)
                    g_c.addcmul_(parallel, a_c, value=-1.0)


CHUNK_ELEMENTS = 2**18
"""Elements (1 MB in fp32) of a per-component tensor that `component_chunks` keeps together: cache-sized."""


def component_chunks(*tensors: Tensor) -> list[slice]:
    """Slices of the component axis (1) whose parts of `tensors` together hold about `CHUNK_ELEMENTS`.

    Passes over large factors (resid MLPs: 26 MB each) that touch a chunk several times then read it
    from cache, not memory; small factors (TMS) come as one chunk.
    """
    C = tensors[0].shape[1]
    per_component = sum(t[0, 0].numel() for t in tensors)
    step = max(1, CHUNK_ELEMENTS // max(per_component, 1))
    return [slice(s, min(s + step, C)) for s in range(0, C, step)]
