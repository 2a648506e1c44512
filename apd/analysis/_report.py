"""Which settings recover the ground truth, on how many seeds and instances, and why the rest fail.

`analyze` turns sweep outputs into an `Analysis`, one section per (method, target) with frames,
importances and answers; `write_report` renders it as `report.md` with PNG figures next to it.
What a target's family declares (its checks, metric columns, labels) drives the family-specific
parts; nothing here branches on a family.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from apd.analysis import _markdown as md
from apd.analysis import figures
from apd.analysis._answer import answer, best_trial, evidence, family_of, rerun_command, rule_phrase, target_label
from apd.analysis._columns import (
    METRIC,
    is_missing,
    param_columns,
    short,
    varying_params,
)
from apd.analysis._compare import Comparison, comparison_figure, comparisons
from apd.analysis._load import load_history, load_trials
from apd.analysis._optuna import (
    RECOVERY,
    Direction,
    importances_for_objectives,
    load_stored_study,
    pareto_front,
    ranked_params,
    recovery_importances,
    study_from_trials,
)
from apd.analysis._outcomes import CHECK, add_outcomes, failure_counts
from apd.analysis._settings import (
    DEFAULT_MIN_SEEDS,
    DEFAULT_SHARE,
    check_rule,
    format_rate,
    settings_table,
    with_setting_ids,
)
from apd.analysis._spec import SweepInfo, sweep_info
from apd.analysis._verdict import eval_config, rejudge
from apd.config import EvalConfig
from apd.errors import ConfigError

NOT_CURVES = ("out", "trial_id", "step", "lr")
"""History columns that are not a method's losses or diagnostics."""
MAX_MAPS = 3
MAX_PARAMS = 4
MAX_METRICS = 5


@dataclass
class ExperimentAnalysis:
    """Everything the report says about one (method, target) of the analysed sweeps."""

    method: str
    target: str
    label: str
    """`TMS 5-2 (tms-5-2) with APD`."""
    experiment: str
    """The experiments that decomposed this target with this method, comma-separated."""
    family: str | None
    trials: pd.DataFrame
    settings: pd.DataFrame
    importances: pd.DataFrame
    importance_note: str
    ranked: list[str]
    objectives: list[str]
    objective_names: list[str]
    directions: list[Direction]
    front: pd.DataFrame | None
    answer: str
    best: pd.Series | None
    rerun: str | None


@dataclass
class Analysis:
    outs: list[Path]
    trials: pd.DataFrame
    history: pd.DataFrame | None
    share: float
    min_seeds: int
    eval_cfg: EvalConfig
    rejudged: bool
    info: dict[str, SweepInfo] = field(default_factory=dict)
    """What each sweep output declared (objectives, fixed overrides), by output path."""
    experiments: list[ExperimentAnalysis] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    """Targets that several methods decomposed: the methods side by side (`apd.analysis._compare`)."""

    @property
    def answer(self) -> str:
        text = " ".join([*(e.answer for e in self.experiments), *(c.sentence() for c in self.comparisons)])
        return text or "The sweep output holds no trials."

    def trial(self, trial_id: str, sweep: str | None = None) -> pd.Series:
        """One trial's row (with outcome); `sweep` disambiguates ids that several sweeps share."""
        rows = self.trials[self.trials["trial_id"] == str(trial_id)]
        if sweep is not None:
            rows = rows[rows["sweep"] == sweep]
        if len(rows) != 1:
            found = "no" if rows.empty else f"{len(rows)} (pass sweep=)"
            raise ConfigError(f"trial {trial_id}: {found} matching trial in {', '.join(map(str, self.outs))}")
        return rows.iloc[0]

    def rerun(self, trial: pd.Series) -> str:
        """The `apd decompose ...` command that reruns `trial` exactly."""
        info = self.info[str(trial["out"])]
        return rerun_command(trial, info.fixed, seed_target=info.seed_target)


def analyze(
    outs: Sequence[str | Path],
    *,
    share: float = DEFAULT_SHARE,
    min_seeds: int = DEFAULT_MIN_SEEDS,
    eval_cfg: EvalConfig | Mapping[str, Any] | None = None,
) -> Analysis:
    """Load sweep outputs and work out recovery per setting, importances, Pareto fronts and the answers.

    With `eval_cfg`, trials are re-judged with those thresholds instead of the stored verdicts.
    """
    check_rule(share, min_seeds)
    paths = [Path(o) for o in outs]
    trials = load_trials(paths)
    ev = eval_config(eval_cfg)
    if eval_cfg is not None:
        trials = rejudge(trials, ev)
    trials = add_outcomes(with_setting_ids(trials), ev)
    info = {str(p): sweep_info(p, trials[trials["out"] == str(p)]) for p in paths}
    result = Analysis(paths, trials, load_history(paths), share, min_seeds, ev, eval_cfg is not None, info)
    for (method, target), group in trials.groupby(["method", "target"], sort=True, dropna=False):
        result.experiments.append(_group(str(method), str(target), group, info, share=share, min_seeds=min_seeds))
    result.comparisons = comparisons(result.experiments)
    return result


def _group(
    method: str, target: str, trials: pd.DataFrame, info: dict[str, SweepInfo], *, share: float, min_seeds: int
) -> ExperimentAnalysis:
    empty = [c for c in trials.columns if c.startswith(("param.", "metric.")) and trials[c].isna().all()]
    trials = trials.drop(columns=empty)  # parameters and metrics of other experiments
    settings = settings_table(trials, share=share, min_seeds=min_seeds)
    outs = trials["out"].unique().tolist()
    first = info[outs[0]]
    same = all(info[o].objective_names == first.objective_names for o in outs)
    objectives = first.objectives if same else []
    names, directions = (first.objective_names, first.directions) if same else ([], [])
    imp, note = _importances(trials, info, outs, objectives, names, directions, share)
    ranked = ranked_params(imp, fallback=varying_params(trials))
    front = pareto_front(trials, objectives, directions) if len(objectives) >= 2 else None
    best = best_trial(trials, settings, objectives, directions)
    rerun = None
    if best is not None:
        run_info = info[str(best["out"])]
        rerun = rerun_command(best, run_info.fixed, seed_target=run_info.seed_target)
    label = f"{target_label(trials)} with {method.upper()}"
    text = answer(label, trials, settings, ranked, share=share, min_seeds=min_seeds)
    family = family_of(trials)
    return ExperimentAnalysis(
        method,
        target,
        label,
        ", ".join(sorted(trials["experiment"].astype(str).unique())),
        family.kind if family is not None else None,
        trials,
        settings,
        imp,
        note,
        ranked,
        objectives,
        names,
        directions,
        front,
        text,
        best,
        rerun,
    )


def _importances(
    trials: pd.DataFrame,
    info: dict[str, SweepInfo],
    outs: list[str],
    objectives: list[str],
    names: list[str],
    directions: list[Direction],
    share: float,
) -> tuple[pd.DataFrame, str]:
    ranges = {k: v for o in outs for k, v in info[o].ranges.items()}
    parts = [recovery_importances(trials, ranges=ranges, share=share)]
    source = "the Parquet rows"
    if objectives:
        study = load_stored_study(outs[0]) if len(outs) == 1 else None
        if study is not None and len(study.directions) == len(objectives):
            source = f"the stored Optuna study ({Path(outs[0]).name}/{info[outs[0]].study_file})"
        else:
            study = study_from_trials(trials, values=objectives, directions=directions, ranges=ranges)
        parts.append(importances_for_objectives(study, names=names))
    imp = (
        pd.concat([p for p in parts if not p.empty], ignore_index=True) if any(not p.empty for p in parts) else parts[0]
    )
    if imp.empty:
        return imp, _why_no_importances(trials)
    why = (
        "; `recovery` is what separates the trials whose instances recover from the rest"
        if (imp["target"] == RECOVERY).any()
        else ""
    )
    n = int(trials["judged"].sum())
    few = (
        f" Only {n} judged trials: importances from so few points are mostly noise, a hint at most."
        if n < figures.MIN_POINTS
        else ""
    )
    return imp, f"Importances by PED-ANOVA (Optuna) on {source}{why}.{few}"


def _why_no_importances(trials: pd.DataFrame) -> str:
    done = int((trials["status"] == "COMPLETE").sum())
    if not varying_params(trials):
        return "No importances: no swept parameter takes more than one value."
    if done < 2:
        return f"No importances: they need at least 2 completed trials (got {done})."
    return "No importances: every judged trial had the same outcome and the sweep has no objective to rank by."


# ---------------------------------------------------------------------------------------------
# Report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "experiment"


class _Writer:
    """Collects Markdown lines and saves figures next to the report."""

    def __init__(self, report_dir: Path, prefix: str) -> None:
        self.dir, self.prefix = report_dir, prefix
        self.lines: list[str] = []
        self.figures: list[Path] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def figure(self, fig: Figure, name: str, alt: str) -> None:
        path = figures.save(fig, self.dir / f"{self.prefix}{name}.png")
        self.figures.append(path)
        self.add(md.image(path.name, alt), "")


def write_report(analysis: Analysis, report_dir: str | Path) -> Path:
    """Write `report.md` and its PNG figures into `report_dir`; returns the report path."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = analysis.trials["sweep"].astype(str).unique().tolist() or [p.resolve().name for p in analysis.outs]
    sweeps = ", ".join(sorted(names))
    w = _Writer(out, "")
    w.add(f"# Sweep analysis: {sweeps}", "", f"**Answer.** {analysis.answer}", "")
    _data_section(w, analysis)
    _comparison_section(w, analysis)
    multi = len(analysis.experiments) > 1
    for exp in analysis.experiments:
        w.prefix = f"{_slug(f'{exp.method}-{exp.target}')}-" if multi else ""
        h = "###" if multi else "##"
        if multi:
            w.add(f"## {exp.label}", "", f"**Answer.** {exp.answer}", "")
        _experiment_sections(w, exp, analysis, h)
    path = out / "report.md"
    path.write_text("\n".join(w.lines).rstrip() + "\n")
    return path


def _row_checks(row: pd.Series, ev: EvalConfig) -> list[str]:
    """The checks that judged one completed trial: its stored per-check verdicts, or (schema 1) those its
    stored metrics allow."""
    from apd.analysis._outcomes import row_metrics
    from apd.metrics.verdict import decide

    stored = [
        str(c)[len(METRIC) + len(CHECK) : -len("_per_instance")]
        for c, v in row.items()
        if str(c).startswith(f"{METRIC}{CHECK}") and isinstance(v, list | tuple | np.ndarray)
    ]
    if stored:
        return stored
    family = row.get("family") if isinstance(row.get("family"), str) else None
    return list(decide(row_metrics(row), ev, family=family, measured_only=True).checks)


def rule_lines(a: Analysis) -> list[str]:
    """One line per (method, target): its family's rules that judged its trials, with the thresholds in use."""
    from apd.metrics.verdict import rules

    lines = []
    for e in a.experiments:
        family = family_of(e.trials)
        if family is None:
            continue
        done = e.trials[e.trials["status"] == "COMPLETE"]
        names = {n for _, row in done.iterrows() for n in _row_checks(row, a.eval_cfg)}
        order = [c.name for c in family.checks]
        text = "; ".join(
            rules(
                family.kind,
                a.eval_cfg,
                sorted(names, key=lambda n: order.index(n) if n in order else len(order)) if names else None,
            )
        )
        lines.append(f"- {e.label}: {text}.")
    return lines


def _data_section(w: _Writer, a: Analysis) -> None:
    rows = []
    keys = ["sweep", "method", "target", "experiment"]
    for (sweep, method, target, experiment), g in a.trials.groupby(keys, sort=True, dropna=False):
        counts = g["status"].value_counts()
        judged = g[g["judged"]]
        rows.append(
            {
                "sweep": sweep,
                "method": method,
                "target": target,
                "experiment": experiment,
                "trials": len(g),
                "statuses": ", ".join(f"{k} {v}" for k, v in counts.items()),
                "settings": g["setting_id"].nunique(),
                "seeds per setting": _range_text(g.groupby("setting_id").size()),
                "recovered/judged instances": format_rate(
                    int(judged["n_recovered_instances"].sum()), int(judged["n_judged_instances"].sum())
                ),
            }
        )
    w.add("## Data and verdict rule", "", md.table(pd.DataFrame(rows)) if rows else "_No trials yet._", "")
    if len(a.experiments) > 1:
        w.add("Recovery by target and method (recovering settings; recovered/judged instances over judged seeds):", "")
        w.add(md.table(_comparison(a)), "")
    share = "every one" if a.share >= 1.0 else f"at least {a.share:.0%}"
    w.add(
        "Each (trial, model instance) is one judged replicate. A setting (same parameters, different seeds) "
        f"**recovers** when it has at least {a.min_seeds} judged seeds and {share} of its judged instances "
        "recovered (`--min-seeds`, `--share`). Judged seeds are COMPLETE, DIVERGED and PRUNED trials (every "
        "instance of the last two counts as failed); FAILED trials (errors) and RUNNING ones are counted apart.",
        "",
    )
    how = "re-judged from the stored metrics" if a.rejudged else "as stored by the runs, with these default thresholds"
    w.add(f"An instance is recovered when every rule of its target's family holds ({how}):", "", *rule_lines(a), "")
    if (a.trials.get("schema", pd.Series(dtype=object)) == "1").any():
        w.add(
            "Some results were written by schema version 1, before the weight checks existed: their instances are "
            "judged by the checks their stored metrics allow (the others are not counted as failures).",
            "",
        )


def _comparison_section(w: _Writer, a: Analysis) -> None:
    """Methods side by side on each target several of them decomposed."""
    if not a.comparisons:
        return
    w.add(
        "## Methods side by side",
        "",
        "Each method's swept parameter as a ratio to its centre (the experiment's value: the paper's setting for "
        "the shipped experiments), so search spaces of the same relative width compare like with like. "
        "Recovering settings: settings that recover under the rule below, of those judged; recovered instances: "
        "over every judged trial; recovering band: the widest run of adjacent swept values that all recover.",
        "",
    )
    for c in a.comparisons:
        w.add(f"**{c.label}.** {c.sentence()}", "", md.table(c.table()), "")
        w.prefix = f"compare-{_slug(c.target)}-"
        w.figure(
            comparison_figure(c), "recovery", f"recovery against the ratio to each method's paper value, {c.label}"
        )
    w.prefix = ""


def _comparison(a: Analysis) -> pd.DataFrame:
    table: dict[str, dict[str, str]] = {}
    for e in a.experiments:
        judged = e.settings[e.settings["n_judged"] > 0] if len(e.settings) else e.settings
        good = int(judged["recovers"].sum()) if len(judged) else 0
        cell = f"{good}/{len(judged)} settings; {evidence(e.trials)}"
        table.setdefault(target_label(e.trials), {})[e.method] = cell
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("target").reset_index().fillna("–")


def _range_text(sizes: pd.Series) -> str:
    if sizes.empty:
        return "–"
    lo, hi = int(sizes.min()), int(sizes.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _experiment_sections(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    _settings_section(w, e, a, h)
    _best_section(w, e, h)
    _map_section(w, e, a, h)
    _importance_section(w, e, h)
    _metrics_section(w, e, a, h)
    _failure_section(w, e, a, h)
    _curves_section(w, e, a, h)
    _pareto_section(w, e, h)


def _median_columns(e: ExperimentAnalysis) -> list[str]:
    family = family_of(e.trials)
    cols = [f"{METRIC}{c.key}" for c in (family.columns if family is not None else ()) if c.median]
    return [c for c in cols if c in e.trials.columns]


def _setting_rows(e: ExperimentAnalysis, rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    params = [c for c in param_columns(rows) if rows[c].notna().any()]
    key = _median_columns(e)
    df = rows.copy()
    for k in key:
        med = e.trials[e.trials["status"] == "COMPLETE"].groupby("setting_id")[k].median()
        df[f"median {short(k)}"] = df["setting_id"].map(med)
    other = ["n_failed"] if (rows["n_failed"] > 0).any() else []
    cols = ["setting_id", *params, "recovery", "trials_recovery", "seeds", *other, *[f"median {short(k)}" for k in key]]
    headers = [
        "setting",
        *[short(p) for p in params],
        "recovered/judged instances",
        "seeds with every instance recovered",
        "judged seeds",
        *(["FAILED (errors, not judged)"] if other else []),
        *[f"median {short(k)} (completed seeds)" for k in key],
    ]
    return df, cols, headers


def _settings_section(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    good = e.settings[e.settings["recovers"]] if len(e.settings) else e.settings
    w.add(f"{h} Settings that recover ({rule_phrase(a.share, a.min_seeds)})", "")
    if not good.empty:
        df, cols, headers = _setting_rows(e, good)
        w.add(md.table(df, cols, headers), "")
        return
    w.add("None. The closest settings (highest recovered share of instances, then most seeds):", "")
    judged = e.settings[e.settings["n_judged"] > 0] if len(e.settings) else e.settings
    if judged.empty:
        w.add("_No setting has a judged trial yet._", "")
        return
    df, cols, headers = _setting_rows(e, judged.head(5))
    w.add(md.table(df, cols, headers), "")


def _best_section(w: _Writer, e: ExperimentAnalysis, h: str) -> None:
    w.add(f"{h} Best trial", "")
    if e.best is None:
        w.add("_No trial completed, so there is no best trial._", "")
        return
    b = e.best
    fields = [("trial", b["trial_id"]), ("sweep", b["sweep"]), ("seed", b.get("seed")), ("outcome", b["outcome"])]
    fields += [("recovered instances", format_rate(int(b["n_recovered_instances"]), int(b["n_judged_instances"])))]
    fields += [(short(c), b[c]) for c in param_columns(b) if not is_missing(b[c])]
    fields += [(f"{n} (objective)", b[o]) for o, n in zip(e.objectives, e.objective_names, strict=True) if o in b.index]
    family = family_of(e.trials)
    keys = [*(c.key for c in (family.columns if family is not None else ())), "identity_error", "recovered"]
    keys = list(dict.fromkeys(keys))
    fields += [(k, b[f"{METRIC}{k}"]) for k in keys if f"{METRIC}{k}" in b.index and not is_missing(b[f"{METRIC}{k}"])]
    if b["failure_modes"]:
        fields.append(("failure modes of its instances", ", ".join(b["failure_modes"])))
    w.add(md.table(pd.DataFrame(fields, columns=["field", "value"])), "")
    w.add("Rerun it with:", "", "```bash", str(e.rerun), "```", "")


def _dists(a: Analysis, e: ExperimentAnalysis) -> dict[str, Any]:
    """The swept parameters' declared distributions (which are log-scaled) of the group's sweeps."""
    return {k: v for o in e.trials["out"].unique() for k, v in a.info[str(o)].ranges.items()}


def map_pairs(e: ExperimentAnalysis) -> list[tuple[str, str | None]]:
    """Parameter pairs of the recovery maps: the most important ones that vary among judged trials."""
    params = [p for p in e.ranked if p in varying_params(e.trials[e.trials["judged"]])][:3]
    pairs: list[tuple[str, str | None]] = []
    for i, x in enumerate(params):
        pairs += [(x, y) for y in params[i + 1 :]]
    if params and not pairs:
        pairs = [(params[0], None)]  # only one parameter varies: a one-row map
    return pairs[:MAX_MAPS]


def parallel_params(e: ExperimentAnalysis) -> list[str]:
    """Every swept parameter that varies among the judged settings, most important first."""
    judged = e.settings[e.settings["n_instances"] > 0] if len(e.settings) else e.settings
    varying = varying_params(judged) if len(judged) else []
    return [p for p in e.ranked if p in varying] + [p for p in varying if p not in e.ranked]


def _map_section(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    w.add(f"{h} Recovery map", "")
    pairs = map_pairs(e)
    if not pairs:
        w.add("_No swept parameter varies among the judged trials, so there is no map to draw._", "")
        return
    n = int(e.trials["judged"].sum())
    w.add(
        "Share of judged instances (all seeds) that recovered, over the most important parameter pairs; each cell "
        f"shows recovered/judged instances. Continuous parameters are binned (log bins where the sweep drew them "
        f"on a log scale); cells with fewer than {figures.MIN_CELL} instances are hatched."
        + (f" Only {n} judged trials: read the maps as anecdotes." if n < figures.MIN_POINTS else ""),
        "",
    )
    for k, (x, y) in enumerate(pairs):
        alt = f"recovery map {short(x)}" + (f" x {short(y)}" if y else "")
        w.figure(figures.recovery_map_figure(e.trials, x, y, _dists(a, e)), f"recovery-map-{k + 1}", alt)
    params = parallel_params(e)
    if len(params) >= 2:
        w.add("Every setting across its swept parameters, coloured by its share of recovered instances:", "")
        w.figure(figures.parallel_figure(e.settings, params, _dists(a, e)), "parallel", "parallel coordinates")


def _importance_section(w: _Writer, e: ExperimentAnalysis, h: str) -> None:
    w.add(f"{h} Parameter importances", "", e.importance_note, "")
    if e.importances.empty:
        return
    w.figure(figures.importance_figure(e.importances, int(e.trials["judged"].sum())), "importances", "importances")
    wide = e.importances.assign(param=e.importances["param"].map(short)).pivot_table(
        index="param", columns="target", values="importance", aggfunc="first"
    )
    wide = wide.reindex([short(p) for p in e.ranked if short(p) in wide.index]).reset_index()
    w.add(md.table(wide), "")


def _metric_list(e: ExperimentAnalysis) -> list[str]:
    family = family_of(e.trials)
    cols = [f"{METRIC}{c.key}" for c in (family.columns if family is not None else ())] or [f"{METRIC}identity_error"]
    return [c for c in cols if c in e.trials.columns and e.trials[c].notna().any()][:MAX_METRICS]


def metrics_plot(a: Analysis, e: ExperimentAnalysis) -> Figure | None:
    """Ground-truth metrics against the top parameters; None without completed trials, metrics or parameters."""
    metrics = _metric_list(e)
    params = [p for p in e.ranked if p in varying_params(e.trials)][:MAX_PARAMS]
    if not metrics or not params or not (e.trials["status"] == "COMPLETE").any():
        return None
    family = family_of(e.trials)
    thresholds: dict[str, float] = {}
    for column in family.columns if family is not None else ():
        value = column.threshold(a.eval_cfg) if column.threshold is not None else None
        if value is not None:
            thresholds[f"{METRIC}{column.key}"] = value
    return figures.metrics_figure(e.trials, metrics, params, thresholds)


def _metrics_section(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    w.add(f"{h} Ground-truth metrics against parameters", "")
    fig = metrics_plot(a, e)
    if fig is None:
        w.add("_Nothing to plot: this needs completed trials with ground-truth metrics and a varying parameter._", "")
        return
    w.figure(fig, "metrics", "metrics against parameters")


def failure_params(e: ExperimentAnalysis) -> list[str]:
    """Top-k and loss-coefficient parameters that vary (else the most important ones), for failure plots."""
    varying = varying_params(e.trials[e.trials["judged"]])
    knobs = [p for p in varying if short(p).rsplit(".", 1)[-1] == "topk" or p.endswith("_coeff")]
    return (knobs or [p for p in e.ranked if p in varying])[:MAX_PARAMS]


def _failure_section(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    w.add(f"{h} Failure modes", "")
    judged = e.trials[e.trials["judged"]]
    n_inst = int(judged["n_judged_instances"].sum())
    if len(judged) == 0:
        w.add("_No judged trials._", "")
        return
    counts = failure_counts(e.trials)
    n_rec = int(judged["n_recovered_instances"].sum())
    rows = [{"outcome / failure mode": "recovered", "instances": format_rate(n_rec, n_inst), "trials": ""}]
    rows += [
        {
            "outcome / failure mode": r["mode"],
            "instances": format_rate(int(r["instances"]), n_inst),
            "trials": format_rate(int(r["trials"]), len(judged)),
        }
        for _, r in counts.iterrows()
    ]
    other = e.trials[~e.trials["judged"]]["status"].value_counts()
    rows += [
        {"outcome / failure mode": f"not judged: {s}", "instances": "", "trials": str(int(k))} for s, k in other.items()
    ]
    w.add(
        "Judged instances by outcome. Multi-label: an instance failing several checks counts under each, so the "
        "modes add up to more than the failures; `trials` counts the judged trials with at least one such instance.",
        "",
        md.table(pd.DataFrame(rows)),
        "",
    )
    errors = e.trials.loc[e.trials["status"] == "FAILED", "error"] if "error" in e.trials.columns else pd.Series()
    if len(errors.dropna()):
        w.add(f"Most common error of FAILED trials: `{errors.dropna().astype(str).value_counts().index[0]}`", "")
    if counts.empty:
        w.add("_No judged instance failed._", "")
        return
    params = failure_params(e)
    if params:
        w.figure(figures.failure_figure(e.trials, params, _dists(a, e)), "failure-modes", "failure modes")
    for col, label in ((f"{METRIC}n_dead", "dead"), (f"{METRIC}n_duo", "duo"), (f"{METRIC}n_poly", "poly")):
        if col in e.trials.columns and e.trials[col].notna().any():
            s = e.trials.loc[e.trials["status"] == "COMPLETE", col].dropna()
            w.add(
                f"- {label} components per completed trial: median {s.median():g}, "
                f"range {s.min():g}–{s.max():g} (n = {len(s)})"
            )
    w.add("")


def curves_plot(a: Analysis, e: ExperimentAnalysis) -> Figure | None:
    """Learning curves of the group's trials by outcome; None without history records."""
    if a.history is None:
        return None
    hist = a.history.merge(e.trials[["out", "trial_id"]], on=["out", "trial_id"], how="inner")
    # whatever the trials' method recorded: its loss terms first, then its diagnostics
    recorded = [c for c in a.history.columns if c not in NOT_CURVES]
    ordered = sorted(recorded, key=lambda c: (c != "total_loss", not c.endswith("_loss")))
    losses = [c for c in ordered if pd.api.types.is_numeric_dtype(hist[c]) and (hist[c] > 0).any()][:6]
    if hist.empty or not losses:
        return None
    return figures.learning_curves_figure(hist, e.trials, losses)


def _curves_section(w: _Writer, e: ExperimentAnalysis, a: Analysis, h: str) -> None:
    w.add(f"{h} Learning curves", "")
    if a.history is None:
        w.add("_No history.parquet in the sweep output(s), so no learning curves._", "")
        return
    fig = curves_plot(a, e)
    if fig is None:
        w.add("_The history holds no loss records for these trials._", "")
        return
    w.figure(fig, "learning-curves", "learning curves")


def objective_labels(e: ExperimentAnalysis) -> list[str]:
    return [f"{n} ({d})" for n, d in zip(e.objective_names, e.directions, strict=True)]


def experiment_figures(a: Analysis, e: ExperimentAnalysis) -> dict[str, Figure]:
    """Every figure the report draws for one (method, target), by file stem (for notebooks)."""
    out: dict[str, Figure] = {}
    for k, (x, y) in enumerate(map_pairs(e)):
        out[f"recovery-map-{k + 1}"] = figures.recovery_map_figure(e.trials, x, y, _dists(a, e))
    if len(params := parallel_params(e)) >= 2:
        out["parallel"] = figures.parallel_figure(e.settings, params, _dists(a, e))
    if not e.importances.empty:
        out["importances"] = figures.importance_figure(e.importances, int(e.trials["judged"].sum()))
    if (fig := metrics_plot(a, e)) is not None:
        out["metrics"] = fig
    if not failure_counts(e.trials).empty and (params := failure_params(e)):
        out["failure-modes"] = figures.failure_figure(e.trials, params, _dists(a, e))
    if (fig := curves_plot(a, e)) is not None:
        out["learning-curves"] = fig
    if e.front is not None and not e.front.empty:
        out["pareto"] = figures.pareto_figure(e.trials, e.front, e.objectives, objective_labels(e))
    return out


def _pareto_section(w: _Writer, e: ExperimentAnalysis, h: str) -> None:
    w.add(f"{h} Pareto front", "")
    if e.front is None:
        kind = "single-objective" if len(e.objectives) == 1 else "objective-free"
        w.add(f"_This is a {kind} sweep, so there is no Pareto front._", "")
        return
    if e.front.empty:
        w.add("_No completed trial has finite values for every objective._", "")
        return
    labels = objective_labels(e)
    w.figure(figures.pareto_figure(e.trials, e.front, e.objectives, labels), "pareto", "Pareto front")
    cols = [
        "trial_id",
        "seed",
        *[p for p in param_columns(e.front) if e.front[p].notna().any()],
        *e.objectives,
        "outcome",
    ]
    headers = ["trial", "seed", *[short(p) for p in cols[2 : -len(e.objectives) - 1]], *labels, "outcome"]
    w.add(md.table(e.front, cols, headers), "")
