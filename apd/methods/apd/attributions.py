"""Per-sample, per-component attributions `(batch, instances, C)` (docs/method.md §1.4).

These are the reference implementations (one autograd call per output dimension), kept as the
test oracle for the fast path in `apd.methods.apd.fast`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apd.methods.apd.components import Components
from apd.targets.base import Target, run_with_cache


def _gradient(
    model_out: Tensor,
    cache: dict[str, tuple[Tensor, Tensor]],
    target: Target,
    components: Components,
) -> Tensor:
    """`attr_c = sum_o (sum_l g_{o,l} . u_{c,l})^2` with `g = d out_o / d h_l`, `u = a_l @ P_c`."""
    layers = target.layers
    hs = [cache[layer.name][1] for layer in layers]
    u = [components.component_acts(layer, cache[layer.name][0].detach()) for layer in layers]
    attr = torch.zeros(u[0].shape[:-1], device=model_out.device)
    for o in range(model_out.shape[-1]):
        grads = torch.autograd.grad(model_out[..., o].sum(), hs, retain_graph=True)
        inner = sum(torch.einsum("b i e, b i c e -> b i c", g, ul) for g, ul in zip(grads, u, strict=True))
        attr = attr + inner**2
    return attr


def gradient_attributions(target: Target, components: Components, x: Tensor) -> Tensor:
    """Gradient attributions through the target model at its own weights (the code's default)."""
    with torch.enable_grad():
        out, cache = run_with_cache(target, x, grad_outputs=True)
        return _gradient(out, cache, target, components)


def gradient_apd_attributions(target: Target, components: Components, x: Tensor) -> Tensor:
    """Gradients through the full APD model (the paper's TMS 5-2 result; pre-Dec-2024 code)."""
    with torch.enable_grad():
        out, cache = run_with_cache(target, x, components.layer_fns(target.layers), grad_outputs=True)
        return _gradient(out, cache, target, components)


def activation_attributions(target: Target, components: Components, x: Tensor) -> Tensor:
    """`sum_l ||component_acts_{c,l}||^2` from the full APD forward pass."""
    _, cache = run_with_cache(target, x, components.layer_fns(target.layers))
    return sum(  # type: ignore[return-value]
        components.component_acts(layer, cache[layer.name][0]).pow(2).sum(-1) for layer in target.layers
    )


@torch.no_grad()
def ablation_attributions(target: Target, components: Components, x: Tensor) -> Tensor:
    """`mean_o (f(full) - f(full without c))^2`: one extra APD forward per component."""
    full = target(x, components.layer_fns(target.layers))
    mask = torch.ones(*x.shape[:2], components.C, device=x.device)
    attr = []
    for c in range(components.C):
        mask[..., c] = 0.0
        ablated = target(x, components.layer_fns(target.layers, mask))
        mask[..., c] = 1.0
        attr.append((full - ablated).pow(2).mean(-1))
    return torch.stack(attr, dim=-1)


ATTRIBUTIONS = {
    "gradient": gradient_attributions,
    "gradient_apd": gradient_apd_attributions,
    "activation": activation_attributions,
    "ablation": ablation_attributions,
}


def attributions(kind: str, target: Target, components: Components, x: Tensor) -> Tensor:
    """Attributions of the named kind (see `apd.config.AttributionType`)."""
    return ATTRIBUTIONS[kind](target, components, x)
