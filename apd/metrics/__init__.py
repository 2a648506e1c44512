"""Ground-truth metrics of a decomposition and the `recovered` verdict (method notes 4, 9).

`judge` and the key lists import no torch, so analysis can re-judge stored metrics cheaply;
`evaluate` (torch) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apd.metrics.keys import family_of, metric_keys
from apd.metrics.verdict import judge

if TYPE_CHECKING:
    from apd.metrics.suite import evaluate

__all__ = ["evaluate", "family_of", "judge", "metric_keys"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from apd.metrics.suite import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
