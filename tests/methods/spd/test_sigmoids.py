"""The leaky hard sigmoids (docs/spd.md §1.2): values and their leaky gradients, slope 0.01."""

import pytest
import torch

from apd.methods.spd.sigmoids import lower_leaky, lower_leaky_main, upper_leaky

X = torch.tensor([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0])


def grads(fn, x: torch.Tensor, upstream: torch.Tensor | None = None) -> torch.Tensor:
    x = x.clone().requires_grad_()
    fn(x).backward(torch.ones_like(x) if upstream is None else upstream)
    assert x.grad is not None
    return x.grad


def test_lower_leaky_leaks_below_zero_and_saturates_above_one() -> None:
    # alpha x below 0 (slightly negative), identity on (0, 1], 1 above
    assert lower_leaky(X).tolist() == pytest.approx([-0.02, -0.005, 0.0, 0.25, 1.0, 1.0])
    assert grads(lower_leaky, X).tolist() == pytest.approx([0.01, 0.01, 0.01, 1.0, 1.0, 0.0])


def test_upper_leaky_leaks_above_one_and_is_flat_below_zero() -> None:
    # 0 below 0, identity on (0, 1], 1 + 0.01 (x - 1) above: 3 -> 1.02
    assert upper_leaky(X).tolist() == pytest.approx([0.0, 0.0, 0.0, 0.25, 1.0, 1.02])
    assert grads(upper_leaky, X).tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0, 0.01])


def test_main_variant_clamps_and_leaks_only_upwards() -> None:
    assert lower_leaky_main(X).tolist() == pytest.approx([0.0, 0.0, 0.0, 0.25, 1.0, 1.0])
    # descent moves x by -grad: below 0 only a negative gradient (pushing x up) leaks, times 0.01
    down = grads(lower_leaky_main, X, torch.full_like(X, -2.0))
    assert down.tolist() == pytest.approx([-0.02, -0.02, -0.02, -2.0, -2.0, 0.0])
    up = grads(lower_leaky_main, X, torch.full_like(X, 2.0))
    assert up.tolist() == pytest.approx([0.0, 0.0, 0.0, 2.0, 2.0, 0.0])
