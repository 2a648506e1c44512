"""The leaky hard sigmoids that turn raw CI values into causal importances (docs/spd.md §1.2).

Slope alpha = 0.01 outside [0, 1], as in the paper and its code. `lower_leaky` (paper, code) gives
the masks' g: `alpha x` below 0 (so g and masks may dip slightly below 0), 1 above 1 (gradient 0).
`upper_leaky` gives the importance penalty's g+: 0 below 0 (gradient 0), `1 + alpha (x - 1)` above 1.
`lower_leaky_main` is main's mask-side variant: forward `clamp(x, 0, 1)`, and below 0 the gradient
leaks (times alpha) only where it would move x upwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ALPHA = 0.01


def lower_leaky(x: Tensor, alpha: float = ALPHA) -> Tensor:
    """`alpha x` for x <= 0, x on (0, 1], 1 above; gradient alpha, 1, 0."""
    return torch.where(x > 0, x.clamp(max=1.0), alpha * x)


def upper_leaky(x: Tensor, alpha: float = ALPHA) -> Tensor:
    """0 for x <= 0, x on (0, 1], `1 + alpha (x - 1)` above; gradient 0, 1, alpha."""
    return torch.where(x > 1, 1 + alpha * (x - 1), x.relu())


class _LowerLeakyMain(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None]:
        (grad,) = grads
        (x,) = ctx.saved_tensors
        zero = torch.zeros_like(grad)
        below = torch.where(grad < 0, ctx.alpha * grad, zero)  # descent moves x up only where grad < 0
        return torch.where(x <= 0, below, torch.where(x <= 1, grad, zero)), None


def lower_leaky_main(x: Tensor, alpha: float = ALPHA) -> Tensor:
    """Main's variant: `clamp(x, 0, 1)`; below 0 the gradient is `alpha grad` where grad < 0, else 0."""
    out: Tensor = _LowerLeakyMain.apply(x, alpha)
    return out


def lower_sigmoid(variant: str) -> Any:
    """The mask-side sigmoid of `SPDConfig.lower_sigmoid`."""
    return lower_leaky_main if variant == "main" else lower_leaky
