"""Seaborn figures of a sweep: recovery maps, importances, metrics, failure modes, learning curves, Pareto front.

Every function takes frames and returns a matplotlib `Figure` (no pyplot state), titled, with
labelled axes; `save` writes it as PNG.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from apd.analysis._columns import is_missing, metric_label, param_label, short
from apd.analysis._outcomes import OUTCOMES, RECOVERED
from apd.analysis._settings import rate_by

MAX_LEVELS = 8
N_BINS = 5
_OUTCOME_COLORS = dict(zip(OUTCOMES, sns.color_palette("deep", len(OUTCOMES)), strict=True))
_OUTCOME_COLORS[RECOVERED] = sns.color_palette("deep")[2]
_OUTCOME_COLORS["not recovered"] = sns.color_palette("deep")[3]
_OUTCOME_COLORS["diverged"] = sns.color_palette("deep")[1]
_OUTCOME_COLORS["pruned"] = sns.color_palette("deep")[7]
_OUTCOME_COLORS["failed"] = sns.color_palette("deep")[5]
_OUTCOME_COLORS["running"] = sns.color_palette("deep")[0]


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


def binned(values: pd.Series, *, max_levels: int = MAX_LEVELS, n_bins: int = N_BINS) -> pd.Series:
    """An ordered categorical for a parameter: its values when few, else equal-width (or log) bins."""
    v = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric or v.nunique() <= max_levels:
        levels = sorted(v.unique(), key=lambda x: float(x) if numeric else str(x))
        labels = [_fmt(float(x)) if numeric else str(x) for x in levels]
        cat = pd.Categorical(
            [labels[levels.index(x)] if not is_missing(x) else None for x in values],
            categories=list(dict.fromkeys(labels)),
            ordered=True,
        )
        return pd.Series(cat, index=values.index, name=values.name)
    lo, hi = float(v.min()), float(v.max())
    edges = np.geomspace(lo, hi, n_bins + 1) if is_log_scale(v, 2.0) else np.linspace(lo, hi, n_bins + 1)
    labels = [f"{_fmt(a)}–{_fmt(b)}" for a, b in itertools.pairwise(edges)]
    cut = pd.cut(values.astype(float), edges, labels=labels, include_lowest=True)
    return pd.Series(cut, index=values.index, name=values.name)


def recovery_map_figure(trials: pd.DataFrame, x: str, y: str | None = None) -> Figure:
    """Heatmap of the recovered share of judged trials over two parameters, each cell annotated k/n."""
    df = trials[trials["judged"]].copy()
    df["_x"] = binned(df[x])
    by = ["_x"]
    if y is not None:
        df["_y"] = binned(df[y])
        by.append("_y")
    rates = rate_by(df, by)
    y_key = "_y" if y is not None else None
    if y_key is None:
        rates["_y"] = "all"
    rate = rates.pivot_table(index="_y", columns="_x", values="rate", observed=False, aggfunc="first")
    text = rates.pivot_table(index="_y", columns="_x", values="recovery", observed=False, aggfunc="first")
    rate = rate.iloc[::-1]  # larger y values on top
    text = text.reindex(index=rate.index, columns=rate.columns).fillna("")
    fig, axes = _new(w=1.0 + 0.9 * max(3, rate.shape[1]), h=1.2 + 0.6 * max(2, rate.shape[0]))
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
        cbar_kws={"label": "recovered trials (share of judged seeds)"},
    )
    ax.set_xlabel(param_label(x))
    ax.set_ylabel(param_label(y) if y is not None else "")
    title = f"Recovery map: {short(x)}" + (f" × {short(y)}" if y is not None else "")
    ax.set_title(f"{title}\n(cells: recovered/judged trials, all seeds)")
    return fig


def importance_figure(importances: pd.DataFrame) -> Figure:
    """Horizontal bars of PED-ANOVA importances, one colour per target (recovery, objectives)."""
    df = importances.copy()
    df["parameter"] = df["param"].map(short)
    n = df["parameter"].nunique()
    fig, axes = _new(w=7.0, h=1.0 + 0.45 * n * max(1, df["target"].nunique()) ** 0.5)
    ax = axes[0, 0]
    sns.barplot(df, x="importance", y="parameter", hue="target", ax=ax, orient="h")
    ax.set_xlabel("importance (PED-ANOVA, normalised: sums to 1 per target)")
    ax.set_ylabel("parameter")
    ax.set_xlim(0, 1)
    ax.set_title("Parameter importances")
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


def failure_figure(trials: pd.DataFrame, params: Sequence[str]) -> Figure:
    """Stacked counts of outcomes and failure modes over (binned) parameter values."""
    df = trials[trials["judged"]].copy()
    df["mode"] = df["failure_mode"].fillna(RECOVERED)
    modes = [RECOVERED, *sorted(m for m in df["mode"].unique() if m != RECOVERED)]
    df["mode"] = pd.Categorical(df["mode"], categories=modes)
    palette = dict(zip(modes, [sns.color_palette("deep")[2], *sns.color_palette("Set2", len(modes))], strict=False))
    fig, axes = _new(1, len(params), w=4.5, h=3.8)
    for j, param in enumerate(params):
        ax = axes[0, j]
        data = df.assign(_bin=binned(df[param])).dropna(subset=["_bin"])
        sns.histplot(
            data,
            x="_bin",
            hue="mode",
            multiple="stack",
            palette=palette,
            ax=ax,
            shrink=0.8,
            legend=(j == len(params) - 1),
            hue_order=modes,
        )
        ax.set_xlabel(param_label(param))
        ax.set_ylabel("trials (count)")
        ax.set_title(f"Outcome by {short(param)}", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30)
    if axes[0, -1].get_legend() is not None:
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), title="outcome / failure mode")
    fig.suptitle("Failure modes against top-k and loss coefficients (judged trials)")
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
