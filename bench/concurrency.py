"""Aggregate training steps per second of N concurrent APD trials sharing one device.

Emulates a sweep that packs several small trials on one GPU with fractional resources
(`{"gpu": 1/N}` in Ray Tune): N plain processes run the fast APD step of a bench case (default
TMS 5-2, batch 2048; the body of `apd.decompose`'s loop) on the same device, start timing
together after a warm-up and run for `--seconds`. `--memory-fraction` also caps each process at
1/N of the GPU's memory (`torch.cuda.set_per_process_memory_fraction`), as a fractional trial
would be. The aggregate is the sum over processes of steps / elapsed.

    python bench/concurrency.py --device cuda --procs 1,2,4,8 --seconds 30 --memory-fraction --json
    python bench/concurrency.py --device cpu --procs 1,2 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from step_speed import CASES, N_BATCHES, setup


def trial(rank: int, case: str, device: str, overrides: dict[str, Any], fraction: float | None,
          threads: int, seconds: float, barrier: Any, results: Any) -> None:  # fmt: skip
    import torch

    torch.set_num_threads(threads)
    if fraction is not None and device.startswith("cuda"):
        torch.cuda.set_per_process_memory_fraction(fraction)
    s = setup(case, "fast", device, overrides)
    for i in range(3):  # warm-up
        s.step(s.batches[i % N_BATCHES])
    s.sync()
    barrier.wait()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        s.step(s.batches[n % N_BATCHES])
        n += 1
        if n % 10 == 0:
            s.sync()  # keep the host from running far ahead of the device
    s.sync()
    results.put((rank, n, time.perf_counter() - t0))


def measure(n_procs: int, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    fraction = 1.0 / n_procs if args.memory_fraction else None
    procs = [
        ctx.Process(
            target=trial,
            args=(r, args.config, args.device, overrides, fraction, args.threads, args.seconds, barrier, results),
        )
        for r in range(n_procs)
    ]
    for p in procs:
        p.start()
    rows = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"error: a trial process exited with {p.exitcode}")
    rates = [n / elapsed for _, n, elapsed in rows]
    return {"processes": n_procs, "aggregate_steps_per_s": sum(rates), "per_process_steps_per_s": rates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:1 (default cpu)")
    p.add_argument("--config", default="tms-5-2", choices=list(CASES), help="bench case (default tms-5-2)")
    p.add_argument("--procs", default="1,2,4", help="comma-separated numbers of concurrent trials")
    p.add_argument("--seconds", type=float, default=20.0, help="timed duration per trial")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    p.add_argument("--memory-fraction", action="store_true", help="cap each process at 1/N of the GPU memory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)

    from apd.config import parse_overrides

    overrides = parse_overrides(args.set)
    out = {}
    for n in (int(v) for v in args.procs.split(",")):
        r = measure(n, args, overrides)
        if r["processes"] > 1 and "1" in out:
            r["scaling_vs_1"] = r["aggregate_steps_per_s"] / out["1"]["aggregate_steps_per_s"]
        out[str(n)] = r
        if not args.json:
            per = ", ".join(f"{v:.3g}" for v in r["per_process_steps_per_s"])
            print(f"{n:3d} trials: {r['aggregate_steps_per_s']:8.3g} steps/s in all ({per})", flush=True)
    if args.json:
        print(json.dumps({"config": args.config, "device": args.device, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
