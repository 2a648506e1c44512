"""Ground-truth metrics of a decomposition and the `recovered` verdict (docs/method.md).

Method-agnostic metrics live here, one per module (identity pattern, mechanism matching, ...);
each target family (`apd.targets.family`) declares and computes its own from them. `decide` is
the one rule; `evaluate` runs the family's evaluation and the verdict. Names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "evaluate": "apd.metrics.suite",
    "EvalArtifacts": "apd.metrics.suite",
    "judge": "apd.metrics.verdict",
    "decide": "apd.metrics.verdict",
    "Verdict": "apd.metrics.verdict",
    "metric_keys": "apd.metrics.keys",
    "objective_keys": "apd.metrics.keys",
    "family_kind": "apd.metrics.keys",
}

if TYPE_CHECKING:
    from apd.metrics.keys import family_kind as family_kind
    from apd.metrics.keys import metric_keys as metric_keys
    from apd.metrics.keys import objective_keys as objective_keys
    from apd.metrics.suite import EvalArtifacts as EvalArtifacts
    from apd.metrics.suite import evaluate as evaluate
    from apd.metrics.verdict import Verdict as Verdict
    from apd.metrics.verdict import decide as decide
    from apd.metrics.verdict import judge as judge

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
