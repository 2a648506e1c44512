"""Put a sweep's best TMS trials beside the papers' table (APD: MMCS 0.998 / ML2R 0.893 for 5-2, 0.996 / 0.935
for 40-10; SPD rows too).

    .venv/bin/python analysis/compare_paper.py out/tms-5-2 [OUT ...] [--share 0.9] [--min-seeds 3] [--markdown]

One block per (method, target) the papers report. Sweep rows hold MMCS/ML2R as the runs stored them
(means over model instances); the papers' ± is the std across features of one instance. The best
recovering setting shows its median over seeds, the range, and its recovered instances.
"""

from __future__ import annotations

import argparse
import sys

from apd.analysis import compare_with_paper, load_trials
from apd.analysis._markdown import table
from apd.errors import ApdError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compare_paper.py", description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", metavar="OUT", help="sweep output directories")
    parser.add_argument("--share", type=float, default=0.9, help="share of its judged instances a setting must recover")
    parser.add_argument("--min-seeds", type=int, default=3, help="seeds a setting needs to count")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    try:
        rows = compare_with_paper(load_trials(args.outs), share=args.share, min_seeds=args.min_seeds)
    except ApdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rows.empty:
        print("no TMS target the papers report (tms-5-2, tms-40-10, and their -id variants) in these sweeps")
        return 1
    print(table(rows) if args.markdown else rows.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
