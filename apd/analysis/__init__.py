"""Analysis of sweep outputs: which settings recover the ground truth, how reliably, and why.

Names load lazily (pandas, seaborn and Optuna take seconds to import, and `apd`'s CLI parser
imports `apd.analysis.report` on every command).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_trials": "apd.analysis._load",
    "load_history": "apd.analysis._load",
    "load_spec": "apd.analysis._load",
    "resolve_results": "apd.analysis._load",
    "add_outcomes": "apd.analysis._outcomes",
    "instances": "apd.analysis._outcomes",
    "failure_counts": "apd.analysis._outcomes",
    "with_setting_ids": "apd.analysis._settings",
    "settings_table": "apd.analysis._settings",
    "recovering_settings": "apd.analysis._settings",
    "rate_by": "apd.analysis._settings",
    "format_rate": "apd.analysis._settings",
    "rejudge": "apd.analysis._verdict",
    "study_from_trials": "apd.analysis._optuna",
    "load_stored_study": "apd.analysis._optuna",
    "recovery_importances": "apd.analysis._optuna",
    "importances_for_objectives": "apd.analysis._optuna",
    "pareto_front": "apd.analysis._optuna",
    "best_trial": "apd.analysis._answer",
    "rerun_command": "apd.analysis._answer",
    "Analysis": "apd.analysis._report",
    "ExperimentAnalysis": "apd.analysis._report",
    "analyze": "apd.analysis._report",
    "write_report": "apd.analysis._report",
    "experiment_figures": "apd.analysis._report",
    "TrialArtifacts": "apd.analysis.trial",
    "load_trial": "apd.analysis.trial",
    "trial_dir": "apd.analysis.trial",
    "compare_with_paper": "apd.analysis.paper",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from apd.analysis._answer import best_trial as best_trial
    from apd.analysis._answer import rerun_command as rerun_command
    from apd.analysis._load import load_history as load_history
    from apd.analysis._load import load_spec as load_spec
    from apd.analysis._load import load_trials as load_trials
    from apd.analysis._load import resolve_results as resolve_results
    from apd.analysis._optuna import importances_for_objectives as importances_for_objectives
    from apd.analysis._optuna import load_stored_study as load_stored_study
    from apd.analysis._optuna import pareto_front as pareto_front
    from apd.analysis._optuna import recovery_importances as recovery_importances
    from apd.analysis._optuna import study_from_trials as study_from_trials
    from apd.analysis._outcomes import add_outcomes as add_outcomes
    from apd.analysis._outcomes import failure_counts as failure_counts
    from apd.analysis._outcomes import instances as instances
    from apd.analysis._report import Analysis as Analysis
    from apd.analysis._report import ExperimentAnalysis as ExperimentAnalysis
    from apd.analysis._report import analyze as analyze
    from apd.analysis._report import experiment_figures as experiment_figures
    from apd.analysis._report import write_report as write_report
    from apd.analysis._settings import format_rate as format_rate
    from apd.analysis._settings import rate_by as rate_by
    from apd.analysis._settings import recovering_settings as recovering_settings
    from apd.analysis._settings import settings_table as settings_table
    from apd.analysis._settings import with_setting_ids as with_setting_ids
    from apd.analysis._verdict import rejudge as rejudge
    from apd.analysis.paper import compare_with_paper as compare_with_paper
    from apd.analysis.trial import TrialArtifacts as TrialArtifacts
    from apd.analysis.trial import load_trial as load_trial
    from apd.analysis.trial import trial_dir as trial_dir


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'apd.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
