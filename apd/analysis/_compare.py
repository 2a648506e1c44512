"""Methods side by side on one target: how much of each method's search space recovers.

Given sweeps of several methods (APD, SPD) on the same target, each method's swept parameter is put
on one scale, its ratio to the method's own centre (the experiment's value of that parameter: the
paper's setting for the shipped experiments), so a search space of x1/4 to x4 around each paper
setting compares like with like. Per method: the share of searched settings that recover (k/n), the
share of all judged instances that recover (k/n over seeds), and the widest run of adjacent swept
values whose settings all recover, as ratios to the centre (the recovering band).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from apd.analysis._answer import evidence, target_label
from apd.analysis._columns import PARAM, short
from apd.analysis._settings import format_rate
from apd.errors import ApdError

METHOD_DEFAULT = "apd"
"""Rows without a method value were written before methods existed: APD."""


@dataclass
class MethodSide:
    """One method's recovery over its swept parameter on the compared target."""

    method: str
    param: str | None
    """The swept parameter (dotted name), None when the method's sweeps vary none."""
    centre: float | None
    """The experiment's value of `param` (the ratios' 1)."""
    settings_recovering: int
    settings_judged: int
    evidence: str
    """`k/n instances over s seeds`."""
    band: tuple[float, float] | None
    """The widest recovering run of swept values, as ratios to `centre`; None: no setting recovers."""
    curve: pd.DataFrame
    """Columns ratio, rate, recovery (k/n instances), recovers: one row per swept value."""

    @property
    def label(self) -> str:
        return self.method.upper()

    def band_text(self) -> str:
        """`recovers over x1/2-x2 of its paper importance_minimality_coeff (0.003)` or why not."""
        what = f"its paper {self.param} ({self.centre:g})" if self.param and self.centre else "its setting"
        if self.band is None:
            return f"{self.label} recovers nowhere in x{ratio_text(self.lo)}-x{ratio_text(self.hi)} of {what}"
        lo, hi = self.band
        span = f"x{ratio_text(lo)}" if lo == hi else f"x{ratio_text(lo)}-x{ratio_text(hi)}"
        return f"{self.label} recovers over {span} of {what}"

    @property
    def lo(self) -> float:
        return float(self.curve["ratio"].min()) if len(self.curve) else float("nan")

    @property
    def hi(self) -> float:
        return float(self.curve["ratio"].max()) if len(self.curve) else float("nan")


@dataclass
class Comparison:
    """The methods that decomposed one target."""

    target: str
    label: str
    """In words, e.g. `TMS 5-2 (tms-5-2)`."""
    sides: list[MethodSide]

    def sentence(self) -> str:
        """The line of the printed answer."""
        parts = [
            f"{s.label} {format_rate(s.settings_recovering, s.settings_judged)} settings ({s.evidence})"
            for s in self.sides
        ]
        bands = "; ".join(s.band_text() for s in self.sides)
        return f"Side by side on {self.label}, recovering: {', '.join(parts)}; {bands}."

    def table(self) -> pd.DataFrame:
        rows = []
        for s in self.sides:
            rows.append(
                {
                    "method": s.label,
                    "swept parameter": s.param or "–",
                    "centre (x1)": f"{s.centre:g}" if s.centre is not None else "–",
                    "searched": f"x{ratio_text(s.lo)}-x{ratio_text(s.hi)}" if len(s.curve) else "–",
                    "recovering settings": format_rate(s.settings_recovering, s.settings_judged),
                    "recovered instances": s.evidence,
                    "recovered instances by ratio": ", ".join(
                        f"x{ratio_text(r)}: {k}" for r, k in zip(s.curve["ratio"], s.curve["recovery"], strict=True)
                    )
                    or "–",
                    "recovering band": (
                        "none"
                        if s.band is None
                        else f"x{ratio_text(s.band[0])}-x{ratio_text(s.band[1])}"
                        if s.band[0] != s.band[1]
                        else f"x{ratio_text(s.band[0])}"
                    ),
                }
            )
        return pd.DataFrame(rows)


def ratio_text(r: float) -> str:
    """`1/4`, `1/2`, `1`, `2`, `4`; other ratios as short decimals."""
    if not np.isfinite(r) or r <= 0:
        return f"{r:g}"
    frac = Fraction(r).limit_denominator(64)
    if abs(float(frac) - r) <= 1e-6 * r and (frac.numerator == 1 or frac.denominator == 1):
        return str(frac.numerator) if frac.denominator == 1 else f"1/{frac.denominator}"
    return f"{r:.3g}"


def _centre(trials: pd.DataFrame, param: str) -> float | None:
    """The value of `param` in the trials' experiment config (the first that loads), else None."""
    from apd.config import load_config

    for name in trials["experiment"].dropna().astype(str).unique():
        try:
            value: Any = load_config(name)
        except (ApdError, OSError, ValueError):  # an experiment that no longer loads: no centre
            continue
        for part in param.split("."):
            value = getattr(value, part, None)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def _swept(trials: pd.DataFrame, ranked: list[str]) -> str | None:
    """The method's swept numeric parameter: the only varying one, else the most important varying one."""
    varying = [
        c
        for c in trials.columns
        if c.startswith(PARAM) and c != f"{PARAM}seed" and pd.to_numeric(trials[c], errors="coerce").nunique() > 1
    ]
    if not varying:
        return None
    ranked_cols = [f"{PARAM}{p}" if not p.startswith(PARAM) else p for p in ranked]
    return next((c for c in ranked_cols if c in varying), varying[0])


def _band(curve: pd.DataFrame) -> tuple[float, float] | None:
    """The widest run of adjacent swept values (by ratio) that all recover, widest by ratio span."""
    best: tuple[float, float] | None = None
    start: float | None = None
    prev: float | None = None
    for ratio, ok in zip(curve["ratio"], curve["recovers"], strict=True):
        if ok:
            start = ratio if start is None else start
            prev = ratio
            if best is None or prev / start > best[1] / best[0]:
                best = (start, prev)
        else:
            start = None
    return best


def method_side(method: str, trials: pd.DataFrame, settings: pd.DataFrame, ranked: list[str]) -> MethodSide:
    """One method's side from its trials and `settings_table` on the compared target."""
    judged = settings[settings["n_judged"] > 0] if len(settings) else settings
    col = _swept(trials, ranked)
    param = short(col) if col else None
    centre = _centre(trials, param) if param else None
    curve = pd.DataFrame(columns=["ratio", "rate", "recovery", "recovers"])
    if col is not None and len(judged):
        values = pd.to_numeric(judged[col], errors="coerce")
        by_value = judged.assign(_value=values).dropna(subset=["_value"])
        rows = []
        for value, g in by_value.groupby("_value", sort=True):
            k, n = int(g["n_inst_recovered"].sum()), int(g["n_instances"].sum())
            rows.append(
                {
                    "ratio": float(value) / centre if centre else float(value),
                    "rate": k / n if n else float("nan"),
                    "recovery": format_rate(k, n),
                    "recovers": bool(g["recovers"].all()),
                }
            )
        curve = pd.DataFrame(rows).sort_values("ratio").reset_index(drop=True)
    return MethodSide(
        method,
        param,
        centre,
        int(judged["recovers"].sum()) if len(judged) else 0,
        len(judged),
        evidence(trials),
        _band(curve) if len(curve) else None,
        curve,
    )


def _method(value: Any) -> str:
    return METHOD_DEFAULT if value is None or str(value) in ("", "nan", "None", "<NA>") else str(value)


def comparisons(experiments: list[Any]) -> list[Comparison]:
    """One `Comparison` per target that more than one method decomposed (`ExperimentAnalysis` list)."""
    by_target: dict[str, list[Any]] = {}
    for e in experiments:
        by_target.setdefault(e.target, []).append(e)
    out = []
    for target, group in by_target.items():
        named = sorted(((_method(e.method), e) for e in group), key=lambda pair: pair[0])
        if len({m for m, _ in named}) < 2:
            continue
        sides = [method_side(m, e.trials, e.settings, e.ranked) for m, e in named]
        out.append(Comparison(target, target_label(group[0].trials), sides))
    return out


def comparison_figure(c: Comparison) -> Figure:
    """Recovery rate (recovered / judged instances) against the swept parameter's ratio to each
    method's centre, log axis, one line per method."""
    import seaborn as sns

    rows = [
        {"ratio": r, "rate": rate, "method": f"{s.label} ({s.param})"}
        for s in c.sides
        for r, rate in zip(s.curve["ratio"], s.curve["rate"], strict=True)
    ]
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    if rows:
        df = pd.DataFrame(rows)
        sns.lineplot(df, x="ratio", y="rate", hue="method", marker="o", ax=ax)
        ticks = sorted(df["ratio"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"x{ratio_text(t)}" for t in ticks])
        ax.minorticks_off()
    ax.axvline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("swept parameter / the method's paper value (log scale)")
    ax.set_ylabel("recovered / judged instances")
    ax.set_title(f"{c.label}: recovery around each method's paper setting", fontsize=10)
    return fig


__all__ = ["Comparison", "MethodSide", "comparison_figure", "comparisons", "method_side", "ratio_text"]
