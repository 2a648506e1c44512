"""Per-run figures (docs/method.md): the drawing functions, and `make_figures`, which draws the identity
pattern of every run and asks the target's family for its own (`Family.figures`).

Figures are built with `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot state), so
plotting never touches a GUI backend and leaks no open figures in long sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from apd.methods.base import Decomposition
from apd.targets.base import Target

if TYPE_CHECKING:
    from apd.metrics.suite import EvalArtifacts

MAX_INSTANCES = 3
"""Instances drawn per figure type (the first ones)."""
MAX_COMPONENT_PANELS = 10
N_CONTRIB_FEATURES = 10
LAYER_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _feature_colors(n: int) -> list[Any]:
    cmap = colormaps["tab10" if n <= 10 else "turbo"]
    return [cmap(j if n <= 10 else j / max(n - 1, 1)) for j in range(n)]


# ---------------------------------------------------------------------------------------------
# TMS


def _projection(W: np.ndarray) -> tuple[np.ndarray, str]:
    """`(h, 2)` map to the plane: identity for 2-D hidden, else the target's top-2 right singular vectors."""
    if W.shape[-1] == 2:
        return np.eye(2), "hidden dim"
    _, _, vh = np.linalg.svd(W, full_matrices=False)
    return vh[:2].T, "target's singular direction"


def _shown_components(P: np.ndarray, match: np.ndarray) -> list[int]:
    """All components if few; else the matched ones, then the largest by Frobenius norm."""
    C = P.shape[0]
    if C <= MAX_COMPONENT_PANELS:
        return list(range(C))
    matched = list(dict.fromkeys(int(c) for c in match))
    by_norm = [int(c) for c in np.argsort(-np.linalg.norm(P.reshape(C, -1), axis=-1)) if c not in matched]
    return (matched + by_norm)[:MAX_COMPONENT_PANELS]


def _arrows(ax: Axes, vecs: np.ndarray, colors: list[Any], lim: float, title: str, axis_name: str) -> None:
    for j, v in enumerate(vecs):
        if np.linalg.norm(v) > 1e-9 * lim:
            ax.annotate(
                "", xy=(v[0], v[1]), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": colors[j], "lw": 1.6}
            )
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.85", lw=0.6, zorder=0)
    ax.axvline(0, color="0.85", lw=0.6, zorder=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"{axis_name} 1 (weight)", fontsize=8)
    ax.set_ylabel(f"{axis_name} 2 (weight)", fontsize=8)
    ax.tick_params(labelsize=7)


def tms_weight_figure(W: np.ndarray, P: np.ndarray, match: np.ndarray, title: str, path: Path) -> Path:
    """Arrows of each feature's weight vector (row of `linear1`) for target, sum and components.

    `W (f, h)`, `P (C, f, h)`, `match (f,)` = each feature's best-cosine component.
    """
    proj, axis_name = _projection(W)
    n_f, C = W.shape[0], P.shape[0]
    shown = _shown_components(P, match)
    panels = [("target", W @ proj), ("sum of components", P.sum(0) @ proj)]
    for c in shown:
        feats = [j for j in range(n_f) if match[j] == c]
        label = f"component {c}" + (
            f" (best for {', '.join(map(str, feats[:6]))}{'...' if len(feats) > 6 else ''})" if feats else ""
        )
        panels.append((label, P[c] @ proj))
    lim = 1.15 * max(float(np.abs(v).max()) for _, v in panels) or 1.0
    nrows = math.ceil(len(panels) / 6)
    ncols = math.ceil(len(panels) / nrows)
    fig = Figure(figsize=(2.7 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = _feature_colors(n_f)
    for ax, (label, vecs) in zip(axes, panels, strict=False):
        _arrows(ax, vecs, colors, lim, label, axis_name)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if n_f <= 10:
        handles = [axes[0].plot([], [], color=colors[j], lw=2, label=f"feature {j}")[0] for j in range(n_f)]
        fig.legend(handles=handles, loc="outside right center", fontsize=8)
    note = "" if W.shape[-1] == 2 else f"; {W.shape[-1]}-D hidden projected on the target's top-2 singular directions"
    more = f"; {len(shown)} of {C} components shown" if len(shown) < C else ""
    fig.suptitle(f"{title}{note}{more}", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Any target


def identity_figure(matrix: np.ndarray, assignment: np.ndarray, tol: float, title: str, path: Path) -> Path:
    """Heatmap of one-hot attributions `(f, C)` (rows / row max), columns in Hungarian-matched order."""
    matched = [int(c) for c in assignment if c >= 0]
    rest = [c for c in np.argsort(-matrix.max(axis=0), kind="stable") if c not in set(matched)]
    order = matched + [int(c) for c in rest]
    mat = matrix[:, order]
    diag = np.array([matrix[f, c] if c >= 0 else 0.0 for f, c in enumerate(assignment)])
    off = int((matrix > tol).sum() - (diag > tol).sum())
    miss = int((diag < 1 - tol).sum())
    return _feature_heatmap(
        mat,
        order,
        "importance / row max",
        "component (matched to features first, then by max importance)",
        f"{title}\noff-diagonal > {tol:g}: {off}, diagonal < {1 - tol:g}: {miss}, error {off + miss}",
        path,
    )


def _feature_heatmap(mat: np.ndarray, order: list[int], value: str, xlabel: str, title: str, path: Path) -> Path:
    """A `(features, components)` heatmap in [0, 1], columns already in `order` (their labels)."""
    n_f, C = mat.shape
    fig = Figure(figsize=(min(max(6.5, 3 + 0.12 * C), 16), min(max(4.5, 2 + 0.12 * n_f), 12)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=value)
    if C <= 40:
        ax.set_xticks(range(C), [str(c) for c in order], fontsize=7, rotation=90)
    if n_f <= 40:
        ax.set_yticks(range(n_f), [str(f) for f in range(n_f)], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("feature (one-hot input x_f = 1)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def ci_matrix_figure(matrix: np.ndarray, title: str, path: Path) -> Path:
    """Heatmap of raw one-hot importances `(f, C)` clipped to [0, 1], columns in greedy order: for each
    feature in turn its largest not yet placed column, then the rest by index (the SPD paper's CI matrices)."""
    n_f, C = matrix.shape
    order: list[int] = []
    for f in range(n_f):
        free = [c for c in np.argsort(-matrix[f], kind="stable") if c not in order]
        if free:
            order.append(int(free[0]))
    order += [c for c in range(C) if c not in order]
    return _feature_heatmap(
        np.clip(matrix[:, order], 0, 1),
        order,
        "importance",
        "component (greedy order: each feature's largest first)",
        title,
        path,
    )


# ---------------------------------------------------------------------------------------------
# Residual MLP


def contributions_figure(
    contrib_target: np.ndarray,
    contrib_best: np.ndarray,
    best: np.ndarray,
    neuron_layer: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """Neuron contributions of the first features: target (top) and best component (bottom).

    `contrib_target, contrib_best (f, N)`, `best (f,)`, `neuron_layer (N,)` (paper figure 5): each
    feature is a group of N bars, one per neuron, coloured by layer.
    """
    n_show = min(N_CONTRIB_FEATURES, contrib_target.shape[0])
    N = contrib_target.shape[1]
    gap = max(2, N // 5)
    x = np.arange(n_show)[:, None] * (N + gap) + np.arange(N)[None, :]  # (features, neurons)
    colors = np.array([LAYER_COLORS[int(k) % len(LAYER_COLORS)] for k in neuron_layer] * n_show)
    fig = Figure(figsize=(min(max(7.0, 1.5 + 0.06 * x.size), 18), 5.5), layout="constrained")
    axes = fig.subplots(2, 1)
    rows = (("target", contrib_target), ("best component c*(f)", contrib_best))
    for ax, (name, contrib) in zip(axes, rows, strict=True):
        vals = contrib[:n_show]
        ax.bar(x.ravel(), vals.ravel(), color=colors, width=1.0)
        for f, n in zip(*np.nonzero(vals > 0.1), strict=True):  # label the neurons that matter
            ax.annotate(str(n), (x[f, n], vals[f, n]), fontsize=6, ha="center", va="bottom")
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_ylabel(f"{name}\ncontribution", fontsize=9)
    centers = x.mean(axis=1)
    for ax in axes:
        ax.set_xlim(-gap, x.max() + gap)
    axes[0].set_title("target: (W_E W_in)[f, n] * (W_out W_U)[n, f] per neuron n", fontsize=9)
    axes[1].set_title("component c*(f) = argmax_c max_n contribution_c[f, n]", fontsize=9)
    axes[1].set_xticks(centers, [f"f {f}\nc* {int(best[f])}" for f in range(n_show)], fontsize=8)
    axes[0].set_xticks(centers, [f"f {f}" for f in range(n_show)], fontsize=8)
    axes[1].set_xlabel(f"feature f (a group of {N} bars, one per neuron, coloured by layer)")
    if neuron_layer.max() > 0:
        handles = [
            Patch(color=LAYER_COLORS[k % len(LAYER_COLORS)], label=f"layer {k}")
            for k in range(int(neuron_layer.max()) + 1)
        ]
        axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def contribution_scatter_figure(
    contrib_target: np.ndarray,
    contrib_best: np.ndarray,
    neuron_layer: np.ndarray,
    r: float,
    slope: float,
    title: str,
    path: Path,
) -> Path:
    """Each (feature, neuron): the target's contribution (x) against the best subcomponent's (y),
    coloured by layer, with the diagonal and the fit (the SPD paper's scatter).

    `contrib_target, contrib_best (f, N)`, `neuron_layer (N,)`.
    """
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for k in range(int(neuron_layer.max()) + 1):
        cols = neuron_layer == k
        ax.scatter(
            contrib_target[:, cols].ravel(),
            contrib_best[:, cols].ravel(),
            s=6,
            alpha=0.6,
            color=LAYER_COLORS[k % len(LAYER_COLORS)],
            label=f"layer {k}",
        )
    lo = float(min(contrib_target.min(), contrib_best.min(), 0.0))
    hi = float(max(contrib_target.max(), contrib_best.max(), 1e-6))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("target: neuron contribution")
    ax.set_ylabel("best W_in subcomponent c*(l, f): neuron contribution")
    ax.set_title(f"Pearson r {r:.3f}, slope through 0 {slope:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def scrub_figure(losses: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Log-x histograms of per-sample MSE vs the target output, dashed means (paper figure 7).

    `losses` holds `scrubbed`, `anti_scrubbed`, and optionally `mono_baseline` (grey line) and
    `zero` (sets the range), each `(samples,)`.
    """
    lo = 1e-7
    hi = max(float(np.max(v)) for v in losses.values())
    hi = max(hi, lo * 10)
    bins = np.logspace(np.log10(lo), np.log10(hi), 50)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    omitted = []
    for key, color in (("scrubbed", "tab:blue"), ("anti_scrubbed", "tab:red")):
        v = losses[key]
        mean = float(v.mean())
        ax.hist(
            v,
            bins=bins.tolist(),
            histtype="step",
            color=color,
            lw=1.5,
            label=f"{key.replace('_', '-')} (mean {mean:.3g})",
        )
        ax.axvline(mean, color=color, ls="--", lw=1.2)
        omitted.append(int((v < lo).sum()))
    if "mono_baseline" in losses:
        mean = float(losses["mono_baseline"].mean())
        ax.axvline(mean, color="0.5", lw=1.5, label=f"monosemantic baseline mean ({mean:.3g})")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi * 1.5)  # a mean below the range is left out of the axes, not of the legend
    ax.set_xlabel("MSE vs target output per sample (log scale)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    ax.set_title(
        f"{title}\n(samples below {lo:g} not shown: scrubbed {omitted[0]}, anti-scrubbed {omitted[1]})", fontsize=10
    )
    return _save(fig, path)


def per_feature_figure(
    mse_target: np.ndarray,
    mse_top1: np.ndarray,
    norm: np.ndarray,
    threshold: float,
    title: str,
    path: Path,
) -> Path:
    """Per-feature MSE vs labels (target, APD top-1), sorted by target MSE, and the normalised ratio.

    All `(f,)`; `norm` = top-1 MSE vs target output / target MSE vs labels (paper figure 9).
    """
    n_f = mse_target.shape[0]
    order = np.argsort(np.nan_to_num(mse_target, nan=np.inf), kind="stable")
    x = np.arange(n_f)
    fig = Figure(figsize=(max(6, 0.12 * n_f + 3), 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(x - 0.2, mse_target[order], width=0.4, color="tab:gray", label="target vs labels")
    top.bar(x + 0.2, mse_top1[order], width=0.4, color="tab:orange", label="APD top-1 vs labels")
    top.set_ylabel("MSE vs labels")
    top.legend(fontsize=8)
    bottom.bar(x, norm[order], color="tab:purple", width=0.8)
    bottom.axhline(threshold, color="k", ls="--", lw=1, label=f"verdict threshold on the median ({threshold:g})")
    median = float(np.nanmedian(norm)) if np.isfinite(norm).any() else float("nan")
    bottom.axhline(median, color="tab:purple", ls=":", lw=1, label=f"median ({median:.3g})")
    bottom.set_yscale("symlog", linthresh=1e-3)
    top_value = np.nanmax(norm) if np.isfinite(norm).any() else threshold
    bottom.set_ylim(0, 2 * max(threshold, float(top_value)))
    bottom.set_ylabel("top-1 MSE vs target /\ntarget MSE vs labels")
    bottom.set_xlabel("feature (sorted by target MSE)")
    bottom.legend(fontsize=8)
    if n_f <= 40:
        bottom.set_xticks(x, [str(f) for f in order], fontsize=7)
    missing = int(np.isnan(mse_target).sum())
    note = f"; {missing} features without such samples left blank" if missing else ""
    fig.suptitle(f"{title} (samples with exactly one active feature{note})", fontsize=10)
    return _save(fig, path)


def categories_figure(features_per_component: np.ndarray, cutoff: float, title: str, path: Path) -> Path:
    """Bar chart of dead / mono / duo / poly components at the contribution cutoff."""
    n = features_per_component
    counts = [(n == 0).sum(), (n == 1).sum(), (n == 2).sum(), (n > 2).sum()]
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(["dead (0)", "mono (1)", "duo (2)", "poly (>2)"], counts, color="tab:blue")
    ax.bar_label(bars, fontsize=8)
    ax.set_xlabel("features represented (max neuron contribution > cutoff)")
    ax.set_ylabel("components")
    ax.set_title(f"{title}\ncutoff {cutoff:g}, {len(n)} components", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------


def fmt_metric(metrics: Mapping[str, Any], key: str, i: int | None = None, spec: str = ".3f") -> str:
    """A stored metric for a title (instance `i` of a per-instance list); `n/a` when missing or None."""
    value = metrics.get(key)
    if i is not None:
        value = value[i] if isinstance(value, list | tuple) and i < len(value) else None
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def make_figures(
    target: Target,
    components: Decomposition,
    metrics: dict[str, Any],
    artifacts: EvalArtifacts,
    out_dir: Path,
) -> list[Path]:
    """The identity pattern of each scored group, then the family's own figures, for the first instances."""
    from apd.targets.registry import family_of_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = min(target.n_instances, MAX_INSTANCES)
    family = family_of_model(target)
    paths: list[Path] = []
    for group, pattern in artifacts.identity.items():
        size = components.group_sizes[group]
        name = "" if len(artifacts.identity) == 1 else f"_{group}"
        of = "" if len(artifacts.identity) == 1 else f" of group {group}"
        for i in range(n):
            tag = f"instance {i}" if target.n_instances > 1 else "run"
            paths.append(
                identity_figure(
                    pattern.matrix[i],
                    pattern.assignment[i],
                    artifacts.identity_tol,
                    f"{family.label} {tag}: one-hot importance pattern{of} ({size} components)",
                    out_dir / f"identity_pattern{name}_inst{i}.png",
                )
            )
    for group, matrix in artifacts.onehot.items():  # components grouped per matrix: every matrix's importances
        for i in range(n):
            tag = f"instance {i}" if target.n_instances > 1 else "run"
            paths.append(
                ci_matrix_figure(
                    matrix[i],
                    f"{family.label} {tag}: {artifacts.importance_name}s of {group} on one-hot inputs",
                    out_dir / f"ci_{group}_inst{i}.png",
                )
            )
    return paths + family.figures(target, components, metrics, artifacts.family, out_dir, n)
