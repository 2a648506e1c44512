"""`apd status OUT [--watch]`: a sweep's progress read from OUT, for a sweep running elsewhere or done.

It reads `OUT/sweep.yaml`, `OUT/trials.parquet` (rewritten by the driver when a trial starts or
ends, and every 10 s while trials run), the lock file (whether a driver holds OUT, and which) and
the study's MLflow attributes. It writes nothing, and starts neither Ray nor MLflow.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from apd.errors import ConfigError
from apd.sweep.lock import holder_if_locked
from apd.sweep.outdir import SPEC_FILE
from apd.sweep.progress import counts_phrase, duration, eta, trial_phrase
from apd.sweep.spec import ValidatedSweep, load_spec

WATCH_EVERY_S = 5.0


def add_status_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="the sweep's output folder")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=WATCH_EVERY_S,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {WATCH_EVERY_S:g}) until no driver holds OUT",
    )


def status_main(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    if not (out / SPEC_FILE).is_file():
        raise ConfigError(f"{out}: no {SPEC_FILE}; not a sweep's output folder")
    sweep = load_spec(out / SPEC_FILE)
    every = getattr(args, "watch", None)
    tty = sys.stdout.isatty()
    while True:
        text, running = render(sweep, out)
        if every is not None and tty:
            sys.stdout.write("\x1b[H\x1b[J")  # redraw in place on a terminal only
        print(text, flush=True)
        if every is None or not running:
            return 0
        try:
            time.sleep(every)
        except KeyboardInterrupt:
            return 0
        if not tty:
            print()


def render(sweep: ValidatedSweep, out: Path) -> tuple[str, bool]:
    """The status text, and whether a driver holds OUT."""
    from apd.sweep.results import TRIALS_FILE, read_table

    lines = [f"sweep {sweep.name} ({out})"]
    holder = holder_if_locked(out)
    if holder is not None:
        lines.append(f"driver: running, {holder.describe().removeprefix('the sweep driver ')} (holds OUT/.lock)")
    else:
        lines.append("driver: none (no sweep driver holds OUT)")
    path = out / TRIALS_FILE
    rows: list[dict[str, Any]] = []
    updated = None
    if path.is_file():
        try:
            updated = path.stat().st_mtime
            rows = read_table(path).to_pylist()
        except Exception as e:
            lines.append(f"{path}: unreadable ({type(e).__name__}); apd sweep --resume rebuilds it")
    statuses = Counter(r["status"] for r in rows)
    running = [r for r in rows if r["status"] == "RUNNING"]
    done = len(rows) - len(running)
    lines.append("trials: " + counts_phrase(done, sweep.total_trials, statuses, len(running)))
    now = time.time()
    for r in sorted(running, key=lambda r: r["trial_id"]):
        lines.append("  " + _running_phrase(sweep, r, updated, now))
    if running and holder is None:
        lines.append(f"  (no driver: these were interrupted; continue with apd sweep --resume --out {out})")
    best = _best(sweep, rows)
    if best:
        lines.append(best)
    if updated is not None:
        lines.append(f"results: {path} (written {duration(now - updated)} ago)")
    lines += _links(sweep, out)
    if holder is None and done < sweep.total_trials:
        lines.append(f"unfinished: continue with apd sweep --resume --out {out}")
    return "\n".join(lines), holder is not None


def _running_phrase(sweep: ValidatedSweep, row: dict[str, Any], updated: float | None, now: float) -> str:
    steps = int(row.get("steps_done") or 0)
    total = _steps(sweep, row)
    start = row.get("start_time")
    elapsed = now - start.timestamp() if isinstance(start, datetime) else 0.0
    left = None
    if isinstance(start, datetime) and updated is not None:
        # the pace up to the file's last write, counted on from then
        at_write = eta(steps, total, updated - start.timestamp())
        left = None if at_write is None else max(0.0, at_write - (now - updated))
    text = trial_phrase(row["trial_id"], steps, total, elapsed, left)
    return text + (f", node {row['node'][:12]}" if row.get("node") else "")


def _steps(sweep: ValidatedSweep, row: dict[str, Any]) -> int | None:
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.") and v is not None}
    try:
        return int(sweep.config_dict(params, int(row["seed"])).get("steps") or 0) or None
    except Exception:
        return None


def _best(sweep: ValidatedSweep, rows: list[dict[str, Any]]) -> str | None:
    if sweep.spec.multi_objective:
        return None
    obj = sweep.spec.objective[0]
    scored = [r for r in rows if r["status"] == "COMPLETE" and r.get("objective") is not None]
    if not scored:
        return None
    pick = min if obj.mode == "min" else max
    best = pick(scored, key=lambda r: r["objective"])
    return f"best: {obj.metric}={best['objective']:.4g} ({best['trial_id']}, setting {best['setting_id']})"


def _links(sweep: ValidatedSweep, out: Path) -> list[str]:
    lines = []
    if (out / "mlflow.db").is_file():
        lines.append(f"MLflow: mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}")
    elif sweep.spec.tracking.uri:
        lines.append(f"MLflow: {sweep.spec.tracking.uri}")
    if (out / "optuna.db").is_file():
        lines.append(f"Optuna: optuna-dashboard sqlite:///{out / 'optuna.db'}")
    return lines
