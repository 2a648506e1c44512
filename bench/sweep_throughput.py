"""Sweep throughput: settings per hour of a small TMS 5-2 sweep, packed (`pack: K`) and unpacked.

The sweep: the paper's TMS 5-2 setting (`apd/experiments/tms-5-2.yaml`: batch 2048, 12 instances)
shortened to `--steps`, with top-k, lr and the simplicity coefficient drawn around the paper's
values, `--settings` of them (default 16), each with its own seed. Both sides run the same
settings on the same device in one process tree, one after the other (`--repeats 2`: A B B A),
and each setting's time includes its evaluation, as in a sweep trial.

Modes:

* `direct` (default): the pack runner and the solo runner (`apd.run.run_pack`,
  `apd.run.run_decomposition`) without any sweep machinery: needs torch, pydantic, PyYAML and
  tqdm only, no Ray, Optuna or MLflow. `--procs P` splits the settings over P processes sharing
  the device (the unpacked baseline of several trials per GPU, without Ray).
* `sweep`: real sweeps through `apd sweep` (`--engine inline|ray`, `--no-tracking`), the same
  parameter ranges drawn by Optuna's random sampler. `--gpus-per-trial F` gives each Ray trial
  (a pack, or an unpacked trial) a fraction F of a GPU, so 1/F of them share it.

    python bench/sweep_throughput.py                                  # CPU, direct, pack 16
    python bench/sweep_throughput.py --device cuda --pack 16 --json
    python bench/sweep_throughput.py --device cuda --procs 4          # 4 unpacked processes per GPU
    python bench/sweep_throughput.py --mode sweep --engine ray --device cuda --gpus-per-trial 0.25 --pack 8

`--json` prints `{"tms-5-2": {"packed_settings_per_hour": ..., "unpacked_settings_per_hour": ...,
"pack": K, ...}}`. Figures and the machine they came from go in `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXPERIMENT = "tms-5-2"
RANGES = {"topk": (0.15, 0.3), "lr": (0.01, 0.1), "schatten_coeff": (0.5, 1.5)}
"""Swept around the paper's topk 0.211, lr 0.03 and simplicity 0.7 (lr log-uniform)."""


def settings(n: int, steps: int, device: str) -> list[dict[str, Any]]:
    """`n` dotted-override sets: a drawn point each, seed i, evaluation without figures."""
    rng = random.Random(0)
    out = []
    for i in range(n):
        lo, hi = RANGES["lr"]
        out.append(
            {
                "topk": round(rng.uniform(*RANGES["topk"]), 4),
                "lr": round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 5),
                "schatten_coeff": round(rng.uniform(*RANGES["schatten_coeff"]), 3),
                "seed": i,
                "steps": steps,
                "device": device,
                "log_every": max(1, steps // 4),
                "eval.figures": False,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# direct mode


def _run_share(overrides: list[dict[str, Any]], pack: int, threads: int) -> None:
    """Run these settings alone (pack 1) or in packs of `pack`, in this process."""
    import torch

    from apd.config import load_config
    from apd.run import run_decomposition, run_pack

    torch.set_num_threads(threads)
    cfgs = [load_config(EXPERIMENT, o) for o in overrides]
    if pack == 1:
        for cfg in cfgs:
            run_decomposition(cfg, None, progress=False)
        return
    for start in range(0, len(cfgs), pack):
        run_pack(cfgs[start : start + pack], None, progress=False)


def run_direct(overrides: list[dict[str, Any]], pack: int, procs: int, threads: int) -> float:
    """Wall seconds to run every setting, split over `procs` processes (1: in this process)."""
    start = time.perf_counter()
    if procs == 1:
        _run_share(overrides, pack, threads)
    else:
        ctx = mp.get_context("spawn")
        workers = [ctx.Process(target=_run_share, args=(overrides[r::procs], pack, threads)) for r in range(procs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            if w.exitcode != 0:
                raise SystemExit(f"a benchmark process failed (exit {w.exitcode})")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# sweep mode


def sweep_spec(n: int, steps: int, device: str, pack: int, gpus: float) -> dict[str, Any]:
    lo, hi = RANGES["lr"]
    return {
        "name": f"throughput-pack{pack}",
        "experiment": EXPERIMENT,
        "fixed": {"steps": steps, "device": device, "eval.figures": False},
        "report_every": max(1, steps // 4),
        "parameters": {
            "topk": {"type": "uniform", "low": RANGES["topk"][0], "high": RANGES["topk"][1]},
            "lr": {"type": "loguniform", "low": lo, "high": hi},
            "schatten_coeff": {"type": "uniform", "low": 0.5, "high": 1.5},
        },
        "seeds": [0, 1],
        "search": {"algorithm": "random", "n_trials": max(1, n // 2), "seed": 0},
        "objective": {"metric": "mmcs", "mode": "max"},
        "pack": pack,
        "resources": {"cpus": 1, "gpus": gpus},
    }


def run_sweep(spec: dict[str, Any], engine: str, tracking: bool, root: Path) -> float:
    import yaml

    from apd.sweep.runner import sweep_main

    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = root / spec["name"]
    args = argparse.Namespace(
        spec=str(path),
        out=str(out),
        address=None,
        engine=engine,
        trials=None,
        resume=False,
        tracking_uri=None,
        no_tracking=not tracking,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the sweep's progress lines; stdout is the result
        code = sweep_main(args)
    if code != 0:
        raise SystemExit(f"sweep {spec['name']} exited {code}")
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("direct", "sweep"), default="direct")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    parser.add_argument("--settings", type=int, default=16, help="settings to train per side (default 16)")
    parser.add_argument("--steps", type=int, default=200, help="decomposition steps per setting (default 200)")
    parser.add_argument("--pack", type=int, default=None, help="pack size K (default: all settings in one pack)")
    parser.add_argument("--procs", type=int, default=1, help="direct mode: processes sharing the device")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="2: run unpacked, packed, packed, unpacked")
    parser.add_argument("--engine", choices=("inline", "ray"), default="inline", help="sweep mode engine")
    parser.add_argument("--no-tracking", action="store_true", help="sweep mode: no MLflow")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="sweep mode, ray: resources.gpus")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    pack = args.pack or args.settings
    overrides = settings(args.settings, args.steps, args.device)

    from apd.config import load_config
    from apd.device import resolve_device
    from apd.targets import load_target

    device = resolve_device(args.device)
    load_target(load_config(EXPERIMENT, overrides[0]).target, device)  # train or find it before timing
    _run_share([overrides[0] | {"steps": 2}], 1, args.threads)  # imports and lazy inits, untimed

    seconds = {1: 0.0, pack: 0.0}
    order = [1, pack] if args.repeats == 1 else [1, pack, pack, 1] * (args.repeats // 2)
    with tempfile.TemporaryDirectory(prefix="apd-throughput-") as tmp:
        for i, k in enumerate(order):
            if args.mode == "direct":
                seconds[k] += run_direct(overrides, k, args.procs, args.threads)
            else:
                spec = sweep_spec(args.settings, args.steps, args.device, k, args.gpus_per_trial)
                spec["name"] += f"-{i}"
                seconds[k] += run_sweep(spec, args.engine, not args.no_tracking, Path(tmp))
            print(f"pack {k}: {seconds[k]:.1f} s so far", file=sys.stderr)
    runs = order.count(pack)
    per_hour = {k: 3600 * args.settings * runs / s for k, s in seconds.items()}
    result = {
        EXPERIMENT: {
            "packed_settings_per_hour": round(per_hour[pack], 1),
            "unpacked_settings_per_hour": round(per_hour[1], 1),
            "pack": pack,
            "ratio": round(per_hour[pack] / per_hour[1], 3),
            "device": str(device),
            "mode": args.mode if args.mode == "direct" else f"sweep-{args.engine}",
            "settings": args.settings,
            "steps": args.steps,
            "procs": args.procs,
        }
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        r = result[EXPERIMENT]
        print(f"{EXPERIMENT}: {args.settings} settings x {args.steps} steps on {device} ({r['mode']})")
        print(f"unpacked: {r['unpacked_settings_per_hour']:.0f} settings/h")
        print(f"packed (K={pack}): {r['packed_settings_per_hour']:.0f} settings/h")
        print(f"packed / unpacked: {r['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
