"""`apd sweep`: validate the sweep file, prepare OUT, and run it with the Ray or inline engine.

OUT holds `sweep.yaml` (the spec as run), `optuna.db` (the study: what makes `--resume` work),
`mlflow.db` + `mlartifacts/` (default tracking store), `trials.parquet`, `history.parquet`,
`trials/<trial_id>/` (each finished run's folder) and `ray/` (Tune's experiment storage). The
driver holds `OUT/.lock` throughout (`apd.sweep.outdir`: one driver per OUT, nothing overwritten).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from apd.config import check_output_dir
from apd.errors import ConfigError
from apd.sweep.outdir import SPEC_FILE, check_out, claim, output_error, write_error, write_text_atomic
from apd.sweep.spec import ValidatedSweep, corner_points, load_spec, validate_spec

if TYPE_CHECKING:  # the heavy modules load only when a sweep runs
    from apd.sweep.recorder import Recorder
    from apd.sweep.results import ResultsStore
    from apd.sweep.study import StudyHandle
    from apd.sweep.tracking import Tracker


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
    trials = getattr(args, "trials", None)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials: must be >= 1 (got {trials})")
    spec_path = getattr(args, "spec", None)
    if spec_path is None and not (resume and args.out):
        raise ConfigError("sweep: give a sweep YAML (or --resume --out OUT)")
    given = load_spec(spec_path) if spec_path is not None else None
    if args.out:
        out = Path(args.out).resolve()
    else:
        assert given is not None
        out = Path(given.spec.output or Path("out") / given.name).resolve()
    check_output_dir(out, "--out" if args.out else "output")
    with claim(out):  # one driver per OUT, from before anything in it is read or written
        sweep = check_out(given, out, resume)
        if trials is not None:
            sweep = sweep.with_trials(trials)
        if getattr(args, "pack", None) is not None:
            sweep = sweep.with_pack(args.pack)
        warm_targets(sweep)  # on the driver, once: trials must not all train the target at once
        try:
            if engine == "ray":
                from apd.sweep import ray_engine

                with ray_engine.session(address):
                    ray_engine.check_resources(sweep)
                    return _run(sweep, out, args, engine, resume)
            return _run(sweep, out, args, engine, resume)
        except OSError as e:
            raise write_error(e, out, started=resume or (out / SPEC_FILE).exists()) from None
        except Exception as e:
            if type(e).__name__ == "StorageInternalError":  # optuna's, for any failed write to optuna.db
                from apd.sweep.study import storage_error

                raise storage_error(out / "optuna.db", e, started=resume or (out / SPEC_FILE).exists()) from None
            raise


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
    from apd.sweep.progress import Progress
    from apd.sweep.recorder import Recorder
    from apd.sweep.trial import TrialContext

    store, handle = _prepare(sweep, out, engine, resume)
    total, remaining = sweep.total_trials, handle.remaining(sweep.total_trials)
    progress = Progress(total)
    progress.preset(Counter(r["status"] for r in store.rows.values()))
    tracker = _tracker(sweep, out, args)
    recorder = Recorder(sweep, out, store, tracker, engine=engine, total=total, handle=handle, progress=progress)
    reruns = f" ({handle.reruns} interrupted, rerun)" if handle.reruns else ""
    print(
        f"sweep {sweep.name}: {total} trials ({sweep.n_draws} settings x {sweep.group_size}), engine {engine}; "
        f"{total - remaining} done, {remaining} to run{reruns}"
    )
    _open_tracking(recorder, sweep, out, handle, resume, remaining)
    _banner(recorder, sweep, out)
    start, status = time.monotonic(), "FAILED"
    progress.start()
    try:
        if remaining:
            _engine_run(engine, sweep, out, handle, recorder, TrialContext.from_driver(sweep), remaining)
        status = "FINISHED" if handle.remaining(total) == 0 else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:  # whatever happened, OUT holds every trial that ended and the parent run is closed
        progress.stop()
        try:
            store.write()
        except OSError as e:
            recorder.fatal = recorder.fatal or output_error(out / "trials.parquet", e)
        if remaining:
            recorder.track("end_sweep", lambda t: t.end_sweep(status, recorder.counts()))
    if recorder.fatal is not None:
        raise recorder.fatal
    counts = Counter(r["status"] for r in store.rows.values())
    return _summary(sweep, out, handle, store, counts, time.monotonic() - start, recorder)


def _prepare(sweep: ValidatedSweep, out: Path, engine: str, resume: bool) -> tuple[ResultsStore, StudyHandle]:
    """Write OUT/sweep.yaml, open (or reconcile) the study and the rows."""
    from apd.sweep.results import ResultsStore
    from apd.sweep.study import create_study, resume_study

    resolved = sweep.resolved_dict() | {"output": str(out)}
    if resume:
        write_text_atomic(out / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))
        store = ResultsStore.load(out, sweep, engine)
        return store, resume_study(sweep, out, store)
    try:
        write_text_atomic(out / SPEC_FILE, yaml.safe_dump(resolved, sort_keys=False))
        return ResultsStore(out, sweep, engine), create_study(sweep, out)
    except BaseException:
        # a fresh sweep that could not start (disk full, ...) leaves OUT as it found it: empty
        for name in (SPEC_FILE, "optuna.db", "optuna.db-journal"):
            (out / name).unlink(missing_ok=True)
        raise


def _open_tracking(
    recorder: Recorder, sweep: ValidatedSweep, out: Path, handle: StudyHandle, resume: bool, remaining: int
) -> None:
    """Open the experiment and the parent run. A resume first replays into MLflow what OUT holds
    and MLflow lacks (`apd.sweep.sync`); it reopens the parent only when trials are left to run,
    so a resume with nothing to do moves no end time. Failures trip the recorder's breaker."""
    from apd.sweep.study import EXPERIMENT_ATTR, TRACKING_ATTR
    from apd.sweep.sync import sync_runs

    if recorder.track("open", lambda t: t.open(sweep.name)) is None:
        return
    resolved = sweep.resolved_dict() | {"output": str(out)}

    def start(t: Tracker) -> str:
        parent = t.start_sweep(sweep.name, recorder.engine, resolved, handle.uid)
        t.log_sweep_file(out / SPEC_FILE)
        t.share_view(sweep)
        return parent

    ids_changed = False

    def resync(t: Tracker) -> str:
        nonlocal ids_changed
        report = sync_runs(t, sweep, out, recorder.store, handle.uid, handle.parent_run_id)
        if report.changed:
            recorder.echo(f"MLflow: {report.describe()}")
        ids_changed = report.ids_changed
        t.share_view(sweep)
        if remaining:
            t.reopen_sweep()
        assert t.parent_id is not None
        return t.parent_id

    parent = recorder.track("sync" if resume else "start_sweep", resync if resume else start)
    if ids_changed:  # rows got the ids of runs the sync created (outside `track`: a failed write is fatal)
        recorder.store.write()
    if parent is not None and recorder.tracker is not None:
        handle.set_parent_run_id(parent)
        handle.study.set_user_attr(TRACKING_ATTR, recorder.tracker.uri)
        handle.study.set_user_attr(EXPERIMENT_ATTR, recorder.tracker.experiment_id)


def _banner(recorder: Recorder, sweep: ValidatedSweep, out: Path) -> None:
    """Where to watch the sweep, printed before the first trial."""
    from apd.sweep.sync import ui_hint

    if recorder.tracker is not None:
        print(f"MLflow: {ui_hint(recorder.tracker, sweep.name)}")
    print(f"Optuna: optuna-dashboard sqlite:///{out / 'optuna.db'}")
    print(f"status: apd status {out} --watch")


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
    from apd.sweep.sync import make_tracker

    return make_tracker(sweep, out, uri)


def _summary(
    sweep: ValidatedSweep,
    out: Path,
    handle: StudyHandle,
    store: ResultsStore,
    counts: Counter[str],
    seconds: float,
    recorder: Recorder,
) -> int:
    done = handle.finished()
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != "RUNNING")
    print(f"{done}/{sweep.total_trials} trials done in {seconds:.0f} s ({parts or 'none'})")
    print(f"results: {out}/trials.parquet, {out}/history.parquet")
    if recorder.tracking_error is not None:
        print(
            f"MLflow: tracking stopped at a failure ({recorder.tracking_error}); the results are complete in "
            f"Parquet; replay them: apd sync {out} --tracking-uri {recorder.tracking_uri}"
        )
    elif recorder.tracker is not None:
        from apd.sweep.sync import ui_hint

        print(f"MLflow: {ui_hint(recorder.tracker, sweep.name)}")
    if done < sweep.total_trials:
        print(f"sweep incomplete; continue with: apd sweep --resume --out {out}")
        return 1
    if done and not counts.get("COMPLETE"):
        errors = [(k, r["error"]) for k, r in sorted(store.rows.items()) if r.get("error")]
        first = f"; first error: {errors[0][0]}: {errors[0][1]}" if errors else ""
        print(f"sweep failed: no trial completed ({parts}){first}")
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
