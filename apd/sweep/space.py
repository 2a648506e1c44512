"""The Optuna side of a sweep spec: the define-by-run space both engines share, samplers, pruner.

Replication: a *fresh* trial (one the sampler drew) enqueues a copy of its setting for every other
grid-parameter combination and seed, so each draw runs as a group; Optuna sees every replica as
its own trial (noise included). Grid search enqueues every point times every seed up front.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection
from typing import Any, Literal

import optuna
from optuna.samplers import BaseSampler

from apd.sweep.spec import (
    CategoricalParam,
    GridParam,
    IntParam,
    LogUniformParam,
    UniformParam,
    ValidatedSweep,
    grid_combos,
    grid_points,
    setting_id,
)
from apd.sweep.trial import TrialPoint, trial_id_of

SEED_ATTR = "apd.seed"
DRAW_ATTR = "apd.draw"
INTERRUPTED_ATTR = "apd.interrupted"
"""Set on a trial the driver lost (killed sweep); it does not count and was enqueued again."""
RERUN_ATTR = "apd.rerun_of"
TRIAL_ID_ATTR = "apd.trial_id"
"""The trial's id in OUT (`t0003`): its row, run folder and MLflow run name."""

Space = Callable[[optuna.Trial], dict[str, Any]]


def suggest(trial: optuna.Trial, key: str, p: Any) -> Any:
    """One parameter through the matching `suggest_*` (grid parameters are categorical to Optuna)."""
    if isinstance(p, CategoricalParam | GridParam):
        return trial.suggest_categorical(key, p.values)
    if isinstance(p, UniformParam):
        return trial.suggest_float(key, p.low, p.high, step=p.step)
    if isinstance(p, LogUniformParam):
        return trial.suggest_float(key, p.low, p.high, log=True)
    assert isinstance(p, IntParam)
    return trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)


def make_space(sweep: ValidatedSweep) -> Space:
    """The define-by-run function: returns `{"apd": TrialPoint dict}` (Ray puts it in the config)."""
    params_spec = sweep.spec.parameters

    def space(trial: optuna.Trial) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for key, p in params_spec.items():
            if p.active(params):
                params[key] = suggest(trial, key, p)
        attrs = trial.user_attrs
        if SEED_ATTR in attrs:
            seed, draw = int(attrs[SEED_ATTR]), int(attrs[DRAW_ATTR])
        else:
            seed, draw = sweep.spec.seeds[0], trial.number
            trial.set_user_attr(DRAW_ATTR, draw)
            trial.set_user_attr(SEED_ATTR, seed)  # last: a trial with a seed has its whole point
            enqueue_replicas(trial.study, sweep, params, draw, held={replica_key(sweep, params, seed)})
        point = TrialPoint(trial.number, trial_id_of(trial.number), seed, draw, setting_id(params), params)
        trial.set_user_attr(TRIAL_ID_ATTR, point.trial_id)
        return {"apd": point.to_dict()}

    return space


def replica_key(sweep: ValidatedSweep, params: dict[str, Any], seed: int) -> tuple[str, int]:
    """Which member of its draw a point is: its grid-parameter combination and seed."""
    return setting_id({k: v for k, v in params.items() if k in _grids(sweep)}), seed


def enqueue_replicas(
    study: optuna.Study,
    sweep: ValidatedSweep,
    params: dict[str, Any],
    draw: int,
    held: Collection[tuple[str, int]] = (),
) -> None:
    """Queue the draw of `params` at every grid-parameter combination and seed, except the members
    in `held` (`replica_key`s)."""
    grids = _grids(sweep)
    drawn = {k: v for k, v in params.items() if k not in grids}
    for combo in grid_combos(sweep.spec.parameters, drawn) if grids else [{}]:
        for seed in sweep.spec.seeds:
            if (setting_id(combo), seed) not in held:
                study.enqueue_trial({**drawn, **combo}, user_attrs={SEED_ATTR: seed, DRAW_ATTR: draw})


def enqueue_grid(study: optuna.Study, sweep: ValidatedSweep) -> None:
    """Grid search: every point times every seed, in order; draw = index of the point."""
    for i, point in enumerate(grid_points(sweep.spec.parameters)):
        enqueue_replicas(study, sweep, point, i)


def _grids(sweep: ValidatedSweep) -> set[str]:
    """The grid parameters a draw is replicated over; none in a grid search, whose draws are whole
    grid points."""
    if sweep.spec.search.algorithm == "grid":
        return set()
    return {k for k, p in sweep.spec.parameters.items() if isinstance(p, GridParam)}


def make_sampler(sweep: ValidatedSweep, attempt: int = 1) -> BaseSampler:
    """The search's sampler. A resumed sweep (attempt > 1) reseeds it, or a seeded sampler would
    replay the first run's suggestions."""
    search = sweep.spec.search
    seed = search.seed if attempt == 1 else search.seed * 1_000_003 + attempt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if search.algorithm == "tpe":
            # constant_liar: parallel trials see each other as pending, so they spread out
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if search.algorithm == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        if search.algorithm == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        # random, and grid (whose trials are all enqueued, so the sampler is never asked)
        return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(sweep: ValidatedSweep) -> optuna.pruners.BasePruner:
    """The inline engine's pruner: asynchronous successive halving (Optuna's ASHA), steps as resource."""
    pruning = sweep.spec.pruning
    if pruning.algorithm == "none":
        return optuna.pruners.NopPruner()
    assert pruning.grace_steps is not None
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=pruning.grace_steps, reduction_factor=pruning.reduction_factor
    )


def directions(sweep: ValidatedSweep) -> list[Literal["minimize", "maximize"]]:
    return ["minimize" if o.mode == "min" else "maximize" for o in sweep.spec.objective]


def pruning_sign(sweep: ValidatedSweep) -> float:
    """Optuna's pruner ranks intermediate values in the study's direction; flip the pruning metric
    when its mode differs (e.g. prune on total_loss, min, while maximising mmcs)."""
    obj_min = sweep.spec.objective[0].mode == "min"
    return 1.0 if obj_min == (sweep.spec.pruning.mode == "min") else -1.0


def intermediate_value(sweep: ValidatedSweep, record: dict[str, float]) -> float | None:
    """What a trial reports to Optuna at a step (`trial.report`, shown by optuna-dashboard): the
    pruning metric, negated as `pruning_sign` says when a pruner reads it. None when Optuna takes
    none (multi-objective studies) or the value is not finite."""
    if sweep.spec.multi_objective:
        return None
    value = record.get(sweep.spec.pruning.metric)
    if value is None or not math.isfinite(value):
        return None
    return pruning_sign(sweep) * value if sweep.spec.pruning.algorithm != "none" else float(value)


class PackDrawer:
    """Asks the study for trials and hands out packs of up to `size` points that can share one
    (`apd.pack.pack_key`): the trials asked in a row (a draw, then its queued replicas) fill a pack
    first; a point that fits none waits for the next. At most `limit` trials are asked in all."""

    def __init__(self, study: optuna.Study, sweep: ValidatedSweep, size: int, limit: int) -> None:
        self.study, self.sweep, self.size, self.limit = study, sweep, size, limit
        self.space = make_space(sweep)
        self.asked = 0
        self.pending: list[tuple[optuna.Trial, TrialPoint, str]] = []

    def next_pack(self) -> list[tuple[optuna.Trial, TrialPoint]]:
        """The next pack (empty when every trial was handed out)."""
        while self.asked < self.limit and not self._full():
            trial = self.study.ask()
            self.asked += 1
            point = TrialPoint.from_dict(self.space(trial)["apd"])
            self.pending.append((trial, point, self._key(point)))
        if not self.pending:
            return []
        groups: dict[str, list[tuple[optuna.Trial, TrialPoint, str]]] = {}
        for item in self.pending:
            groups.setdefault(item[2], []).append(item)
        first = self.pending[0][2]
        key = max(groups, key=lambda k: (min(len(groups[k]), self.size), k == first))
        chosen = groups[key][: self.size]
        self.pending = [item for item in self.pending if item not in chosen]
        return [(trial, point) for trial, point, _ in chosen]

    def _full(self) -> bool:
        """A pack is ready: one group holds `size` points, or enough wait that packing should start."""
        counts: dict[str, int] = {}
        for _, _, key in self.pending:
            counts[key] = counts.get(key, 0) + 1
        return max(counts.values(), default=0) >= self.size or len(self.pending) >= PENDING_PACKS * self.size

    def _key(self, point: TrialPoint) -> str:
        """Points whose configs do not validate each run alone (and fail there, with the reason)."""
        from pydantic import ValidationError

        from apd.pack import pack_key

        try:
            return pack_key(self.sweep.config(point.params, point.seed))
        except (ValidationError, ValueError):
            return f"invalid:{point.trial_id}"


PENDING_PACKS = 4
"""Asked trials may wait for a compatible pack up to this many packs' worth before the fullest runs."""
