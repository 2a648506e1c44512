"""SPD's decomposition: per decomposed matrix, C rank-one subcomponents and C causal-importance MLPs.

Matrix l (a target layer, `y = x @ W`, `W: (I, d_in, d_out)`) is approximated by `A B` with
`A: (I, d_in, C)`, `B: (I, C, d_out)`; subcomponent c is `A[:, :, c] ⊗ B[:, c, :]` (the paper's
`U[:, c] V[c, :]` with `A = Vᵀ`, `B = Uᵀ`; docs/spd.md §1.1). Index c does not link layers: each
layer is its own group. The CI MLPs of all layers are stored stacked, `(L, I, C, d_gate)`, so the fast
step evaluates every subcomponent's MLP as one batched op; layer l uses slice l.

TMS's tied `linear2` (a transposed layer whose parameter an untransposed layer also uses) is tied to
that partner (docs/spd.md §6 item 9): `aliased` keeps its own factors, which the hooks `tie_snapshot_`
(after backward) and `tie_sync_` (before the next step) merge into `A2 = B1ᵀ`, `B2 = A1ᵀ` with both
Adam updates applied, as the code's two aliased Parameters do; `shared` has no factors of its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from apd.methods.base import Decomposition, Masks
from apd.targets.base import Layer, LayerFn


def layer_shape(layer: Layer, param_shapes: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """`(d_in, d_out)` of a layer (its parameter's shape, swapped for a transposed layer)."""
    d_in, d_out = param_shapes[layer.param]
    return (d_out, d_in) if layer.transposed else (d_in, d_out)


def tie_partners(layers: tuple[Layer, ...]) -> dict[str, str]:
    """Transposed layer -> the untransposed layer that owns the same parameter (TMS: linear2 -> linear1)."""
    owners = {layer.param: layer.name for layer in layers if not layer.transposed}
    return {layer.name: owners[layer.param] for layer in layers if layer.transposed and layer.param in owners}


class SPDComponents(Decomposition):
    """Factors `A[layer] (I, d_in, C)`, `B[layer] (I, C, d_out)` and the stacked CI-function weights."""

    def __init__(
        self,
        layers: tuple[Layer, ...],
        param_shapes: Mapping[str, tuple[int, int]],
        *,
        n_instances: int,
        C: int,
        d_gate: int,
        tied_mode: str = "aliased",
    ) -> None:
        super().__init__()
        self.layers, self.n_instances, self.d_gate, self.tied_mode = layers, n_instances, d_gate, tied_mode
        self.params = tuple(param_shapes)
        self.param_shapes = dict(param_shapes)
        self.groups = {layer.name: (layer.name,) for layer in layers}
        self.group_sizes = {layer.name: C for layer in layers}
        self.partners = tie_partners(layers)
        """Tied layer -> partner; in `shared` mode the tied layer has no factors of its own."""
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        for layer in layers:
            if tied_mode == "shared" and layer.name in self.partners:
                continue
            d_in, d_out = layer_shape(layer, param_shapes)
            self.A[layer.name] = nn.Parameter(torch.zeros(n_instances, d_in, C))
            self.B[layer.name] = nn.Parameter(torch.zeros(n_instances, C, d_out))
        L = len(layers)
        if d_gate > 0:  # GateMLP: scalar -> d_gate (GELU) -> scalar per subcomponent
            self.ci_w_in = nn.Parameter(torch.zeros(L, n_instances, C, d_gate))
            self.ci_b_in = nn.Parameter(torch.zeros(L, n_instances, C, d_gate))
            self.ci_w_out = nn.Parameter(torch.zeros(L, n_instances, C, d_gate))
            self.ci_b_out = nn.Parameter(torch.zeros(L, n_instances, C))
        else:  # Gate: an affine map per subcomponent
            self.ci_w = nn.Parameter(torch.zeros(L, n_instances, C))
            self.ci_b = nn.Parameter(torch.zeros(L, n_instances, C))
        self._tie_before: dict[str, tuple[Tensor, Tensor]] | None = None

    @property
    def C(self) -> int:
        return next(iter(self.group_sizes.values()))

    def layer_index(self, name: str) -> int:
        return next(i for i, layer in enumerate(self.layers) if layer.name == name)

    # -----------------------------------------------------------------------------------------
    # initialisation

    @torch.no_grad()
    def init_(self, weights: Mapping[str, Tensor], *, init: str, generator: torch.Generator) -> None:
        """Draw every factor and CI weight from `generator`; `weights[layer]` is the layer's `(I, d_in, d_out)`.

        `projection` (paper code `init_As_and_Bs_`): A, B ~ N(0, 1), unit-norm columns of A and rows of
        B, then `B[c] *= A[:, c]ᵀ W B[c]ᵀ`, so each subcomponent is W projected on its rank-one
        direction. `normal` (main): `A ~ N(0, 1/d_in)`, `B ~ N(0, 1/C)`. CI MLPs: `w_in ~ N(0, 2)`,
        `w_out ~ N(0, 1/d_gate)`, zero biases; affine gates `w ~ N(0, 1)`.
        """
        for layer in self.layers:  # every layer draws, so the stream does not depend on tied_mode
            d_in, d_out = (weights[layer.name].shape[-2], weights[layer.name].shape[-1])
            a = torch.randn(self.n_instances, d_in, self.C, generator=generator)
            b = torch.randn(self.n_instances, self.C, d_out, generator=generator)
            if init == "projection":
                a = a / a.norm(dim=1, keepdim=True)
                b = b / b.norm(dim=2, keepdim=True)
                scale = torch.einsum("i d c, i d e, i c e -> i c", a, weights[layer.name].float(), b)
                b = b * scale.unsqueeze(-1)
            else:
                a, b = a / d_in**0.5, b / self.C**0.5
            if layer.name in self.A:
                self.A[layer.name].copy_(a)
                self.B[layer.name].copy_(b)
        if self.d_gate > 0:
            self.ci_w_in.copy_(torch.randn(self.ci_w_in.shape, generator=generator) * 2**0.5)
            self.ci_w_out.copy_(torch.randn(self.ci_w_out.shape, generator=generator) / self.d_gate**0.5)
            self.ci_b_in.zero_()
            self.ci_b_out.zero_()
        else:
            self.ci_w.copy_(torch.randn(self.ci_w.shape, generator=generator))
            self.ci_b.zero_()
        self._copy_ties_()

    @torch.no_grad()
    def _copy_ties_(self) -> None:
        """`A2 = B1ᵀ`, `B2 = A1ᵀ` for every aliased tie (the code discards linear2's own init)."""
        if self.tied_mode != "aliased":
            return
        for tied, owner in self.partners.items():
            self.A[tied].copy_(self.B[owner].transpose(-1, -2))
            self.B[tied].copy_(self.A[owner].transpose(-1, -2))

    # -----------------------------------------------------------------------------------------
    # aliased ties: two parameter entries with their own Adam states, one set of numbers

    @torch.no_grad()
    def tie_snapshot_(self) -> None:
        """Remember the shared values before the optimiser step (call between backward and step)."""
        if self.tied_mode == "aliased" and self.partners:
            self._tie_before = {
                o: (self.A[o].detach().clone(), self.B[o].detach().clone()) for o in self.partners.values()
            }

    @torch.no_grad()
    def tie_sync_(self) -> None:
        """Apply both parameter entries' updates to the shared values: `v + (v1 - v) + (v2 - v)`."""
        if self._tie_before is None:
            return
        for tied, owner in self.partners.items():
            a0, b0 = self._tie_before[owner]
            a = self.A[owner] + self.B[tied].transpose(-1, -2) - a0
            b = self.B[owner] + self.A[tied].transpose(-1, -2) - b0
            self.A[owner].copy_(a)
            self.B[owner].copy_(b)
        self._tie_before = None
        self._copy_ties_()

    # -----------------------------------------------------------------------------------------
    # factors, weights and layers

    def factors(self, layer: Layer | str) -> tuple[Tensor, Tensor]:
        """`(A (I, d_in, C), B (I, C, d_out))` of a layer; a `shared` tied layer transposes its partner's."""
        name = layer if isinstance(layer, str) else layer.name
        if name not in self.A:
            owner = self.partners[name]
            return self.B[owner].transpose(-1, -2), self.A[owner].transpose(-1, -2)
        return self.A[name], self.B[name]

    def ci_weights(self, index: int) -> tuple[Tensor, ...]:
        """Layer `index`'s CI weights: `(w_in, b_in, w_out, b_out)` (GateMLP) or `(w, b)` (affine gate)."""
        if self.d_gate > 0:
            return self.ci_w_in[index], self.ci_b_in[index], self.ci_w_out[index], self.ci_b_out[index]
        return self.ci_w[index], self.ci_b[index]

    def layer_weight(self, layer: Layer | str) -> Tensor:
        """The sum of a layer's subcomponents `A B`: `(I, d_in, d_out)`."""
        a, b = self.factors(layer)
        return a @ b

    def layer_component_weights(self, layer: Layer | str) -> Tensor:
        """Every subcomponent of a layer `(I, C, d_in, d_out)`."""
        a, b = self.factors(layer)
        return torch.einsum("i d c, i c e -> i c d e", a, b)

    def _owner(self, param: str) -> Layer:
        """The layer that decomposes `param` in its own orientation (else the first layer using it)."""
        using = [layer for layer in self.layers if layer.param == param]
        return next((layer for layer in using if not layer.transposed), using[0])

    def component_weights(self, param: str) -> Tensor:
        """The subcomponents of the layer that computes `param` untransposed: `(I, C, d_in, d_out)`."""
        layer = self._owner(param)
        w = self.layer_component_weights(layer)
        return w.transpose(-1, -2) if layer.transposed else w

    def total_weight(self, param: str) -> Tensor:
        layer = self._owner(param)
        w = self.layer_weight(layer)
        return w.transpose(-1, -2) if layer.transposed else w

    def inner(self, layer: Layer | str, a: Tensor) -> Tensor:
        """Inner activations `a @ A`: `(batch, I, d_in) -> (batch, I, C)`."""
        return torch.einsum("b i d, i d c -> b i c", a, self.factors(layer)[0])

    def layer_fn(self, layer: Layer, mask: Tensor | None = None) -> LayerFn:
        """The layer as `((x A) ⊙ mask) B`; bias is the target's (added outside, never decomposed)."""
        _, b = self.factors(layer)

        def fn(x: Tensor) -> Tensor:
            inner = self.inner(layer, x)
            if mask is not None:
                inner = inner * mask
            return torch.einsum("b i c, i c e -> b i e", inner, b)

        return fn

    def layer_fns(self, layers: tuple[Layer, ...], mask: Masks | None = None) -> dict[str, LayerFn]:
        out = {}
        for layer in layers:
            m = mask[self.group_of(layer.name)] if isinstance(mask, Mapping) else mask
            out[layer.name] = self.layer_fn(layer, m)
        return out
