"""Learning-rate warm-up and schedules, exactly as the reference code (docs/method.md §1.9)."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    *,
    lr: float,
    steps: int,
    schedule: str = "constant",
    warmup_pct: float = 0.0,
    halflife: float | None = None,
) -> float:
    """LR at `step`: linear warm-up from 0 over `int(steps * warmup_pct)` steps, then the schedule.

    Schedules run over the remaining `T = steps - W` steps at `t = step - W`: constant 1,
    linear `1 - t/T`, cosine `cos(pi t / (2 (T - 1)))` (a quarter cosine from 1 to 0, not
    `(1 + cos)/2`), exponential `0.5^(t/halflife)`.
    """
    warmup = int(steps * warmup_pct)
    if step < warmup:
        return lr * step / warmup
    t, total = step - warmup, steps - warmup
    if schedule == "constant":
        factor = 1.0
    elif schedule == "linear":
        factor = 1.0 - t / total
    elif schedule == "cosine":
        factor = math.cos(math.pi * t / (2 * (total - 1))) if total > 1 else 1.0
    elif schedule == "exponential":
        assert halflife is not None
        factor = 0.5 ** (t / halflife)
    else:
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    return lr * factor
