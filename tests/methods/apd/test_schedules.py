import math

import pytest

from apd.schedules import lr_at


def test_warmup_then_quarter_cosine() -> None:
    # steps 100, warmup 10%: W = 10; t < W: lr t / W; then cos(pi t / (2 (T - 1))) with T = 90
    assert lr_at(0, lr=1.0, steps=100, schedule="cosine", warmup_pct=0.1) == 0.0
    assert lr_at(5, lr=1.0, steps=100, schedule="cosine", warmup_pct=0.1) == 0.5
    assert lr_at(10, lr=1.0, steps=100, schedule="cosine", warmup_pct=0.1) == 1.0
    assert lr_at(55, lr=1.0, steps=100, schedule="cosine", warmup_pct=0.1) == pytest.approx(
        math.cos(math.pi * 45 / 178)
    )
    # reaches exactly 0 at t = T - 1 (the last update), not the (1 + cos)/2 midpoint value 0.5
    assert lr_at(99, lr=1.0, steps=100, schedule="cosine", warmup_pct=0.1) == pytest.approx(0.0, abs=1e-12)


def test_other_schedules() -> None:
    assert lr_at(50, lr=2.0, steps=100, schedule="constant") == 2.0
    assert lr_at(25, lr=2.0, steps=100, schedule="linear") == 1.5
    assert lr_at(20, lr=1.0, steps=100, schedule="exponential", halflife=10) == 0.25
