"""Where do real decompositions fall on the verdict's weight checks? Calibrates the `EvalConfig` defaults.

Runs `apd decompose` for every experiment x seed (several processes at once, one device), then
prints per experiment, for the instances the old rule accepted (MMCS >= 0.99, one-to-one, ML2R >=
0.8) and for the rest: the split share (second component's share of a feature), the worst matched
mechanism cosine and the norm-ratio range, and how many instances each verdict accepts.

    python bench/verdict_calibration.py --experiments tms-5-2 tms-40-10 --seeds 0 1 2 --out /tmp/calib
    python bench/verdict_calibration.py --summarize /tmp/calib            # again, from the run folders
    python bench/verdict_calibration.py --summarize /tmp/calib --reevaluate   # with this checkout's evaluate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

KEYS = ("split_share", "mechanism_cos", "mechanism_norm_min", "mechanism_norm_max")


def run_all(args: argparse.Namespace) -> None:
    from apd.config import load_config
    from apd.targets import train_target

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for exp in args.experiments:  # train each target once, before the runs share it
        cfg = load_config(exp)
        if cfg.target.name is not None:
            t0 = time.perf_counter()
            train_target(cfg.target.name, cfg.target.seed, progress=False, device=args.device)
            print(f"target {cfg.target.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    jobs = [(exp, seed) for exp in args.experiments for seed in args.seeds]
    running: list[tuple[str, subprocess.Popen[bytes], float]] = []
    while jobs or running:
        while jobs and len(running) < args.jobs:
            exp, seed = jobs.pop(0)
            folder = out / f"{exp}-s{seed}"
            sets = ["--set", f"seed={seed}", "--set", "eval.figures=false", "--set", f"device={args.device}"]
            if args.steps:
                sets += ["--set", f"steps={args.steps}"]
            cmd = [sys.executable, "-m", "apd.cli", "decompose", exp, *sets, "--out", str(folder), "--quiet"]
            running.append((folder.name, subprocess.Popen(cmd), time.perf_counter()))
        time.sleep(1)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                print(f"{name}: exit {proc.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
                running.remove(item)


def reevaluate(folder: Path) -> dict[str, Any]:
    """This checkout's metrics for a run folder's components (same target, same evaluation stream)."""
    import torch

    from apd.config import DecomposeConfig
    from apd.methods import method_of
    from apd.metrics import evaluate
    from apd.targets import load_target

    raw = __import__("yaml").safe_load((folder / "config.yaml").read_text())
    cfg = DecomposeConfig.from_dict({**raw, "device": "cpu"})
    loaded = load_target(cfg.target, "cpu")
    saved = torch.load(folder / "components.pt", map_location="cpu", weights_only=True)
    comps = method_of(cfg).load(cfg, loaded.model, saved["state_dict"], torch.device("cpu"))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    metrics, _ = evaluate(cfg, loaded.model, comps, sample=lambda n: loaded.sample(n, gen), labels=loaded.labels)
    return metrics


def summarize(root: Path, again: bool) -> None:
    rows: dict[str, list[tuple[bool, bool, dict[str, float]]]] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "metrics.json").is_file()):
        m = reevaluate(folder) if again else json.loads((folder / "metrics.json").read_text())
        if m.get("status", "finished") != "finished" or "mechanism_cos_per_instance" not in m:
            print(f"{folder.name}: {m.get('status')} {m.get('error') or ''}")
            continue
        exp = folder.name.rsplit("-s", 1)[0]
        for i, new in enumerate(m["recovered_per_instance"]):
            old = (
                m["mmcs_per_instance"][i] >= 0.99
                and m["ml2r_per_instance"][i] >= 0.8
                and m["n_distinct_per_instance"][i] == m["n_features"]
            )
            rows.setdefault(exp, []).append((old, bool(new), {k: m[f"{k}_per_instance"][i] for k in KEYS}))
    for exp, items in rows.items():
        n, old, new = len(items), sum(o for o, _, _ in items), sum(v for _, v, _ in items)
        print(f"\n## {exp}: old rule {old}/{n} instances, new verdict {new}/{n}")
        print("| instances | n | " + " | ".join(f"{k} min-max" for k in KEYS) + " |")
        print("|---|---|" + "---|" * len(KEYS))
        for label, keep in (("old rule accepts", True), ("old rule rejects", False)):
            sel = [v for o, _, v in items if o == keep]
            if sel:
                spans = [f"{min(v[k] for v in sel):.3f}-{max(v[k] for v in sel):.3f}" for k in KEYS]
                print(f"| {label} | {len(sel)} | " + " | ".join(spans) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=["tms-5-2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="override every experiment's steps")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="calibration")
    p.add_argument("--summarize", type=Path, default=None, help="only summarise the run folders in this directory")
    p.add_argument("--reevaluate", action="store_true", help="with --summarize: evaluate the components again")
    args = p.parse_args(argv)
    if args.summarize is None:
        run_all(args)
    summarize(args.summarize or Path(args.out), args.reevaluate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
