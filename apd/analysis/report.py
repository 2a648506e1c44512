"""`apd analyze OUT [OUT ...]`: the report on which settings recover the ground truth.

Kept light (argparse only) because `apd`'s parser imports it on every command; the analysis stack
(pandas, seaborn, Optuna) loads when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_analyze_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `apd analyze` (namespace fields: outs, report_dir, share, min_seeds, eval)."""
    parser.add_argument("outs", nargs="+", metavar="OUT", help="sweep output directories (trials.parquet, ...)")
    parser.add_argument(
        "--out",
        dest="report_dir",
        default=None,
        metavar="REPORT_DIR",
        help="where to write report.md and its figures (default: FIRST_OUT/report)",
    )
    parser.add_argument(
        "--share",
        type=float,
        default=0.9,
        help="share of a setting's judged model instances that must recover (default 0.9)",
    )
    parser.add_argument("--min-seeds", type=int, default=3, help="seeds a setting needs to count (default 3)")
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="re-judge with another verdict threshold, e.g. mmcs_min=0.98; repeatable",
    )


def analyze_main(args: argparse.Namespace) -> int:
    """Entry point of `apd analyze`: writes the report and prints the answer."""
    from apd.analysis._report import analyze, write_report
    from apd.config import parse_overrides

    outs = list(args.outs)
    evals = parse_overrides(list(getattr(args, "eval", None) or []))
    analysis = analyze(
        outs,
        share=float(getattr(args, "share", 0.9)),
        min_seeds=int(getattr(args, "min_seeds", 3)),
        eval_cfg=evals or None,
    )
    report_dir = Path(args.report_dir) if args.report_dir else Path(outs[0]) / "report"
    path = write_report(analysis, report_dir)
    print(analysis.answer)
    print(f"wrote {path}")
    return 0


__all__ = ["add_analyze_args", "analyze_main"]
