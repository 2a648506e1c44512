"""Seaborn figures of a sweep: recovery maps, parallel coordinates, importances, metrics, failure modes,
learning curves, Pareto front.

Every function takes frames and returns a matplotlib `Figure` (no pyplot state), titled, with
labelled axes; `save` writes it as PNG. Recovery is counted per model instance. Continuous
parameters are binned (log bins for the ones the sweep drew on a log scale), and a figure says so
in its title when it rests on too few points to mean much.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from apd.analysis._columns import is_missing, metric_label, param_label, short
from apd.analysis._outcomes import OUTCOMES, PARTLY, RECOVERED, instances
from apd.analysis._settings import rate_by

MAX_LEVELS = 8
N_BINS = 5
MIN_POINTS = 10
"""Fewer judged trials than this: a figure says its pattern is anecdotal."""
MIN_CELL = 3
"""Map cells with fewer judged instances than this are hatched."""
_DEEP = sns.color_palette("deep")
_OUTCOME_COLORS = {
    RECOVERED: _DEEP[2],
    PARTLY: _DEEP[8],
    "not recovered": _DEEP[3],
    "diverged": _DEEP[1],
    "pruned": _DEEP[7],
    "failed": _DEEP[5],
    "running": _DEEP[0],
}
assert set(_OUTCOME_COLORS) == set(OUTCOMES)
_FIXED_MODES = {RECOVERED: _DEEP[2], "diverged": _DEEP[1], "pruned": _DEEP[7]}


def mode_palette(modes: Sequence[str]) -> dict[str, Any]:
    """A distinct colour per failure mode: fixed ones for recovered/diverged/pruned, the rest from tab20
    (skipping its greens and the fixed colours' hues), so no two modes share a colour."""
    taken = [tuple(round(c, 3) for c in v) for v in _FIXED_MODES.values()]
    pool = [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i not in (4, 5)]  # tab20's greens
    pool += sns.color_palette("husl", max(0, len(modes) - len(pool)) + 1)
    out: dict[str, Any] = {}
    free = iter(c for c in pool if tuple(round(x, 3) for x in c) not in taken)
    for mode in modes:
        out[mode] = _FIXED_MODES.get(mode) or next(free)
    return out


def few_points_note(n_trials: int, what: str = "pattern") -> str:
    """A title suffix when `n_trials` judged trials are too few for the figure to mean much."""
    return (
        f" — only {n_trials} judged trial{'s' if n_trials != 1 else ''}: this {what} is anecdotal"
        if n_trials < MIN_POINTS
        else ""
    )


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _new(nrows: int = 1, ncols: int = 1, *, w: float = 5.0, h: float = 4.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(nrows, ncols)
    return fig, axes


def is_log_scale(values: pd.Series, decades: float = 1.0) -> bool:
    """Positive values spanning at least `decades` powers of ten read better on a log axis."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(v)) and float(v.min()) > 0 and float(v.max()) / float(v.min()) >= 10**decades


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _outcome_str(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`outcome` as plain strings, and the outcomes present in their canonical order (legends list only those)."""
    out = df.assign(outcome=df["outcome"].astype(str))
    present = set(out["outcome"])
    return out, [o for o in OUTCOMES if o in present]


def _continuous(dist: BaseDistribution | None) -> tuple[bool, bool]:
    """(continuous, log) of a declared distribution: float ranges without a step, int ranges of many values."""
    if isinstance(dist, FloatDistribution) and dist.step is None:
        return True, dist.log
    if isinstance(dist, IntDistribution) and (dist.high - dist.low) // dist.step + 1 > MAX_LEVELS:
        return True, dist.log
    return False, False


def binned(
    values: pd.Series,
    *,
    dist: BaseDistribution | None = None,
    max_levels: int = MAX_LEVELS,
    n_bins: int = N_BINS,
) -> pd.Series:
    """An ordered categorical for a parameter: bins for continuous ones, else its values.

    With a declared distribution (the sweep spec's), a float range is always binned between its
    bounds, on a log scale when it was drawn log-uniformly (an int range of many values likewise);
    without one, numbers taking more than `max_levels` values are binned (log when spanning 2 decades).
    """
    v = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    declared, log = _continuous(dist)
    if numeric and len(v) and (declared or v.nunique() > max_levels):
        lo, hi = (float(dist.low), float(dist.high)) if declared else (float(v.min()), float(v.max()))  # type: ignore[union-attr]
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
        log = log if declared else is_log_scale(v, 2.0)
        k = max(1, min(n_bins, int(v.nunique())))
        if hi > lo:
            edges = np.geomspace(lo, hi, k + 1) if log and lo > 0 else np.linspace(lo, hi, k + 1)
            labels = [f"{_fmt(a)}–{_fmt(b)}" for a, b in itertools.pairwise(edges)]
            cut = pd.cut(values.astype(float), edges, labels=labels, include_lowest=True)
            return pd.Series(cut, index=values.index, name=values.name)
    levels = sorted(v.unique(), key=lambda x: float(x) if numeric else str(x))
    labels = [_fmt(float(x)) if numeric else str(x) for x in levels]
    cat = pd.Categorical(
        [labels[levels.index(x)] if not is_missing(x) else None for x in values],
        categories=list(dict.fromkeys(labels)),
        ordered=True,
    )
    return pd.Series(cat, index=values.index, name=values.name)


def recovery_map_figure(
    trials: pd.DataFrame, x: str, y: str | None = None, dists: Mapping[str, BaseDistribution] | None = None
) -> Figure:
    """Heatmap of the recovered share of judged instances over two (binned) parameters, cells annotated k/n.

    Cells with fewer than `MIN_CELL` instances are hatched; the title says when the judged trials are few.
    """
    dists = dists or {}
    inst = instances(trials)
    inst["_x"] = binned(inst[x], dist=dists.get(short(x)))
    by = ["_x"]
    if y is not None:
        inst["_y"] = binned(inst[y], dist=dists.get(short(y)))
        by.append("_y")
    rates = rate_by(inst, by)
    if y is None:
        rates["_y"] = "all"
    rate = rates.pivot_table(index="_y", columns="_x", values="rate", observed=False, aggfunc="first")
    text = rates.pivot_table(index="_y", columns="_x", values="recovery", observed=False, aggfunc="first")
    count = rates.pivot_table(index="_y", columns="_x", values="n_judged", observed=False, aggfunc="first")
    rate = rate.iloc[::-1]  # larger y values on top
    text = text.reindex(index=rate.index, columns=rate.columns).fillna("")
    count = count.reindex(index=rate.index, columns=rate.columns).fillna(0)
    fig, axes = _new(w=1.0 + 0.9 * max(3, rate.shape[1]), h=1.4 + 0.6 * max(2, rate.shape[0]))
    ax = axes[0, 0]
    sns.heatmap(
        rate.astype(float),
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap="rocket",
        annot=text.to_numpy(),
        fmt="",
        linewidths=0.5,
        cbar_kws={"label": "recovered instances (share of judged)"},
    )
    for (i, j), n in np.ndenumerate(count.to_numpy()):
        if 0 < n < MIN_CELL:
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="///", edgecolor="0.6", lw=0))
    ax.set_xlabel(param_label(x))
    ax.set_ylabel(param_label(y) if y is not None else "")
    title = f"Recovery map: {short(x)}" + (f" × {short(y)}" if y is not None else "")
    n_trials = int(trials["judged"].sum())
    note = few_points_note(n_trials, "map")
    ax.set_title(f"{title}\n(cells: recovered/judged instances, all seeds; hatched: < {MIN_CELL}){note}")
    return fig


def parallel_figure(
    settings: pd.DataFrame, params: Sequence[str], dists: Mapping[str, BaseDistribution] | None = None
) -> Figure:
    """Parallel coordinates: one line per setting across its swept parameters, coloured by the share of its
    judged instances that recovered. Each axis spans the parameter's range (log where it was drawn log)."""
    dists = dists or {}
    df = settings[settings["n_instances"] > 0].reset_index(drop=True)
    axes_rows = []
    ticks: dict[str, tuple[str, str]] = {}
    for p in params:
        values = df[p]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric:
            v = values.astype(float)
            _, log = _continuous(dists.get(short(p)))
            log = log or is_log_scale(v, 2.0)
            t = np.log10(v) if log and (v > 0).all() else v
            lo, hi = float(t.min()), float(t.max())
            pos = (t - lo) / (hi - lo) if hi > lo else t * 0 + 0.5
            ticks[p] = (_fmt(float(v.min())), _fmt(float(v.max())))
        else:
            cats = sorted(values.astype(str).unique())
            pos = values.astype(str).map(
                {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
            )
            ticks[p] = (cats[0], cats[-1])
        axes_rows.append(
            pd.DataFrame({"setting": df.index, "parameter": short(p), "position": pos, "rate": df["rate"]})
        )
    long = pd.concat(axes_rows, ignore_index=True)
    fig, axes = _new(w=max(5.0, 1.8 * len(params) + 1.5), h=4.2)
    ax = axes[0, 0]
    sns.lineplot(
        long,
        x="parameter",
        y="position",
        hue="rate",
        units="setting",
        estimator=None,
        palette="viridis",
        hue_norm=(0.0, 1.0),
        sort=False,
        ax=ax,
        lw=1.4,
        alpha=0.85,
        legend=False,
    )
    for i, p in enumerate(params):
        ax.axvline(i, color="0.75", lw=0.8, zorder=0)
        low, high = ticks[p]
        ax.annotate(low, (i, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(high, (i, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="viridis")
    fig.colorbar(sm, ax=ax, label="recovered instances (share of judged)")
    ax.set_ylim(-0.08, 1.08)
    ax.set_yticks([])
    ax.set_xlabel("swept parameter (each axis from its smallest to its largest value)")
    ax.set_ylabel("position in the parameter's range")
    n_trials = int(df["n_judged"].sum())
    ax.set_title(f"Settings across their parameters ({len(df)} settings){few_points_note(n_trials, 'plot')}")
    return fig


def importance_figure(importances: pd.DataFrame, n_trials: int | None = None) -> Figure:
    """Horizontal bars of PED-ANOVA importances, one colour per target (recovery, objectives); the title
    says when they rest on fewer than `MIN_POINTS` judged trials (`n_trials`)."""
    df = importances.copy()
    df["parameter"] = df["param"].map(short)
    n = df["parameter"].nunique()
    fig, axes = _new(w=7.0, h=1.0 + 0.45 * n * max(1, df["target"].nunique()) ** 0.5)
    ax = axes[0, 0]
    sns.barplot(df, x="importance", y="parameter", hue="target", ax=ax, orient="h")
    ax.set_xlabel("importance (PED-ANOVA, normalised: sums to 1 per target)")
    ax.set_ylabel("parameter")
    ax.set_xlim(0, 1)
    note = few_points_note(n_trials, "ranking") if n_trials is not None else ""
    ax.set_title(f"Parameter importances{note}")
    return fig


def metrics_figure(
    trials: pd.DataFrame,
    metrics: Sequence[str],
    params: Sequence[str],
    thresholds: dict[str, float] | None = None,
) -> Figure:
    """Each ground-truth metric (columns) against each parameter (rows), coloured by outcome."""
    thresholds = thresholds or {}
    df, order = _outcome_str(trials[trials["status"] == "COMPLETE"])
    fig, axes = _new(len(params), len(metrics), w=3.8, h=3.2)
    last = len(metrics) - 1
    for i, param in enumerate(params):
        numeric = pd.api.types.is_numeric_dtype(df[param]) and not pd.api.types.is_bool_dtype(df[param])
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            data = df[[param, metric, "outcome"]].dropna(subset=[param, metric])
            style = {"hue": "outcome", "hue_order": order, "palette": _OUTCOME_COLORS, "ax": ax}
            if numeric:
                sns.scatterplot(data, x=param, y=metric, s=28, alpha=0.8, legend=(i, j) == (0, last), **style)
                if is_log_scale(data[param]):
                    ax.set_xscale("log")
            else:
                data = data.assign(**{param: data[param].astype(str)})
                sns.stripplot(data, x=param, y=metric, size=4, legend=(i, j) == (0, last), **style)
            if metric in thresholds:
                ax.axhline(thresholds[metric], ls="--", lw=1, color="grey")
            ax.set_xlabel(param_label(param))
            ax.set_ylabel(metric_label(metric))
            ax.set_title(f"{short(metric)} vs {short(param)}", fontsize=10)
    if axes[0, last].get_legend() is not None:
        sns.move_legend(axes[0, last], "upper left", bbox_to_anchor=(1.02, 1), title="outcome")
    fig.suptitle("Ground-truth metrics against parameters (completed trials; dashed line: verdict threshold)")
    return fig


def failure_figure(
    trials: pd.DataFrame, params: Sequence[str], dists: Mapping[str, BaseDistribution] | None = None
) -> Figure:
    """Instance counts of each outcome and failure mode over (binned) parameter values, side by side.

    Multi-label: an instance failing three checks counts under all three modes.
    """
    dists = dists or {}
    inst = instances(trials)
    inst["mode"] = [m if not ok else (RECOVERED,) for ok, m in zip(inst["success"], inst["modes"], strict=True)]
    long = inst.explode("mode")
    modes = [RECOVERED, *sorted(m for m in long["mode"].dropna().unique() if m != RECOVERED)]
    long["mode"] = pd.Categorical(long["mode"], categories=modes)
    palette = mode_palette(modes)
    fig, axes = _new(1, len(params), w=4.8, h=3.9)
    for j, param in enumerate(params):
        ax = axes[0, j]
        data = long.assign(_bin=binned(long[param], dist=dists.get(short(param)))).dropna(subset=["_bin"])
        sns.histplot(
            data,
            x="_bin",
            hue="mode",
            multiple="dodge",
            palette=palette,
            ax=ax,
            shrink=0.85,
            legend=(j == len(params) - 1),
            hue_order=modes,
        )
        ax.set_xlabel(param_label(param))
        ax.set_ylabel("instances (count)")
        ax.set_title(f"Outcome by {short(param)}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), title="outcome / failure mode")
    n_trials = int(trials["judged"].sum())
    fig.suptitle(
        "Failure modes of judged instances (an instance failing several checks counts under each)"
        + few_points_note(n_trials)
    )
    return fig


def learning_curves_figure(history: pd.DataFrame, trials: pd.DataFrame, losses: Sequence[str]) -> Figure:
    """Median (line) and interquartile band (shade) of each loss over steps, recovered vs the rest."""
    keyed = trials[["out", "trial_id", "outcome"]]
    df, hue_order = _outcome_str(history.merge(keyed, on=["out", "trial_id"], how="inner"))
    ncols = min(3, len(losses))
    nrows = math.ceil(len(losses) / ncols)
    fig, axes = _new(nrows, ncols, w=4.5, h=3.4)
    for k, loss in enumerate(losses):
        ax = axes[k // ncols, k % ncols]
        data = df[["step", loss, "outcome"]].dropna()
        data = data[data[loss] > 0]
        sns.lineplot(
            data,
            x="step",
            y=loss,
            hue="outcome",
            hue_order=hue_order,
            palette=_OUTCOME_COLORS,
            estimator="median",
            errorbar=("pi", 50),
            ax=ax,
            legend=(k == 0),
        )
        ax.set_yscale("log")
        ax.set_xlabel("step (optimiser updates)")
        ax.set_ylabel(f"{metric_label(loss)}, log scale")
        ax.set_title(loss, fontsize=10)
    for k in range(len(losses), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    fig.suptitle("Learning curves: median and interquartile range per outcome")
    return fig


def pareto_figure(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    objectives: Sequence[str],
    labels: Sequence[str],
) -> Figure:
    """The first two objectives of every completed trial, the Pareto-optimal ones ringed and joined."""
    x, y = objectives[0], objectives[1]
    df, order = _outcome_str(trials[trials["status"] == "COMPLETE"].dropna(subset=[x, y]))
    fig, axes = _new(w=6.0, h=4.5)
    ax = axes[0, 0]
    sns.scatterplot(df, x=x, y=y, hue="outcome", hue_order=order, palette=_OUTCOME_COLORS, ax=ax, s=30, alpha=0.8)
    f = front.sort_values(x)
    ax.plot(f[x], f[y], "o-", mfc="none", mec="black", color="black", lw=1, ms=9, label="Pareto front")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"objective 0: {labels[0]}")
    ax.set_ylabel(f"objective 1: {labels[1]}")
    ax.set_title(f"Pareto front: {len(front)} of {len(df)} completed trials")
    return fig
