"""`apd sweep`: validate the sweep file, prepare OUT, and run it with the Ray or inline engine.

OUT holds `sweep.yaml` (the spec as run), `optuna.db` (the study: what makes `--resume` work),
`mlflow.db` + `mlartifacts/` (default tracking store), `trials.parquet`, `history.parquet`,
`trials/<trial_id>/` (each finished run's folder) and `ray/` (Tune's experiment storage).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from apd.config import check_output_dir, read_yaml
from apd.errors import ConfigError
from apd.sweep.spec import ValidatedSweep, corner_points, load_spec, validate_spec

if TYPE_CHECKING:  # the heavy modules load only when a sweep runs
    from apd.sweep.results import ResultsStore
    from apd.sweep.study import StudyHandle
    from apd.sweep.tracking import Tracker

SPEC_FILE = "sweep.yaml"
RESUMABLE = ("search.n_trials", "output")
"""Spec fields a resume may change."""


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """The `apd sweep` flags (the lead's CLI calls this)."""
    parser.add_argument("spec", nargs="?", help="sweep YAML (with --resume: default OUT/sweep.yaml)")
    parser.add_argument("--out", help="output folder (default: the spec's output, else out/NAME)")
    parser.add_argument(
        "--engine",
        choices=("ray", "inline"),
        default="ray",
        help="ray: Ray Tune, trials in parallel (default); inline: plain Optuna, one trial at a time in-process",
    )
    parser.add_argument(
        "--address", help="Ray cluster to use, e.g. 10.0.0.1:6379 (default $RAY_ADDRESS, else a private local Ray)"
    )
    parser.add_argument("--trials", type=int, metavar="N", help="override search.n_trials (settings to draw)")
    parser.add_argument("--pack", metavar="K", help="override pack: trials trained together in one step (K or auto)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep in OUT")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI, e.g. http://host:5000 (default sqlite:///OUT/mlflow.db)"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def sweep_main(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    engine = getattr(args, "engine", None) or "ray"
    address = getattr(args, "address", None)
    resume = bool(getattr(args, "resume", False))
    if engine == "inline" and address:
        raise ConfigError("--address: only the ray engine runs on a cluster (drop --engine inline)")
    sweep, out = _load(args, resume)
    if getattr(args, "trials", None) is not None:
        if args.trials < 1:
            raise ConfigError(f"--trials: must be >= 1 (got {args.trials})")
        sweep = sweep.with_trials(args.trials)
    if getattr(args, "pack", None) is not None:
        sweep = sweep.with_pack(args.pack)
    warm_targets(sweep)  # on the driver, once: trials must not all train the target at once
    if engine == "ray":
        from apd.sweep import ray_engine

        started = ray_engine.connect(address)
        try:
            ray_engine.check_resources(sweep)
            return _run(sweep, out, args, engine, resume)
        finally:
            if started:
                import ray

                ray.shutdown()
    return _run(sweep, out, args, engine, resume)


def _load(args: argparse.Namespace, resume: bool) -> tuple[ValidatedSweep, Path]:
    """The spec and OUT; a fresh sweep needs an unused OUT, a resume one with a compatible spec."""
    spec_path = getattr(args, "spec", None)
    if spec_path is None and not (resume and args.out):
        raise ConfigError("sweep: give a sweep YAML (or --resume --out OUT)")
    if spec_path is None:
        stored = Path(args.out) / SPEC_FILE
        if not stored.is_file():
            raise ConfigError(f"{args.out}: no {SPEC_FILE}; nothing to resume")
        sweep = load_spec(stored)
    else:
        sweep = load_spec(spec_path)
    out = Path(args.out or sweep.spec.output or Path("out") / sweep.name).resolve()
    check_output_dir(out, "--out" if args.out else "output")
    stored = out / SPEC_FILE
    if not resume and stored.exists():
        raise ConfigError(f"{out}: already holds a sweep; pass --resume to continue it, or choose another --out")
    if resume and not stored.is_file():
        raise ConfigError(f"{out}: no {SPEC_FILE}; nothing to resume (run without --resume)")
    if resume and spec_path is not None:
        _check_same(sweep, stored)
    return sweep, out


def _check_same(sweep: ValidatedSweep, stored: Path) -> None:
    old = _flat(read_yaml(stored))
    new = _flat(sweep.resolved_dict())
    for key in sorted(old.keys() | new.keys()):
        if key in RESUMABLE or old.get(key) == new.get(key):
            continue
        raise ConfigError(
            f"{sweep.source}: {key}: differs from the sweep being resumed ({stored}: {old.get(key)!r}, "
            f"now {new.get(key)!r}); only search.n_trials may change"
        )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out |= _flat(v, f"{prefix}{k}.")
    return out


def warm_targets(sweep: ValidatedSweep) -> None:
    """Train (or find cached) every target the sweep can use."""
    import torch

    from apd.targets import load_target

    # the thread budget of one trial: on a small CPU box more threads only contend (and a tiny
    # TMS target trains ~3x faster on one thread than on two)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(sweep.spec.resources.cpus)))
    try:
        _warm(sweep, load_target)
    finally:
        torch.set_num_threads(threads)


def _warm(sweep: ValidatedSweep, load_target: Any) -> None:
    seen = set()
    seeds = sweep.spec.seeds if sweep.spec.seed_target else sweep.spec.seeds[:1]
    for params in corner_points(sweep.spec.parameters):
        for seed in seeds:
            cfg = sweep.config(params, seed)
            key = (cfg.target.name, cfg.target.path, cfg.target.seed, str(sorted(cfg.target.overrides.items())))
            if key not in seen:
                seen.add(key)
                try:
                    load_target(cfg.target, "auto")
                except ConfigError as e:  # a broken target file: name the sweep file and field too
                    raise ConfigError(f"{sweep.source}: {sweep.target_field(params, cfg)}: {e}") from None


def _run(sweep: ValidatedSweep, out: Path, args: argparse.Namespace, engine: str, resume: bool) -> int:
    from apd.sweep.recorder import Recorder
    from apd.sweep.trial import TrialContext

    store, handle, tracker = _prepare(sweep, out, args, engine, resume)
    total, remaining = sweep.total_trials, handle.remaining(sweep.total_trials)
    recorder = Recorder(sweep, out, store, tracker, engine=engine, total=total)
    reruns = f" ({handle.reruns} interrupted, rerun)" if handle.reruns else ""
    print(
        f"sweep {sweep.name}: {total} trials ({sweep.n_draws} settings x {sweep.group_size}), engine {engine}; "
        f"{total - remaining} done, {remaining} to run{reruns}"
    )
    start, status = time.monotonic(), "FAILED"
    try:
        if remaining:
            _engine_run(engine, sweep, out, handle, recorder, TrialContext.from_driver(sweep), remaining)
        status = "FINISHED" if handle.remaining(total) == 0 else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:  # whatever happened, OUT holds every trial that ended and the parent run is closed
        store.write()
        counts = Counter(r["status"] for r in store.rows.values())
        if tracker is not None:
            recorder.track("end_sweep", lambda t: t.end_sweep(status, _counts(counts, total)))
    return _summary(sweep, out, handle, counts, time.monotonic() - start, tracker is not None, args)


def _prepare(
    sweep: ValidatedSweep, out: Path, args: argparse.Namespace, engine: str, resume: bool
) -> tuple[ResultsStore, StudyHandle, Tracker | None]:
    """Write OUT/sweep.yaml, open (or reconcile) the study and the rows, open the MLflow parent run."""
    from apd.sweep.results import ResultsStore
    from apd.sweep.study import create_study, resume_study

    out.mkdir(parents=True, exist_ok=True)
    resolved = sweep.resolved_dict() | {"output": str(out)}
    (out / SPEC_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False))
    store = ResultsStore.load(out, sweep, engine) if resume else ResultsStore(out, sweep, engine)
    handle = resume_study(sweep, out, store) if resume else create_study(sweep, out)
    tracker = _tracker(sweep, out, args)
    if tracker is not None:
        handle.set_parent_run_id(tracker.start_sweep(sweep.name, engine, resolved, handle.parent_run_id))
        if resume:
            tracker.settle_children(store.outcomes())
        else:
            tracker.log_sweep_file(out / SPEC_FILE)
    return store, handle, tracker


def _engine_run(engine: str, *args: Any) -> None:
    if engine == "ray":
        from apd.sweep.ray_engine import run_ray

        run_ray(*args)
    else:
        from apd.sweep.inline_engine import run_inline

        run_inline(*args)


def _tracker(sweep: ValidatedSweep, out: Path, args: argparse.Namespace) -> Tracker | None:
    uri = getattr(args, "tracking_uri", None)
    if getattr(args, "no_tracking", False) or (uri is None and not sweep.spec.tracking.enabled):
        return None
    from apd.sweep.tracking import Tracker, default_uri

    uri = uri or sweep.spec.tracking.uri or default_uri(out)
    local = uri.startswith("sqlite:") or "://" not in uri
    try:
        return Tracker(
            uri, sweep.spec.tracking.experiment or sweep.name, artifact_root=out / "mlartifacts" if local else None
        )
    except Exception as e:
        from apd.sweep.trial import one_line

        raise ConfigError(f"tracking: cannot open the MLflow store {uri} ({one_line(e)})") from None


def _counts(counts: Counter[str], total: int) -> dict[str, float]:
    out = {f"n_{k.lower()}": float(v) for k, v in counts.items()}
    out["n_trials"] = float(total)
    return out


def _summary(
    sweep: ValidatedSweep,
    out: Path,
    handle: StudyHandle,
    counts: Counter[str],
    seconds: float,
    tracked: bool,
    args: argparse.Namespace,
) -> int:
    done = handle.finished()
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "RUNNING")
    print(f"{done}/{sweep.total_trials} trials done in {seconds:.0f} s ({parts or 'none'})")
    print(f"results: {out}/trials.parquet, {out}/history.parquet")
    if tracked:
        uri = getattr(args, "tracking_uri", None) or sweep.spec.tracking.uri
        if uri is None:
            print(f"MLflow: mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db")
        else:
            print(f"MLflow: {uri}")
    if done < sweep.total_trials:
        print(f"sweep incomplete; continue with: apd sweep --resume --out {out}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m apd.sweep`: the same as `apd sweep`, for machines without the console script."""
    import sys

    from apd.errors import ApdError

    parser = argparse.ArgumentParser(prog="apd sweep")
    add_sweep_args(parser)
    args = parser.parse_args(argv)
    try:
        return sweep_main(args)
    except ApdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


__all__ = ["add_sweep_args", "main", "sweep_main", "validate_spec"]
