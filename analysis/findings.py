"""Regenerate docs/findings/ from sweep outputs: each sweep's report and figures, and recommended.yaml.

    python analysis/findings.py OUT [OUT ...] [--dest docs/findings] [--min-seeds 3]

For every OUT, `apd analyze`'s report (Markdown and PNG figures) goes to DEST/<sweep name>/. Then
DEST/recommended.yaml gets, for each sweep (and each method x experiment in it) with judged trials,
its best setting: the `--set` overrides that reproduce it (the sweep's fixed overrides and
the swept values), its instance recovery rate with counts, and the seeds it was judged on. A setting
needs at least `--min-seeds` judged seeds to be recommended. Entries of experiments not among OUTs are
kept, so sweeps can be added one at a time.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from apd.analysis import analyze, write_report
from apd.analysis._columns import is_missing, param_columns, short, yaml_value


def best_setting(settings: Any, min_seeds: int) -> Any | None:
    """The setting with the highest instance recovery rate among those with >= min_seeds judged seeds."""
    enough = settings[settings["n_judged"] >= min_seeds]
    if enough.empty:
        return None
    return enough.sort_values(["rate", "n_instances"], ascending=False).iloc[0]


def recommendation(row: Any, fixed: dict[str, Any], experiment: str, sweep: str) -> dict[str, Any]:
    overrides = {k: v for k, v in fixed.items() if k != "eval.figures"}
    for col in param_columns(row):
        if not is_missing(row[col]):
            value = row[col]
            overrides[short(col)] = value.item() if hasattr(value, "item") else value
    rate = float(row["rate"])
    return {
        "experiment": experiment,
        "sweep": sweep,
        "overrides": {k: yaml.safe_load(yaml_value(v)) for k, v in overrides.items()},
        "instance_recovery_rate": round(rate, 4) if math.isfinite(rate) else None,
        "recovered_instances": str(row["recovery"]),
        "seeds_with_every_instance": str(row["trials_recovery"]),
        "seeds": [int(s) for s in row["seeds"]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", help="sweep output folders")
    parser.add_argument("--dest", default="docs/findings")
    parser.add_argument("--min-seeds", type=int, default=3)
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    rec_path = dest / "recommended.yaml"
    recommended: dict[str, Any] = yaml.safe_load(rec_path.read_text()) if rec_path.is_file() else {}
    recommended = recommended or {}
    for out in map(Path, args.outs):
        a = analyze([out], min_seeds=args.min_seeds)
        sweep = str(a.trials["sweep"].iloc[0]) if len(a.trials) else out.name
        report = write_report(a, dest / sweep)
        print(f"{out}: {report}")
        info = a.info[str(out)]
        for e in a.experiments:
            row = best_setting(e.settings, args.min_seeds)
            if row is None:
                continue
            experiment = str(e.trials["experiment"].iloc[0])
            key = sweep if len(a.experiments) == 1 else f"{sweep}/{e.method}/{experiment}"
            recommended[key] = {"method": e.method, **recommendation(row, info.fixed, experiment, sweep)}
            print(f"  {key}: {recommended[key]['recovered_instances']} instances, {recommended[key]['overrides']}")
    header = (
        "# Best settings found by the published sweeps (docs/findings.md), one entry per sweep:\n"
        "# apd decompose EXPERIMENT --set KEY=VALUE ... for each override, on any seed. Written by\n"
        "# analysis/findings.py; the rate is the share of judged model instances that recovered.\n"
    )
    rec_path.write_text(header + yaml.safe_dump(recommended, sort_keys=True))
    print(f"wrote {rec_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
