"""All Ray code: connect, check resources, and run the sweep as a Tune experiment under OptunaSearch.

Reports from a trial: one per `report_every` steps (`apd.kind = "step"`: the step record, the
pruning value `apd.prune` for ASHA, a checkpoint when the run saved a new one) and one final report
(`apd.kind = "final"`: the outcome, and the run folder as checkpoint). ASHA's clock is the
decomposition step and its `max_t` lies beyond the last step, so it can never cut the final report
(ASHA stops a trial when it reaches `max_t`, before a report made there reaches the driver). The
driver-side callback is the only writer of Parquet and MLflow.

With `pack` > 1 a Tune trial is a pack (`apd.pack`): `PackSearcher` (a Tune `Searcher`) hands each
one up to K Optuna trials, and its reports carry every member's record, the members that ended
(diverged) since the last report, and at the end every member's outcome and run folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import optuna
import pyarrow.fs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from apd.errors import ConfigError
from apd.sweep.recorder import Recorder
from apd.sweep.space import PackDrawer, intermediate_value, make_sampler, make_space
from apd.sweep.spec import ValidatedSweep
from apd.sweep.study import StudyHandle
from apd.sweep.trial import (
    TrialContext,
    TrialOutcome,
    TrialPoint,
    one_line,
    resolve_pack,
    run_pack_trial,
    run_trial,
)

STATE_FILE = "checkpoint.pt"
PACK = "apd_pack"
"""The config key of a pack trial: its members' points."""
RUNS_DIR = "runs"
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a machine-local cluster (its default on macOS and Windows): with it at 0 the
node's address is 127.0.0.1, and gcs_server, raylet, workers and agents listen on loopback only."""
INIT_KWARGS: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}


def ray_environment(local: bool) -> None:
    """Quiet and CI-safe Ray settings (no usage stats, no console boxes, no strict metric checks), set
    before `ray.init`."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # else verbose=0 still prints a config box
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # step and final reports carry different keys on purpose (the objective exists only at the end)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _reload_ray_settings() -> None:
    """Make an already imported Ray see the environment again: its local-only switch is read at
    import, its auth mode and token are cached by the C++ core (Ray's own test helpers do this)."""
    from ray._common.utils import env_bool
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    ray_constants.ENABLE_RAY_CLUSTER = env_bool(LOCAL_ONLY_ENV, not ray_constants.IS_WINDOWS_OR_OSX)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def private_environment() -> Iterator[Path]:
    """The settings of a private local Ray, undone on exit: every listener on loopback, and token
    auth with a fresh random token for this Ray alone (0600, in a 0700 temp dir; never
    ~/.ray/auth_token), so other users of the machine cannot use it either. Yields the token file."""
    saved = {k: os.environ.get(k) for k in (*AUTH_ENV, LOCAL_ONLY_ENV)}
    folder = Path(tempfile.mkdtemp(prefix="apd-ray-auth-"))
    token = folder / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
    os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), LOCAL_ONLY_ENV: "0"}
    _reload_ray_settings()
    try:
        yield token
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_ray_settings()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def local_ray(**init_kwargs: Any) -> Iterator[None]:
    """A private local Ray (`private_environment`) for the duration of the block."""
    ray_environment(local=True)
    with private_environment():
        try:
            ray.init(address="local", **(INIT_KWARGS | init_kwargs))
        except Exception as e:
            # Ray gives its raylet a fixed 30 s to register: an overloaded machine can miss that once
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            ray.init(address="local", **(INIT_KWARGS | init_kwargs))
        try:
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def session(address: str | None) -> Iterator[None]:
    """Attach to `address` (or RAY_ADDRESS), else start a private local Ray, for the block; a Ray
    already initialised in this process is used as it is.

    Never a bare `ray.init()`: it silently joins whatever cluster /tmp/ray remembers.
    """
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    with contextlib.ExitStack() as stack:
        try:
            if address is None:
                stack.enter_context(local_ray(num_cpus=available_cpus()))
            else:
                ray_environment(local=False)
                ray.init(address=address, **INIT_KWARGS)
                stack.callback(ray.shutdown)
        except Exception as e:  # ConnectionError, RuntimeError, a bare Exception for a startup timeout, ...
            raise ConfigError(f"--address {address or 'local'}: cannot start or reach Ray ({one_line(e)})") from None
        yield


def check_resources(sweep: ValidatedSweep) -> None:
    """Fail now if no node can host one trial: Ray would leave it PENDING forever."""
    need = sweep.spec.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= need.cpus and r.get("GPU", 0) >= need.gpus for r in nodes):
        return
    total = ray.cluster_resources()
    raise ConfigError(
        f"{sweep.source}: resources: a trial needs {need.cpus:g} CPU and {need.gpus:g} GPU on one node, "
        f"but no node has them (cluster: {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU "
        f"on {len(nodes)} node(s))"
    )


# ---------------------------------------------------------------------------------------------
# Worker side


def trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial: run the shared trial function, reporting every record and the outcome."""
    point = TrialPoint.from_dict(config["apd"])
    node = ray.get_runtime_context().get_node_id()
    prune_key = ctx.sweep.spec.pruning.metric if ctx.sweep.spec.pruning.algorithm == "asha" else None
    with tempfile.TemporaryDirectory(prefix=f"apd-{point.trial_id}-") as tmp:
        state_dir, run_dir = Path(tmp) / "state", Path(tmp) / "run"
        state_dir.mkdir()
        state = state_dir / STATE_FILE
        _restore(state)
        on_step = _reporter(state, node, prune_key)
        outcome = run_trial(ctx, point, run_dir, on_step=on_step, checkpoint_path=state, node=node)
        final = {
            "apd.kind": "final",
            "apd.status": outcome.status,
            "apd.objective": outcome.objective,
            "apd.outcome": outcome.to_dict(),
            "apd.node": node,
        }
        checkpoint = tune.Checkpoint.from_directory(run_dir) if run_dir.is_dir() else None
        tune.report(final, checkpoint=checkpoint)


def _restore(state: Path) -> None:
    """After a lost worker, Tune hands back the last checkpoint: the run resumes from it."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as d:
        if (Path(d) / STATE_FILE).is_file():
            shutil.copyfile(Path(d) / STATE_FILE, state)


def pack_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """One Tune trial holding a pack: every report carries the live members' records (`apd.records`)
    and the members that ended since the last (`apd.ended`); the last, every outcome (`apd.outcomes`)
    with the members' run folders as checkpoint. The state folder (pack snapshot and the folders of
    members that ended) is the retry checkpoint."""
    points = [TrialPoint.from_dict(d) for d in config[PACK]]
    node = ray.get_runtime_context().get_node_id()
    with tempfile.TemporaryDirectory(prefix=f"apd-{points[0].trial_id}-") as tmp:
        state_dir = Path(tmp) / "state"
        _restore_dir(state_dir)
        state, runs = state_dir / STATE_FILE, state_dir / RUNS_DIR
        ended: dict[str, Any] = {}
        last: list[tuple[int, int] | None] = [_stamp(state)]

        def on_end(tid: str, outcome: TrialOutcome) -> None:
            ended[tid] = outcome.to_dict()

        def on_step(records: dict[str, dict[str, float]]) -> None:
            step = next(iter(records.values()))["step"]
            metrics = {
                "apd.kind": "step",
                "apd.step": step,
                "apd.node": node,
                "apd.records": json.dumps(records),
                "apd.ended": json.dumps(ended),
            }
            ended.clear()
            checkpoint = None
            stamp = _stamp(state)
            if stamp is not None and stamp != last[0]:
                last[0] = stamp
                checkpoint = tune.Checkpoint.from_directory(state_dir)
            tune.report(metrics, checkpoint=checkpoint)

        outcomes = run_pack_trial(
            ctx,
            points,
            {p.trial_id: runs / p.trial_id for p in points},
            on_step=on_step,
            on_end=on_end,
            checkpoint_path=state,
            node=node,
        )
        final = {
            "apd.kind": "final",
            "apd.outcomes": json.dumps({tid: o.to_dict() for tid, o in outcomes.items()}),
            "apd.node": node,
        }
        checkpoint = tune.Checkpoint.from_directory(runs) if runs.is_dir() else None
        tune.report(final, checkpoint=checkpoint)


def _restore_dir(state_dir: Path) -> None:
    """The pack's state folder as the last checkpoint left it (after a lost worker), else empty."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        state_dir.mkdir()
        return
    with checkpoint.as_directory() as d:
        shutil.copytree(d, state_dir)


def _reporter(state: Path, node: str, prune_key: str | None) -> Callable[[dict[str, float]], None]:
    last: list[tuple[int, int] | None] = [_stamp(state)]

    def on_step(record: dict[str, float]) -> None:
        metrics: dict[str, Any] = {
            "apd.kind": "step",
            "apd.step": record["step"],
            "apd.node": node,
            "apd.record": record,
        }
        value = record.get(prune_key) if prune_key else None
        if value is not None and math.isfinite(value):
            metrics["apd.prune"] = value
        checkpoint = None
        stamp = _stamp(state)
        if stamp is not None and stamp != last[0]:  # the run saved a new snapshot at this step
            last[0] = stamp
            checkpoint = tune.Checkpoint.from_directory(state.parent)
        tune.report(metrics, checkpoint=checkpoint)  # ASHA's stop surfaces here as an exception

    return on_step


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------------------------------------
# Driver side


class StopRecordingASHA(ASHAScheduler):
    """ASHA that remembers whom it stopped: only those trials are PRUNED (not ones cut by Ctrl-C)."""

    def __init__(self, stopped: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped = stopped

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP:
            self.stopped.add(trial.trial_id)
        return str(action)


class PruneAwareOptunaSearch(OptunaSearch):  # type: ignore[misc]
    """OptunaSearch that tells Optuna PRUNED for ASHA-stopped trials (stock: COMPLETE with an early
    value), FAIL for failed or diverged ones, and leaves interrupted trials RUNNING for resume."""

    def __init__(self, *args: Any, sweep: ValidatedSweep, stopped: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweep, self.stopped = sweep, stopped
        self.reported: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Store the step's intermediate value in the study (pruning itself is ASHA's). A retried
        trial resends the steps since its checkpoint: each step is reported once."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or result.get("apd.kind") != "step":
            return
        # searchers get the result flattened: the record's keys arrive as "apd.record/<key>"
        record = result.get("apd.record") or {
            k.removeprefix("apd.record/"): v for k, v in result.items() if k.startswith("apd.record/")
        }
        step, value = int(result["apd.step"]), intermediate_value(self.sweep, record)
        done = self.reported.setdefault(trial_id, set())
        if value is not None and step not in done:
            done.add(step)
            ot_trial.report(value, step)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to pickle: the study lives in OUT/optuna.db and resume starts a new Tuner on it
        (and the define-by-run closure is not picklable)."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume with `apd sweep --resume`, which reopens the stored study")

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if trial_id in self._completed_trials or ot_trial is None:
            return
        final = result is not None and result.get("apd.kind") == "final"
        if error:
            state, values = optuna.trial.TrialState.FAIL, None
        elif final and result is not None and result.get("apd.status") == "COMPLETE":
            state, values = optuna.trial.TrialState.COMPLETE, result.get("apd.objective")
        elif final:
            state, values = optuna.trial.TrialState.FAIL, None
        elif trial_id in self.stopped:
            state, values = optuna.trial.TrialState.PRUNED, None
        else:
            return  # stopped by an interrupted experiment: resume reruns it
        study = cast(optuna.Study, self._ot_study)  # typed None in OptunaSearch, set by now
        study.tell(ot_trial, values, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


class PackSearcher(Searcher):  # type: ignore[misc]
    """Tune's search for packed trials: each suggestion is a pack of up to `size` Optuna trials
    (`PackDrawer`); each member is told its outcome when it ends, and members of an interrupted
    pack stay RUNNING for resume."""

    def __init__(self, sweep: ValidatedSweep, handle: StudyHandle, size: int, remaining: int) -> None:
        super().__init__()
        self.study = optuna.load_study(
            study_name=handle.name, storage=handle.storage, sampler=make_sampler(sweep, handle.attempt)
        )
        self.drawer = PackDrawer(self.study, sweep, size, remaining)
        self.members: dict[str, dict[str, optuna.Trial]] = {}
        self.told: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        pack = self.drawer.next_pack()
        if not pack:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's sentinel string
        self.members[trial_id] = {point.trial_id: trial for trial, point in pack}
        return {PACK: [point.to_dict() for _, point in pack]}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        for tid, outcome in json.loads(result.get("apd.ended") or "{}").items():
            self._tell(trial_id, tid, TrialOutcome.from_dict(outcome))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result is not None and result.get("apd.kind") == "final":
            for tid, outcome in json.loads(result["apd.outcomes"]).items():
                self._tell(trial_id, tid, TrialOutcome.from_dict(outcome))
        if error:
            for tid in self.members.get(trial_id, {}):
                self._tell(trial_id, tid, TrialOutcome("FAILED"))
        # else stopped by an interrupted experiment: resume reruns its unfinished members

    def _tell(self, trial_id: str, tid: str, outcome: TrialOutcome) -> None:
        trial = self.members.get(trial_id, {}).get(tid)
        if trial is None or tid in self.told:
            return
        complete = outcome.status == "COMPLETE"
        state = optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL
        self.study.tell(trial, outcome.objective if complete else None, state=state, skip_if_finished=True)
        self.told.add(tid)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to pickle: the study lives in OUT/optuna.db (as for PruneAwareOptunaSearch)."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("resume with `apd sweep --resume`, which reopens the stored study")


class RecorderCallback(tune.Callback):  # type: ignore[misc]
    """Feeds trial events to the recorder. Never raises: an exception here would abort `fit()`."""

    def __init__(self, recorder: Recorder, stopped: set[str]) -> None:
        self.recorder, self.stopped = recorder, stopped

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config for `Tuner.restore` (never used: sweeps resume their own way);
        # the recorder holds locks, files and a live progress thread
        return {"recorder": None, "stopped": set()}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        def start() -> None:
            self.recorder.started(*_points(trial))

        self._safe(start)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if PACK in trial.config:
            self._safe(lambda: self._pack_result(result))
            return
        tid = _point(trial).trial_id
        if result.get("apd.kind") == "step":
            self._safe(lambda: self.recorder.step(tid, result["apd.record"], result.get("apd.node")))
        elif result.get("apd.kind") == "final":
            self._safe(lambda: self.recorder.ended(tid, TrialOutcome.from_dict(result["apd.outcome"])))

    def _pack_result(self, result: dict[str, Any]) -> None:
        node = result.get("apd.node")
        for tid, record in json.loads(result.get("apd.records") or "{}").items():
            self.recorder.step(tid, record, node)
        ended = result.get("apd.ended") or result.get("apd.outcomes") or "{}"
        for tid, outcome in json.loads(ended).items():
            self.recorder.ended(tid, TrialOutcome.from_dict(outcome))

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        if (trial.last_result or {}).get("apd.kind") != "final":
            return

        def upload() -> None:
            with checkpoint.as_directory() as d:
                if PACK not in trial.config:
                    self.recorder.artifacts(_point(trial).trial_id, Path(d))
                    return
                for point in _points(trial):  # one run folder per member
                    if (Path(d) / point.trial_id).is_dir():
                        self.recorder.artifacts(point.trial_id, Path(d) / point.trial_id)

        self._safe(upload)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self.stopped:
            self._safe(lambda: self.recorder.ended(_point(trial).trial_id, TrialOutcome("PRUNED")))
        self._safe(lambda: drop_checkpoints(trial))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        def record() -> None:
            text = (trial.get_error() or "").strip().splitlines()
            reason = text[-1] if text else "trial errored"
            for point in _points(trial):  # members that ended before keep their outcome
                self.recorder.ended(point.trial_id, TrialOutcome("FAILED", error=f"ray: {reason}"))

        self._safe(record)
        self._safe(lambda: drop_checkpoints(trial))

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:
            if self.recorder.fatal is None:  # a fatal error is reported once, when the run stops
                self.recorder.echo(f"warning: recording a trial event failed ({one_line(e)})", err=True)


class FatalStopper(tune.Stopper):  # type: ignore[misc]
    """Ends the experiment once the recorder cannot write OUT: nothing a trial does is kept then."""

    def __init__(self, recorder: Recorder | None) -> None:
        self.recorder = recorder

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.recorder is not None and self.recorder.fatal is not None

    def __getstate__(self) -> dict[str, Any]:
        return {"recorder": None}  # as RecorderCallback


def drop_checkpoints(trial: Any) -> None:
    """Delete an ended trial's Ray checkpoints: they exist to retry it on another worker, which can
    no longer happen. Its run folder was copied to OUT/trials/<id> when the final checkpoint
    arrived (Tune runs `on_checkpoint` before `on_trial_complete`), and a resumed sweep reruns
    only unfinished trials. Without this OUT/ray keeps, per trial, its weights and `num_to_keep`
    optimizer snapshots: hundreds of MB for a residual-MLP trial."""
    fs = trial.storage.storage_filesystem
    entries = fs.get_file_info(pyarrow.fs.FileSelector(trial.path, allow_not_found=True))
    for entry in entries:
        if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
            fs.delete_dir(entry.path)


def _point(trial: Any) -> TrialPoint:
    return TrialPoint.from_dict(trial.config["apd"])


def _points(trial: Any) -> list[TrialPoint]:
    """The trial's point, or its pack's."""
    if PACK in trial.config:
        return [TrialPoint.from_dict(d) for d in trial.config[PACK]]
    return [_point(trial)]


def _trial_name(trial: Any) -> str:
    if PACK in trial.config:  # e.g. t0004-pack4: the pack whose first member is t0004
        members = trial.config[PACK]
        return f"{members[0]['trial_id']}-pack{len(members)}"
    return str(trial.config["apd"]["trial_id"])


class _NoRestoreHint(logging.Filter):
    """After Ctrl-C Tune suggests `Tuner.restore`; a sweep resumes with `apd sweep --resume`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


def run_ray(
    sweep: ValidatedSweep, out: Path, handle: StudyHandle, recorder: Recorder, ctx: TrialContext, remaining: int
) -> None:
    """Run `remaining` more trials of the stored study as one Tune experiment (of packs, with `pack`)."""
    spec = sweep.spec
    stopped: set[str] = set()
    metric: str | list[str] = [o.metric for o in spec.objective]
    mode: str | list[str] = [o.mode for o in spec.objective]
    if not spec.multi_objective:
        metric, mode = metric[0], mode[0]
    size = pack_size(sweep, ctx, remaining)
    searcher: Searcher
    if size > 1:
        print(f"packing up to {size} trials per step")
        searcher = PackSearcher(sweep, handle, size, remaining)
    else:
        searcher = PruneAwareOptunaSearch(
            make_space(sweep),
            metric=metric,
            mode=mode,
            sampler=make_sampler(sweep, handle.attempt),
            study_name=handle.name,
            storage=handle.storage,
            sweep=sweep,
            stopped=stopped,
        )
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoRestoreHint) for f in tune_log.filters):
        tune_log.addFilter(_NoRestoreHint())
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(pack_trainable if size > 1 else trainable, ctx=ctx), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(sweep, stopped),
            num_samples=remaining,
            max_concurrent_trials=spec.max_concurrent,
            reuse_actors=True,  # else every trial pays a fresh worker process and torch import
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"attempt-{handle.attempt}",
            storage_path=str((out / "ray").resolve()),
            verbose=0,
            callbacks=[RecorderCallback(recorder, stopped)],
            stop=FatalStopper(recorder),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # >= 3: a restore can otherwise race the deletion of the checkpoint it needs (pitfall 5)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        ),
    )
    try:
        tuner.fit()
    except Exception:
        if recorder.fatal is None:
            raise
    if recorder.fatal is not None:
        raise recorder.fatal


def _scheduler(sweep: ValidatedSweep, stopped: set[str]) -> TrialScheduler:
    pruning = sweep.spec.pruning
    if pruning.algorithm == "none":
        return FIFOScheduler()
    assert pruning.grace_steps is not None
    max_t = sweep.max_steps + sweep.report_every  # beyond every step report: ASHA never ends a run itself
    return StopRecordingASHA(
        stopped,
        time_attr="apd.step",
        metric="apd.prune",
        mode=pruning.mode,
        max_t=max_t,
        grace_period=min(pruning.grace_steps, max_t),
        reduction_factor=pruning.reduction_factor,
    )


def pack_size(sweep: ValidatedSweep, ctx: TrialContext, remaining: int) -> int:
    """`resolve_pack` where the trials run: `auto` is measured in a Ray task holding one trial's
    resources (1 without a GPU: trials then run on CPUs)."""
    spec = sweep.spec
    if spec.pack != "auto" or spec.pruning.algorithm != "none":
        return resolve_pack(sweep, remaining)
    if spec.resources.gpus == 0:
        return 1

    def measure() -> int:
        os.environ.update(ctx.env)
        return resolve_pack(sweep, remaining)

    task = ray.remote(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)(measure)
    return int(ray.get(task.remote()))
