"""Write the analysis notebooks (`recovery.ipynb`, `trial.ipynb`) with nbformat, outputs cleared.

The notebooks are thin over `apd.analysis`; this script is their source of truth, so regenerate them
after an edit here:

    .venv/bin/python analysis/make_notebooks.py

Both take their inputs from a first cell tagged `parameters` (papermill-style) that reads
environment variables, e.g. `APD_RESULTS=out/tms-5-2 jupyter lab analysis/recovery.ipynb`. The kernel
runs in `analysis/`, so relative paths are resolved from where jupyter was started (`$PWD`) or the
repository root (`apd.analysis.resolve_results`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _params(source: str) -> nbformat.NotebookNode:
    return new_code_cell(source.strip(), metadata={"tags": ["parameters"]})


def _code(source: str) -> nbformat.NotebookNode:
    return new_code_cell(source.strip())


def _md(source: str) -> nbformat.NotebookNode:
    return new_markdown_cell(source.strip())


def recovery_notebook() -> nbformat.NotebookNode:
    cells = [
        _md("""
# Which settings recover the ground truth, how reliably, and why

Loads one or several sweep outputs (`OUT/trials.parquet`, `history.parquet`, `sweep.yaml`) and answers
the recovery question with `apd.analysis` — the same analysis as `apd analyze OUT`, one section per
method and target. Every (trial, model instance) is one judged replicate. A setting (same parameters,
different seeds) *recovers* when it has at least `MIN_SEEDS` judged seeds and the verdict holds on at
least `SHARE` of its judged instances. Counts are always shown as recovered/judged.
"""),
        _params("""
import os

RESULTS = os.environ.get("APD_RESULTS", "out/tms-5-2")  # sweep output folder(s), comma-separated; relative to
# where jupyter was started or the repository root
SHARE = float(os.environ.get("APD_SHARE", "0.9"))  # share of a setting's judged instances that must recover
MIN_SEEDS = int(os.environ.get("APD_MIN_SEEDS", "3"))  # seeds a setting needs to count
EVAL = os.environ.get("APD_EVAL", "")  # re-judge with other thresholds, e.g. "mmcs_min=0.999,ml2r_min=0.85"
"""),
        _code("""
%matplotlib inline
import pandas as pd
from IPython.display import Markdown, display

from apd.analysis import analyze, compare_with_paper, experiment_figures, failure_counts, resolve_results
from apd.config import parse_overrides

outs = resolve_results(RESULTS)
print("sweeps:", ", ".join(map(str, outs)))
analysis = analyze(outs, share=SHARE, min_seeds=MIN_SEEDS)
display(Markdown(f"**Answer.** {analysis.answer}"))
"""),
        _md("## Settings, best first"),
        _code("""
for e in analysis.experiments:
    good = int(e.settings["recovers"].sum()) if len(e.settings) else 0
    display(Markdown(f"### {e.label}: {good} of {len(e.settings)} settings recover"))
    cols = [c for c in e.settings.columns if c.startswith("param.")]
    shown = ["setting_id", *cols, "recovery", "trials_recovery", "seeds", "n_failed", "recovers"]
    display(e.settings[shown].rename(columns={"recovery": "instances", "trials_recovery": "seeds, all"}).head(20))
"""),
        _md("## Best trial and the command that reruns it"),
        _code("""
for e in analysis.experiments:
    if e.best is None:
        print(f"{e.label}: no completed trial")
        continue
    b = e.best
    rec = f"{b['n_recovered_instances']}/{b['n_judged_instances']} instances"
    print(f"{e.label}: trial {b['trial_id']} (seed {b['seed']}, {b['outcome']}, {rec})")
    print("  " + analysis.rerun(b))
"""),
        _md("""
## Figures

Recovery maps (share of instances, binned parameters) over the most important parameter pairs, the
settings in parallel coordinates, importances (PED-ANOVA), metrics against parameters, failure modes
against top-k and the loss coefficients, learning curves by outcome and, for multi-objective sweeps,
the Pareto front.
"""),
        _code("""
for e in analysis.experiments:
    print(e.importance_note)
    figs = experiment_figures(analysis, e)
    if not figs:
        print(f"{e.label}: nothing to plot")
    for fig in figs.values():
        display(fig)
"""),
        _md("""
## Failure modes (judged instances)

Multi-label: an instance failing several checks of its family's verdict counts under each.
"""),
        _code("""
for e in analysis.experiments:
    n = int(e.trials["n_judged_instances"].sum())
    counts = failure_counts(e.trials)
    display(Markdown(f"### {e.label}: {int(e.trials['n_recovered_instances'].sum())}/{n} instances recovered"))
    display(counts.assign(instances=[f"{k}/{n}" for k in counts["instances"]]) if len(counts) else "no failures")
"""),
        _md("## Re-judged with other thresholds (`EVAL`)"),
        _code("""
if EVAL:
    overrides = parse_overrides([kv for kv in EVAL.split(",") if kv.strip()])
    strict = analyze(outs, share=SHARE, min_seeds=MIN_SEEDS, eval_cfg=overrides)
    display(Markdown(f"With {overrides}: {strict.answer}"))
else:
    print("EVAL is empty: the stored verdicts are used")
"""),
        _md("## Against the papers' TMS table"),
        _code("""
table = compare_with_paper(analysis.trials, share=SHARE, min_seeds=MIN_SEEDS)
display(table if len(table) else Markdown("_No TMS target the papers report in these sweeps._"))
"""),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})


def trial_notebook() -> nbformat.NotebookNode:
    cells = [
        _md("""
# One trial, in depth

The paper's views for one trial of a sweep: its metrics, learning curves, the figures its run wrote
(`OUT/trials/<id>/figures`), and the same figures redrawn from `components.pt` with `apd.figures`.
Leave `TRIAL` empty for the sweep's best trial.
"""),
        _params("""
import os

RESULTS = os.environ.get("APD_RESULTS", "out/tms-5-2")  # the sweep output folder (relative to where jupyter
# was started or the repository root)
TRIAL = os.environ.get("APD_TRIAL", "")  # a trial id such as t0003; empty: the best trial
RERENDER = os.environ.get("APD_RERENDER", "1") == "1"  # redraw the figures from components.pt
DEVICE = os.environ.get("APD_DEVICE", "cpu")
"""),
        _code("""
%matplotlib inline
import tempfile

import pandas as pd
from IPython.display import Image, Markdown, display

from apd.analysis import analyze, load_trial, resolve_results, trial_dir
from apd.analysis.figures import learning_curves_figure
from apd.analysis.trial import rerender

out = resolve_results(RESULTS)[0]
print("sweep:", out)
analysis = analyze([out], min_seeds=1)
if not TRIAL:
    best = next((e.best for e in analysis.experiments if e.best is not None), None)
    if best is None:
        raise SystemExit(f"{out}: no completed trial to show")
    TRIAL = str(best["trial_id"])
row = analysis.trial(TRIAL)
modes = ", ".join(row["failure_modes"])
display(Markdown(f"**Trial {TRIAL}** of {row['sweep']} ({row['experiment']}, seed {row['seed']}): {row['outcome']}, "
                 f"{row['n_recovered_instances']}/{row['n_judged_instances']} instances recovered"
                 + (f"; failure modes: {modes}" if modes else "")))
print(analysis.rerun(row))
"""),
        _md("## Parameters and metrics"),
        _code("""
art = load_trial(trial_dir(out, TRIAL, analysis.trials))
params = {c.removeprefix("param."): row[c] for c in row.index if c.startswith("param.")}
display(pd.Series(params, name="value", dtype=object).to_frame())
display(pd.Series(art.scalar_metrics(), name="value", dtype=object).to_frame())
per_instance = {k: v for k, v in art.metrics.items() if k.endswith("_per_instance")}
if per_instance:
    display(pd.DataFrame(per_instance).rename_axis("instance"))
"""),
        _md("## Learning curves"),
        _code("""
hist = analysis.history
mine = None if hist is None else hist[(hist["trial_id"] == TRIAL) & (hist["out"] == row["out"])]
if mine is None or mine.empty:
    print("no history recorded for this trial")
else:
    losses = [c for c in ("total_loss", "faithfulness_loss", "topk_recon_loss", "act_recon_loss",
                          "schatten_loss", "mean_active") if c in mine.columns and (mine[c] > 0).any()]
    display(learning_curves_figure(mine, analysis.trials[analysis.trials["trial_id"] == TRIAL], losses))
"""),
        _md("## Figures the run wrote"),
        _code("""
if not art.figures:
    print(f"{art.dir}: the run wrote no figures")
for path in art.figures:
    display(Markdown(f"`{path.name}`"))
    display(Image(filename=str(path)))
"""),
        _md("## Redrawn from the stored components (`apd.figures`)"),
        _code("""
if not RERENDER:
    print("RERENDER is off")
elif art.components is None or art.config is None:
    print(f"{art.dir}: re-rendering needs config.yaml and components.pt (not in this run folder)")
else:
    for path in rerender(art, tempfile.mkdtemp(prefix="apd-trial-"), device=DEVICE):
        display(Markdown(f"`{path.name}`"))
        display(Image(filename=str(path)))
"""),
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})


NOTEBOOKS = {"recovery.ipynb": recovery_notebook, "trial.ipynb": trial_notebook}


def write_all(folder: Path = HERE) -> list[Path]:
    paths = []
    for name, build in NOTEBOOKS.items():
        nb = build()
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{Path(name).stem}-{i}"  # stable ids: regenerating changes nothing
        nbformat.validate(nb)
        path = folder / name
        nbformat.write(nb, path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p}")
