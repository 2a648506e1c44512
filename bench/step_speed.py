"""Training steps per second and peak memory of the fast and the naive (reference) step of APD and SPD.

Cases (`--configs`), each named after its experiment config. APD: `tms-5-2` and `tms-40-10` (batch
2048), `resid-mlp-1` (batch 2048, the paper's setting), `resid-mlp-1-code` (batch 256, the reference
code's yaml), `resid-mlp-2` (batch 2048). SPD (the paper's batch sizes): `spd-tms-5-2`,
`spd-tms-5-2-id`, `spd-tms-40-10` (batch 4096; the registered targets' 12 or 3 instances),
`spd-tms-5-2-1inst` (one instance, as the authors' code trains it), `spd-resid-mlp-1`,
`spd-resid-mlp-2` (batch 2048) and `spd-resid-mlp-3` (not in the default set: its naive step takes
seconds). Each uses its experiment config's settings and fast-step switches (so APD's `compile:
auto` compiles, as a run of the config's length would), a freshly initialised target of the
experiment's architecture (trained weights do not matter for speed) and sparse input batches from
the target's data distribution. A timed step is the whole training step of `apd.decompose` through
the method: its before-step hook (APD: unit-norm), loss, backward, after-backward hook (APD:
gradient projection), AdamW.

Speed: both implementations run in one subprocess per (case, threads), in alternating timed
windows (each >= `--window-s` seconds, `--windows` of each, the order flipping every round), so
the machine's background load hits both alike; steps/s is the median over windows after a
warm-up (which includes any compilation), and `speedup` is fast / naive. `cpu_steps_per_s` uses
the process's CPU time instead of wall time. Both implementations start from the same components
and first compute the loss on the same batch: `losses_match` says whether every term agrees
(rel 1e-4; APD's fast step omits the unused `out_recon_loss`; SPD's fast step computes this one
loss with `zero_rows: keep`, so both draw the same masks).

Peak memory, from a separate short subprocess per implementation (so neither sees the other's
allocations): CPU = growth of the process's peak RSS (`ru_maxrss`) over its RSS before the first
step (torch's allocations are invisible to tracemalloc); CUDA = `max_memory_allocated` over the
allocation before the first step.

    python bench/step_speed.py                          # all cases, CPU, 1 thread, a table
    python bench/step_speed.py --threads 1,2 --json     # keys get a -t1 / -t2 suffix
    python bench/step_speed.py --device cuda --json --out gpu.json
    python bench/step_speed.py --ab compile=true        # fast step with/without a switch, interleaved
    python bench/step_speed.py --profile --configs tms-5-2   # torch.profiler top ops of each implementation
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CASES: dict[str, tuple[str, int, int | None]] = {
    "tms-5-2": ("tms-5-2", 2048, None),
    "tms-40-10": ("tms-40-10", 2048, None),
    "resid-mlp-1": ("resid-mlp-1", 2048, None),
    "resid-mlp-1-code": ("resid-mlp-1-code", 256, None),
    "resid-mlp-2": ("resid-mlp-2", 2048, None),
    "spd-tms-5-2": ("spd-tms-5-2", 4096, None),
    "spd-tms-5-2-1inst": ("spd-tms-5-2", 4096, 1),
    "spd-tms-5-2-id": ("spd-tms-5-2-id", 4096, None),
    "spd-tms-40-10": ("spd-tms-40-10", 4096, None),
    "spd-resid-mlp-1": ("spd-resid-mlp-1", 2048, None),
    "spd-resid-mlp-2": ("spd-resid-mlp-2", 2048, None),
    "spd-resid-mlp-3": ("spd-resid-mlp-3", 2048, None),
}
"""Bench name -> (experiment config, batch size, instances: None = the registered target's)."""
DEFAULT_CASES = [case for case in CASES if case != "spd-resid-mlp-3"]
IMPLEMENTATIONS = ("fast", "naive")
N_BATCHES = 4
"""Distinct input batches cycled through by the timed steps."""


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


@dataclass
class Setup:
    """One case ready to time: `step(x)` is a whole training step; `sync` waits for the device."""

    device: Any
    batches: list[Any]
    step: Callable[[Any], None]
    first_losses: Callable[[], dict[str, float]]
    sync: Callable[[], None]


def setup(case: str, implementation: str, device: str, overrides: dict[str, Any]) -> Setup:
    """Config, fresh target, components, optimizer and input batches of one case, and its training step."""
    import torch

    from apd.config import load_config
    from apd.decompose import make_components, sampling_generator
    from apd.methods import method_of
    from apd.targets.registry import get_family, resolve_spec
    from apd.targets.train import resolve_device

    experiment, batch_size, n_instances = CASES[case]
    dev = resolve_device(device)
    cfg = load_config(experiment, {"batch_size": batch_size, "implementation": implementation, **overrides})
    spec = resolve_spec(str(cfg.target.name), cfg.target.overrides)
    if n_instances is not None:
        spec = spec.model_copy(update={"n_instances": n_instances})
    model = get_family(spec.kind).build(spec, seed=0).to(dev).eval().requires_grad_(False)
    method = method_of(cfg)
    comps = make_components(cfg, model, dev)
    fused = dev.type in ("cpu", "cuda")  # as apd.decompose
    opt = torch.optim.AdamW(method.parameters(comps), lr=cfg.lr, weight_decay=0.0, fused=fused)
    sampling = sampling_generator(cfg, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    batches = [
        model.sample(
            batch_size,
            feature_probability=spec.feature_probability,  # type: ignore[attr-defined]
            value_range=spec.value_range,  # type: ignore[attr-defined]
            generator=gen,
        )
        for _ in range(N_BATCHES)
    ]

    def step(x: torch.Tensor) -> None:  # the body of apd.decompose's loop
        method.before_step(cfg, comps)
        out = method.loss(cfg, model, comps, x, sampling)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        method.after_backward(cfg, comps)
        opt.step()

    def first_losses() -> dict[str, float]:
        # SPD: every sample computed, so the fast step draws the naive step's masks
        same_draws = cfg.model_copy(update={"zero_rows": "keep"}) if hasattr(cfg, "zero_rows") else cfg
        out = method.loss(same_draws, model, comps, batches[0], torch.Generator(device=dev).manual_seed(1))
        return {"total_loss": out.total.item(), **{k: v.mean().item() for k, v in out.terms.items()}}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    return Setup(dev, batches, step, first_losses, sync)


def _warm_up(s: Setup, steps: int) -> float:
    """Run `steps` steps (compilation happens here), then one timed step; returns its seconds."""
    for i in range(steps):
        s.step(s.batches[i % N_BATCHES])
    s.sync()
    t0 = time.perf_counter()
    s.step(s.batches[0])
    s.sync()
    return time.perf_counter() - t0


def interleaved(setups: dict[str, Setup], windows: int, window_s: float) -> dict[str, dict[str, Any]]:
    """Steps/s of each setup, timed in alternating windows (order flipped every round) after a warm-up."""
    n = {}
    for key, s in setups.items():
        per_step = _warm_up(s, 3)
        n[key] = max(1, math.ceil(window_s / max(per_step, 1e-6)))
    rates: dict[str, list[float]] = {key: [] for key in setups}
    cpu_rates: dict[str, list[float]] = {key: [] for key in setups}
    keys = list(setups)
    for w in range(windows):
        for key in keys if w % 2 == 0 else keys[::-1]:
            s = setups[key]
            s.sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n[key]):
                s.step(s.batches[(w * n[key] + i) % N_BATCHES])
            s.sync()
            rates[key].append(n[key] / (time.perf_counter() - t0))
            cpu_rates[key].append(n[key] / max(time.process_time() - c0, 1e-9))
    return {
        key: {
            "steps_per_s": statistics.median(rates[key]),
            "windows": rates[key],
            "cpu_steps_per_s": statistics.median(cpu_rates[key]),
            "steps_per_window": n[key],
        }
        for key in setups
    }


def pair_worker(case: str, implementations: list[str], threads: int, device: str, windows: int, window_s: float,
                overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """The implementations of one case in this process, timed in alternating windows."""
    import torch

    torch.set_num_threads(threads)
    setups = {impl: setup(case, impl, device, overrides[impl]) for impl in implementations}
    losses = {impl: s.first_losses() for impl, s in setups.items()}
    timed = interleaved(setups, windows, window_s)
    dev = next(iter(setups.values())).device
    info = {"threads": torch.get_num_threads(), "device": str(dev), "torch": torch.__version__}
    return {impl: timed[impl] | info | {"losses": losses[impl]} for impl in implementations}


def peak_worker(case: str, implementation: str, threads: int, device: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of a few steps of one implementation, alone in this process."""
    import torch

    torch.set_num_threads(threads)
    s = setup(case, implementation, device, overrides)
    dev = s.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base_mb = torch.cuda.memory_allocated(dev) / 2**20
    else:
        base_mb = _rss_mb()
    for i in range(3):
        s.step(s.batches[i % N_BATCHES])
    s.sync()
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 - base_mb
    else:
        peak_mb = _peak_rss_mb() - base_mb
    return {"peak_mb": max(peak_mb, 0.0)}


def profile_worker(case: str, implementation: str, threads: int, device: str, steps: int, rows: int,
                   overrides: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """torch.profiler over `steps` steps after a warm-up: the ops with the most self time, as a table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    s = setup(case, implementation, device, overrides)
    per_step = _warm_up(s, 3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            s.step(s.batches[i % N_BATCHES])
        s.sync()
    sort = "self_cuda_time_total" if s.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=44)
    return {"table": table, "steps": steps, "unprofiled_step_ms": per_step * 1e3}


def ab_worker(case: str, threads: int, device: str, windows: int, window_s: float, base: dict[str, Any],
              variant: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Fast step with `base` overrides (a) against `base | variant` (b), timed in alternating windows."""
    import torch

    torch.set_num_threads(threads)
    setups = {"a": setup(case, "fast", device, base), "b": setup(case, "fast", device, base | variant)}
    timed = interleaved(setups, windows, window_s)
    a, b = timed["a"]["steps_per_s"], timed["b"]["steps_per_s"]
    return {"a_steps_per_s": a, "b_steps_per_s": b, "ratio": b / a, "a_windows": timed["a"]["windows"],
            "b_windows": timed["b"]["windows"]}  # fmt: skip


def _subprocess(args_list: list[str], threads: int, what: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, *args_list]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _common(args: argparse.Namespace, threads: int) -> list[str]:
    return ["--threads", str(threads), "--device", args.device, "--windows", str(args.windows),
            "--window-s", str(args.window_s)]  # fmt: skip


def _sets(args: argparse.Namespace, implementation: str) -> list[str]:
    out = []
    for item in args.set + (args.fast_set if implementation == "fast" else []):
        out += ["--set", item]
    return out


def run_pair(case: str, implementations: list[str], threads: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = ["--worker-pair", case, ",".join(implementations), *_common(args, threads), *_sets(args, "naive")]
    for item in args.fast_set:
        cmd += ["--fast-set", item]
    return _subprocess(cmd, threads, f"worker {case}")


def run_peak(case: str, implementation: str, threads: int, args: argparse.Namespace) -> float:
    cmd = ["--worker-peak", case, implementation, *_common(args, threads), *_sets(args, implementation)]
    return float(_subprocess(cmd, threads, f"peak worker {case}/{implementation}")["peak_mb"])


def run_ab(cases: list[str], threads: list[int], args: argparse.Namespace) -> int:
    results = {}
    for case in cases:
        for n_threads in threads:
            key = case if len(threads) == 1 else f"{case}-t{n_threads}"
            cmd = ["--worker-ab", case, *_common(args, n_threads), *_sets(args, "fast")]
            for item in args.ab:
                cmd += ["--ab", item]
            load = os.getloadavg()[0]
            r = _subprocess(cmd, n_threads, f"A/B worker {case}") | {"load_before": load}
            results[key] = r
            if not args.json:
                print(f"{key:22s} a {r['a_steps_per_s']:8.3g}  b ({' '.join(args.ab)}) {r['b_steps_per_s']:8.3g} "
                      f"steps/s: b/a {r['ratio']:.2f}  load {load:.1f}", flush=True)  # fmt: skip
    _emit(results, args)
    return 0


def run_profile(cases: list[str], impls: list[str], threads: list[int], args: argparse.Namespace) -> int:
    results = {}
    for case in cases:
        for impl in impls:
            for n_threads in threads:
                cmd = ["--worker-profile", case, impl, *_common(args, n_threads), *_sets(args, impl)]
                cmd += ["--profile-steps", str(args.profile_steps), "--profile-rows", str(args.profile_rows)]
                load = os.getloadavg()[0]
                r = _subprocess(cmd, n_threads, f"profile worker {case}/{impl}") | {"load_before": load}
                results[f"{case}-{impl}-t{n_threads}"] = r
                if not args.json:
                    print(f"## {case}, {impl}, {n_threads} thread(s), {r['steps']} steps profiled "
                          f"(unprofiled step {r['unprofiled_step_ms']:.1f} ms, load {load:.1f})\n{r['table']}",
                          flush=True)  # fmt: skip
    _emit(results, args)
    return 0


def _emit(results: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def losses_match(fast: dict[str, float], naive: dict[str, float], rel: float = 1e-4) -> bool:
    keys = [k for k in fast if k != "out_recon_loss"]
    return all(math.isclose(fast[k], naive[k], rel_tol=rel, abs_tol=1e-7) for k in keys) and all(
        k in fast for k in naive if k != "out_recon_loss"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CASES),
        help=f"comma-separated cases (default all but spd-resid-mlp-3: {', '.join(CASES)})",
    )
    p.add_argument("--windows", type=int, default=5, help="timed windows per implementation; the median is reported")
    p.add_argument("--window-s", type=float, default=2.0, help="minimum length of a window in seconds (>= 1 step)")
    p.add_argument("--threads", default="1", help="comma-separated torch intra-op thread counts, e.g. 1,2")
    p.add_argument("--implementations", default="fast,naive", help="fast,naive (the speedup needs both)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for both paths")
    p.add_argument(
        "--fast-set", action="append", default=[], metavar="KEY=VALUE", help="override for the fast path only"
    )
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--out", help="also write the JSON object to this file")
    p.add_argument(
        "--ab",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="instead: the fast step with these overrides (b) against without (a), in alternating windows",
    )
    p.add_argument("--profile", action="store_true", help="instead: torch.profiler's top ops of each implementation")
    p.add_argument("--profile-steps", type=int, default=20, help="steps profiled (after a warm-up)")
    p.add_argument("--profile-rows", type=int, default=15, help="ops listed, by self time")
    p.add_argument("--worker-pair", nargs=2, metavar=("CASE", "IMPLS"), help=argparse.SUPPRESS)
    p.add_argument("--worker-peak", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--worker-profile", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    p.add_argument("--worker-ab", metavar="CASE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from apd.config import parse_overrides

    overrides = parse_overrides(args.set)
    fast_overrides = overrides | parse_overrides(args.fast_set)
    threads = [int(t) for t in args.threads.split(",")]
    if args.worker_pair:
        case, impls = args.worker_pair[0], args.worker_pair[1].split(",")
        per_impl = {impl: fast_overrides if impl == "fast" else overrides for impl in impls}
        print(json.dumps(pair_worker(case, impls, threads[0], args.device, args.windows, args.window_s, per_impl)))
        return 0
    if args.worker_peak:
        print(json.dumps(peak_worker(*args.worker_peak, threads[0], args.device, overrides)))
        return 0
    if args.worker_profile:
        print(json.dumps(profile_worker(*args.worker_profile, threads[0], args.device, args.profile_steps,
                                        args.profile_rows, overrides)))  # fmt: skip
        return 0
    if args.worker_ab:
        variant = parse_overrides(args.ab)
        print(json.dumps(ab_worker(args.worker_ab, threads[0], args.device, args.windows, args.window_s,
                                   overrides, variant)))  # fmt: skip
        return 0
    cases = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"error: --configs: unknown case {unknown[0]!r}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    impls = [i.strip() for i in args.implementations.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLEMENTATIONS]
    if bad or not impls:
        print(f"error: --implementations: expected fast and/or naive (got {args.implementations!r})", file=sys.stderr)
        return 2
    if args.ab:
        return run_ab(cases, threads, args)
    if args.profile:
        return run_profile(cases, impls, threads, args)
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        for n_threads in threads:
            key = case if len(threads) == 1 else f"{case}-t{n_threads}"
            load = os.getloadavg()[0]
            runs = run_pair(case, impls, n_threads, args)
            load_after = os.getloadavg()[0]
            row: dict[str, Any] = {"batch_size": CASES[case][1], "threads": n_threads, "load_before": load,
                                   "load_after": load_after}  # fmt: skip
            if CASES[case][2] is not None:
                row["instances"] = CASES[case][2]
            for impl, r in runs.items():
                row[f"{impl}_steps_per_s"] = r["steps_per_s"]
                row[f"{impl}_cpu_steps_per_s"] = r["cpu_steps_per_s"]
                row[f"{impl}_windows"] = r["windows"]
                if not args.no_peak:
                    row[f"{impl}_peak_mb"] = run_peak(case, impl, n_threads, args)
                if not args.json:
                    spread = f"{min(r['windows']):.3g}-{max(r['windows']):.3g}"
                    peak = f"  peak {row[f'{impl}_peak_mb']:8.1f} MB" if not args.no_peak else ""
                    print(f"{key:22s} {impl:5s} {r['steps_per_s']:9.3g} steps/s ({spread}){peak}", flush=True)
            if "fast" in runs and "naive" in runs:
                row["speedup"] = runs["fast"]["steps_per_s"] / runs["naive"]["steps_per_s"]
                row["losses_match"] = losses_match(runs["fast"]["losses"], runs["naive"]["losses"])
                if not args.json:
                    print(f"{key:22s} speedup {row['speedup']:.2f}x, losses match: {row['losses_match']}, "
                          f"load {load:.1f} -> {load_after:.1f}", flush=True)  # fmt: skip
            row["device"], row["torch"] = next(iter(runs.values()))["device"], next(iter(runs.values()))["torch"]
            results[key] = row
    _emit(results, args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
