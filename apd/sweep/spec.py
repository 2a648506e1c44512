"""The sweep YAML: a frozen, strict schema, semantic checks and validation of every sweep point.

A sweep file names an experiment (registered name or config path), `fixed` overrides, the swept
`parameters`, the replica `seeds`, the search, objective, pruning, resources, tracking and output.
`load_spec` returns a `ValidatedSweep`: the spec plus the experiment's base config, after building a
`DecomposeConfig` for every bound and choice (every point, for grid search), so a bad key or value
fails in one line naming the file and field before anything is launched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from apd.config import (
    DEFAULT_METHOD,
    MAPPING_ERRORS,
    BaseConfig,
    DecomposeConfig,
    Float,
    Int,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    absolute_target_path,
    apply_overrides,
    choice_hint,
    closest,
    dotted_keys,
    key_hint,
    read_yaml,
    resolve_experiment,
    unknown_name,
    unknown_target,
)
from apd.errors import ConfigError

Scalar = str | bool | int | float | None
"""A categorical value (Optuna's categorical choices must be one of these)."""
SCALAR_TAGS = ("str", "bool", "int", "float")
"""The location parts pydantic adds for the members of `Scalar` when a value fits none."""

RESERVED_KEYS = {
    "seed": "set the replica seeds with `seeds`",
    "log_every": "set the reporting interval with `report_every`",
    "method": "a sweep runs one method: set it in the experiment (one sweep file per method)",
}


def step_keys(method: str) -> tuple[str, ...]:
    """Keys of every step record of `method`: the only metrics a pruner can watch while a trial runs."""
    from apd.methods import get_method

    m = get_method(method)
    return (*m.loss_keys, *m.stat_keys, "lr")


def objective_keys(method: str) -> tuple[str, ...]:
    """Scalar metrics.json keys a trial of `method` can be scored on."""
    from apd.metrics.keys import objective_keys as family_keys

    keys = ("steps_done", *(k for k in step_keys(method) if k != "lr"), *family_keys())
    return tuple(dict.fromkeys(keys))


# ---------------------------------------------------------------------------------------------
# Schema


class _Param(BaseConfig):
    when: dict[str, Scalar | list[Scalar]] | None = None
    """Only sample this parameter when every named parameter has the given value (or one of them)."""

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the values chosen so far."""
        for key, want in (self.when or {}).items():
            if key not in values:
                return False
            allowed = want if isinstance(want, list) else [want]
            if not any(_same(values[key], a) for a in allowed):
                return False
        return True


class CategoricalParam(_Param):
    """The search picks one of `values`."""

    type: Literal["categorical"]
    values: list[Scalar] = Field(min_length=1)


class GridParam(_Param):
    """Every value is run for each setting the search draws (like Ray Tune's `grid_search`)."""

    type: Literal["grid"]
    values: list[Scalar] = Field(min_length=1)


class UniformParam(_Param):
    """A float in [low, high]; with `step`, only low, low + step, ..., high."""

    type: Literal["uniform"]
    low: Float
    high: Float
    step: PositiveFloat | None = None


class LogUniformParam(_Param):
    """A float in [low, high] drawn uniformly in log space."""

    type: Literal["loguniform"]
    low: Float
    high: Float


class IntParam(_Param):
    """An integer in [low, high] in steps of `step` (log-spaced with `log: true`, then step 1)."""

    type: Literal["int"]
    low: Int
    high: Int
    step: PositiveInt = 1
    log: bool = False


Param = Annotated[CategoricalParam | GridParam | UniformParam | LogUniformParam | IntParam, Field(discriminator="type")]
PARAM_TYPES = ("categorical", "grid", "uniform", "loguniform", "int")


class SearchConfig(BaseConfig):
    algorithm: Literal["grid", "random", "tpe", "cmaes", "nsga2"] = "tpe"
    n_trials: PositiveInt | None = None
    """Settings the search draws; each runs once per grid combination and seed. Grid: all points."""
    seed: Int = 0
    """Sampler seed (reproducible suggestions with max_concurrent 1)."""


class Objective(BaseConfig):
    metric: str
    mode: Literal["min", "max"]


class PruningConfig(BaseConfig):
    algorithm: Literal["asha", "none"] = "none"
    metric: str = "total_loss"
    """A step-record key compared between trials at the same step (mind: loss coefficients rescale it)."""
    mode: Literal["min", "max"] = "min"
    grace_steps: PositiveInt | None = None
    """Steps every trial runs before it can be stopped (required for asha)."""
    reduction_factor: Annotated[Int, Field(ge=2)] = 2


class Resources(BaseConfig):
    cpus: PositiveFloat = 1.0
    gpus: NonNegativeFloat = 0.0


class Tracking(BaseConfig):
    enabled: bool = True
    uri: str | None = None
    """MLflow tracking URI; default sqlite:///OUT/mlflow.db (use http://host:5000 for a server)."""
    experiment: str | None = None
    """MLflow experiment name; default the sweep name."""


class SweepSpec(BaseConfig):
    """A whole sweep file."""

    name: str | None = None
    """Default: the file's stem."""
    description: str | None = None
    experiment: str
    """Registered experiment name (`apd list`) or a config YAML path (relative to this file)."""
    fixed: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides applied to every trial (e.g. `steps: 2000`, `target.seed: 1`)."""
    parameters: dict[str, Param] = Field(default_factory=dict)
    seeds: list[Int] = Field(default=[0], min_length=1)
    """Every drawn setting runs once per seed (DecomposeConfig.seed: components init and data)."""
    seed_target: bool = False
    """Also set target.seed to the replica seed (one trained target per seed)."""
    search: SearchConfig = SearchConfig()
    objective: list[Objective] = Field(min_length=1)
    pruning: PruningConfig = PruningConfig()
    resources: Resources = Resources()
    max_concurrent: PositiveInt | None = None
    """Trials at once (Ray engine; packs at once with `pack`); default as many as the resources allow."""
    pack: int | Literal["auto"] = 1
    """Trials trained together in one step, along the instance axis (`apd.pack`); `auto` measures the
    device at start-up (1 on a CPU, where packing does not pay). Incompatible points (other shapes,
    steps, target) go in different packs."""
    max_failures: Annotated[Int, Field(ge=0)] = 2
    """Ray retries of a trial whose worker or node died (resumed from its last checkpoint)."""
    report_every: PositiveInt | None = None
    """Steps between reports (history, MLflow curves, pruning); default the experiment's log_every."""
    checkpoint_every: PositiveInt | None = None
    """Steps between trial checkpoints (default every report); a multiple of report_every."""
    tracking: Tracking = Tracking()
    output: str | None = None
    """Output folder; default out/NAME. `apd sweep --out` overrides it."""

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, v: Any) -> Any:
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError("must be a positive integer or auto")
        return v

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @property
    def multi_objective(self) -> bool:
        return len(self.objective) > 1


@dataclass(frozen=True)
class ValidatedSweep:
    """A spec whose every point builds a valid `DecomposeConfig`, with what the engines need."""

    spec: SweepSpec
    name: str
    source: str
    experiment_path: Path
    base: dict[str, Any]
    """The experiment config with `fixed` applied (no swept values, no seed)."""
    report_every: int
    max_steps: int
    """Largest `steps` any point can have (ASHA's time limit)."""
    n_draws: int
    """Settings the search draws (search.n_trials, or the number of grid points)."""

    @property
    def group_size(self) -> int:
        """Trials per draw: every grid-parameter combination times every seed (grid search: seeds)."""
        combos = 1 if self.spec.search.algorithm == "grid" else len(grid_combos(self.spec.parameters, {}))
        return combos * len(self.spec.seeds)

    @property
    def total_trials(self) -> int:
        return self.n_draws * self.group_size

    @property
    def method(self) -> str:
        """The decomposition method every trial runs."""
        return str(self.base.get("method") or DEFAULT_METHOD)

    def config(self, params: Mapping[str, Any], seed: int) -> DecomposeConfig:
        """The trial config; raises pydantic's ValidationError (callers format it)."""
        from apd.methods import validate_config

        return validate_config(self.config_dict(params, seed))

    def target_field(self, params: Mapping[str, Any], cfg: DecomposeConfig) -> str:
        """The sweep field that chose `cfg`'s target: a parameter, a `fixed` key or the experiment file."""
        key = "target.path" if cfg.target.path is not None else "target.name"
        if key in params:
            return f"parameters.{key}{_field_of(self.spec.parameters[key], params[key])}"
        if key in self.spec.fixed or "target" in self.spec.fixed:
            return f"fixed.{key}"
        return f"experiment: {self.experiment_path}: {key}"

    def config_dict(self, params: Mapping[str, Any], seed: int) -> dict[str, Any]:
        extra: dict[str, Any] = {"seed": seed, "log_every": self.report_every}
        if self.spec.seed_target:
            extra["target.seed"] = seed
        return apply_overrides(self.base, {**params, **extra})

    def with_trials(self, n_trials: int) -> ValidatedSweep:
        """The same sweep with another number of draws (`apd sweep --trials`)."""
        if self.spec.search.algorithm == "grid":
            raise ConfigError(f"{self.source}: --trials: grid search runs every point ({self.n_draws})")
        search = self.spec.search.model_copy(update={"n_trials": n_trials})
        return replace(self, spec=self.spec.model_copy(update={"search": search}), n_draws=n_trials)

    def with_pack(self, pack: str) -> ValidatedSweep:
        """The same sweep with another pack size (`apd sweep --pack K|auto`), checked as the file's would be."""
        data = self.spec.to_dict() | {"pack": pack if pack == "auto" else _int_or_none(pack)}
        try:
            spec = SweepSpec.model_validate(data)
        except ValidationError as e:
            raise ConfigError("--pack: " + format_sweep_error(e, "").split(": ", 2)[-1]) from None
        _check(spec, f"{self.source} with --pack {pack}")
        _check_pack(spec, f"{self.source} with --pack {pack}", self.method)
        return replace(self, spec=spec)

    def resolved_dict(self) -> dict[str, Any]:
        """The spec as run: name, experiment path and trial count filled in (written to OUT/sweep.yaml)."""
        data = self.spec.to_dict()
        data["name"] = self.name
        data["search"]["n_trials"] = self.n_draws
        data["report_every"] = self.report_every
        if self.experiment_path.suffix in (".yaml", ".yml") and not _is_registered(self.spec.experiment):
            data["experiment"] = str(self.experiment_path.resolve())
        return data


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | Path) -> ValidatedSweep:
    """Read, check and validate a sweep file; every problem is a one-line ConfigError."""
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sweep keys")
    if "experiment" not in data and "target" in data:
        raise ConfigError(
            f"{source}: a decomposition config, not a sweep file (it has target:, no experiment:); run it with "
            "apd decompose, or name it in a sweep file's experiment:"
        )
    return validate_spec(data, source=source, base_dir=Path(path).parent)


def validate_spec(data: dict[str, Any], *, source: str, base_dir: Path = Path(".")) -> ValidatedSweep:
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_sweep_error(e, source, SweepSpec)) from None
    _check(spec, source)
    exp_path = _experiment_path(spec.experiment, base_dir, source)
    base = _base_config(exp_path, spec, source, base_dir)
    _check_metrics(spec, source, str(base.get("method") or DEFAULT_METHOD))
    _check_pack(spec, source, str(base.get("method") or DEFAULT_METHOD))
    report_every = spec.report_every or int(base.get("log_every") or DecomposeConfig.model_fields["log_every"].default)
    if spec.checkpoint_every is not None and spec.checkpoint_every % report_every:
        raise ConfigError(
            f"{source}: checkpoint_every: must be a multiple of report_every ({report_every}) "
            f"(got {spec.checkpoint_every})"
        )
    name = spec.name or Path(source).stem
    n_draws = len(grid_points(spec.parameters)) if spec.search.algorithm == "grid" else spec.search.n_trials
    assert n_draws is not None  # _check requires n_trials unless grid
    sweep = ValidatedSweep(spec, name, source, exp_path, base, report_every, 0, n_draws)
    return replace(sweep, max_steps=_validate_points(sweep))


def _int_or_none(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text  # validation names it


def _experiment_path(experiment: str, base_dir: Path, source: str) -> Path:
    """A path relative to the sweep file wins over one relative to the working directory."""
    near = base_dir / experiment
    try:
        return resolve_experiment(near if experiment.strip() and near.exists() else experiment)
    except ConfigError as e:
        raise ConfigError(f"{source}: experiment: {e}") from None


def _is_registered(experiment: str) -> bool:
    return not experiment.endswith((".yaml", ".yml")) and "/" not in experiment


def _base_config(exp_path: Path, spec: SweepSpec, source: str, base_dir: Path) -> dict[str, Any]:
    """The experiment with `fixed` applied; a relative target.path is read relative to the file naming it."""
    try:
        data = read_yaml(exp_path)
    except ConfigError as e:
        raise ConfigError(f"{source}: experiment: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: experiment: {exp_path}: expected a mapping of config keys")
    try:
        merged = apply_overrides(absolute_target_path(data, exp_path.parent), spec.fixed)
    except ConfigError as e:
        raise ConfigError(f"{source}: fixed.{e}") from None
    return absolute_target_path(merged, base_dir)


# ---------------------------------------------------------------------------------------------
# Semantic checks (structure and types are pydantic's)


def _check(spec: SweepSpec, source: str) -> None:
    def fail(where: str, msg: str) -> None:
        raise ConfigError(f"{source}: {where}: {msg}")

    for section in ("fixed", "parameters"):
        for key in getattr(spec, section):
            if not all(part.strip() for part in key.split(".")):
                fail(f"{section}.{key}", "a dotted key with an empty part")
    for key in spec.fixed:
        if key in RESERVED_KEYS:
            fail(f"fixed.{key}", RESERVED_KEYS[key])
    if spec.search.algorithm != "grid" and spec.search.n_trials is None:
        fail("search.n_trials", f"required for {spec.search.algorithm} search")
    if len(set(spec.seeds)) != len(spec.seeds):
        fail("seeds", f"must be distinct (got {spec.seeds})")
    seen: dict[str, Any] = {}
    for key, p in spec.parameters.items():
        _check_param(key, p, spec, seen, fail)
        seen[key] = p
    if spec.multi_objective and spec.search.algorithm == "cmaes":
        fail("search.algorithm", "cmaes is single-objective; use nsga2, tpe or random")
    _check_pruning(spec, fail)
    if spec.pack != 1 and spec.pack != "auto" and spec.pruning.algorithm != "none":
        fail("pack", "packed trials cannot be pruned (set pruning.algorithm: none, or pack: 1)")
    if spec.resources.gpus > 1 and spec.resources.gpus != int(spec.resources.gpus):
        fail("resources.gpus", f"fractional only below 1 (got {spec.resources.gpus})")


def _check_param(key: str, p: Any, spec: SweepSpec, seen: dict[str, Any], fail: Any) -> None:
    where = f"parameters.{key}"
    if key in RESERVED_KEYS:
        fail(where, RESERVED_KEYS[key])
    if key in spec.fixed:
        fail(where, "also set in fixed; keep one")
    for ref in p.when or {}:
        if ref not in seen:
            fail(f"{where}.when.{ref}", f"must name a parameter defined above {key}")
        if not isinstance(seen[ref], CategoricalParam | GridParam):
            fail(f"{where}.when.{ref}", "conditions need a categorical or grid parameter")
        if isinstance(p, GridParam) and not isinstance(seen[ref], GridParam) and spec.search.algorithm != "grid":
            # otherwise the number of trials per drawn setting would depend on the draw
            fail(f"{where}.when.{ref}", "a grid parameter can only depend on grid parameters")
    if isinstance(p, UniformParam | LogUniformParam | IntParam) and p.low >= p.high:
        fail(f"{where}.high", f"must be > low ({p.low:g}) (got {p.high:g})")
    if isinstance(p, LogUniformParam) and p.low <= 0:
        fail(f"{where}.low", f"must be > 0 for loguniform (got {p.low:g})")
    if isinstance(p, IntParam) and p.log and (p.low <= 0 or p.step != 1):
        fail(where, f"log int ranges need low > 0 and step 1 (got low {p.low}, step {p.step})")
    if isinstance(p, UniformParam | IntParam) and p.step is not None:
        n = (p.high - p.low) / p.step
        if abs(n - round(n)) > 1e-8:
            fail(f"{where}.step", f"high - low ({p.high - p.low:g}) must be a multiple of step (got {p.step:g})")
    if isinstance(p, CategoricalParam | GridParam) and len({json.dumps(v) for v in p.values}) != len(p.values):
        fail(f"{where}.values", f"must be distinct (got {p.values})")
    if spec.search.algorithm == "grid" and not _enumerable(p):
        fail(where, f"grid search needs values or a step ({p.type} without step)")


def _check_pruning(spec: SweepSpec, fail: Any) -> None:
    pruning = spec.pruning
    if pruning.algorithm == "none":
        return
    if spec.multi_objective:
        fail("pruning.algorithm", "multi-objective sweeps cannot prune (use none)")
    if pruning.grace_steps is None:
        fail("pruning.grace_steps", "required for asha")


def _check_pack(spec: SweepSpec, source: str, method: str) -> None:
    from apd.methods import get_method

    if spec.pack not in (1, "auto") and not get_method(method).pack_keys:
        raise ConfigError(f"{source}: pack: method {method} does not support packs (use pack: 1)")


def _check_metrics(spec: SweepSpec, source: str, method: str) -> None:
    """Objectives and the pruning metric must be keys the experiment's method reports."""
    from apd.methods import METHODS

    if method not in METHODS:
        raise ConfigError(f"{source}: experiment: method: {unknown_name('method', method, list(METHODS))}")
    allowed = objective_keys(method)
    for i, obj in enumerate(spec.objective):
        if obj.metric not in allowed:
            raise ConfigError(f"{source}: objective.{i}.metric: {unknown_name('metric', obj.metric, allowed)}")
    steps = step_keys(method)
    if spec.pruning.algorithm != "none" and spec.pruning.metric not in steps:
        near = closest(spec.pruning.metric, steps)
        hint = f"; did you mean {near!r}?" if near is not None else ""
        raise ConfigError(
            f"{source}: pruning.metric: must be a step metric, one of {', '.join(steps)} "
            f"(got {spec.pruning.metric!r}){hint}"
        )


# ---------------------------------------------------------------------------------------------
# Points: grid enumeration, corners, setting ids


def _enumerable(p: Any) -> bool:
    return isinstance(p, CategoricalParam | GridParam | IntParam) or (
        isinstance(p, UniformParam) and p.step is not None
    )


def param_values(p: Any) -> list[Any]:
    """All values of an enumerable parameter, in order."""
    if isinstance(p, CategoricalParam | GridParam):
        return list(p.values)
    if isinstance(p, IntParam):
        return list(range(p.low, p.high + 1, p.step))
    assert isinstance(p, UniformParam) and p.step is not None
    n = round((p.high - p.low) / p.step)
    return [round(p.low + i * p.step, 12) for i in range(n + 1)]


def corner_values(p: Any) -> list[Any]:
    """The values validation tries: every choice, or a range's bounds."""
    if isinstance(p, CategoricalParam | GridParam):
        return list(p.values)
    return [p.low, p.high]


def expand(
    params: Mapping[str, Any], choices: Mapping[str, list[Any]], start: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every assignment walking `params` in order: a param in `choices` branches over its list, one in
    `start` keeps that value, an inactive one (its `when` fails) is left out, others are skipped."""
    points: list[dict[str, Any]] = [{}]
    for key, p in params.items():
        nxt: list[dict[str, Any]] = []
        for pt in points:
            if not p.active(pt):
                nxt.append(pt)
            elif key in choices:
                nxt.extend({**pt, key: v} for v in choices[key])
            elif key in start:
                nxt.append({**pt, key: start[key]})
            else:
                nxt.append(pt)
        points = nxt
    return points


def grid_points(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every point of a grid search (conditional parameters only where active)."""
    return expand(params, {k: param_values(p) for k, p in params.items()}, {})


def grid_combos(params: Mapping[str, Any], drawn: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The grid-parameter combinations run for one drawn setting (one empty dict if none)."""
    grids = {k: list(p.values) for k, p in params.items() if isinstance(p, GridParam)}
    combos = expand(params, grids, drawn)
    return [{k: v for k, v in c.items() if k in grids} for c in combos]


def setting_id(params: Mapping[str, Any]) -> str:
    """A short hash of the swept values (without the seed): replicas across seeds share it."""
    blob = json.dumps(sorted(params.items()), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


MAX_CORNERS = 512


def corner_points(params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of bounds and choices, or (when too many) each one varied alone."""
    corners = {k: corner_values(p) for k, p in params.items()}
    if math.prod(len(v) for v in corners.values()) <= MAX_CORNERS:
        yield from expand(params, corners, {})
        return
    first = {k: v[0] for k, v in corners.items()}
    for key, values in corners.items():
        yield from expand(params, {key: values}, first)


def _validate_points(sweep: ValidatedSweep) -> int:
    """Build a config for every corner (grid: every point) and seed; return the largest `steps`."""
    spec = sweep.spec
    points: Sequence[dict[str, Any]] = (
        grid_points(spec.parameters) if spec.search.algorithm == "grid" else list(corner_points(spec.parameters))
    )
    max_steps = 0
    seeds = spec.seeds if spec.seed_target else spec.seeds[:1]
    for params, seed in itertools.product(points, seeds):
        try:
            cfg = sweep.config(params, seed)
        except ValidationError as e:
            raise ConfigError(_point_error(e, sweep, params)) from None
        except ConfigError as e:  # a dotted key runs through a non-section
            raise ConfigError(f"{sweep.source}: parameters.{e}") from None
        _check_target(sweep, params, cfg)
        max_steps = max(max_steps, cfg.steps)
    return max_steps


def _check_target(sweep: ValidatedSweep, params: Mapping[str, Any], cfg: DecomposeConfig) -> None:
    """A registered target name or an existing file, named by the sweep field that chose it (the
    file's contents are checked when the driver loads the targets, before any trial starts)."""
    problem = unknown_target(cfg)
    path = Path(cfg.target.path) if cfg.target.path is not None else None
    if path is not None and not path.is_file():
        problem = f"{path}: {'not a file' if path.exists() else 'no such file'}"
    if problem is not None:
        raise ConfigError(f"{sweep.source}: {sweep.target_field(params, cfg)}: {problem}")


def _point_error(e: ValidationError, sweep: ValidatedSweep, params: Mapping[str, Any]) -> str:
    """Name the sweep field that produced the bad value: a parameter bound/choice or a fixed key."""
    from apd.methods import get_method

    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = _message(err) + choice_hint(err)
    keys = dotted_keys(get_method(sweep.method).config_type)
    spec = sweep.spec
    setting = ", ".join(f"{k}={v!r}" for k, v in params.items())
    at = f" (at {setting})" if setting else ""
    named = re.match(r"([\w.]+): (.*)", msg) if not loc else None
    if named and named[1] in keys:  # a rule across fields whose message names the field (`topk: ...`)
        loc, msg = named[1], named[2] + at
    if err["type"] == "extra_forbidden":
        msg += key_hint(get_method(sweep.method).config_type, err["loc"])
    if loc in params:
        field = "" if err["type"] == "extra_forbidden" else _field_of(spec.parameters[loc], params[loc])
        return f"{sweep.source}: parameters.{loc}{field}: {msg}"
    if loc in spec.fixed or any(loc.startswith(f"{key}.") for key in spec.fixed):
        return f"{sweep.source}: fixed.{loc}: {msg}"
    if err["type"] == "extra_forbidden":
        return f"{sweep.source}: {sweep.experiment_path}: {loc}: {msg}"
    if named and named[1] in keys:
        return f"{sweep.source}: {loc}: {msg}"
    where = f"{loc}: " if loc else ""
    return f"{sweep.source}: {where}{msg}{at}"


def _field_of(p: Any, value: Any) -> str:
    if isinstance(p, CategoricalParam | GridParam):
        i = next(i for i, v in enumerate(p.values) if _same(v, value))
        return f".values.{i}"
    return ".low" if value == p.low else ".high"


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (YAML choices mix bools and ints)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


# ---------------------------------------------------------------------------------------------
# Error messages


def _message(err: Mapping[str, Any]) -> str:
    """pydantic's message, shortened for the common constraint types, with the offending value."""
    kind, ctx = err["type"], err.get("ctx") or {}
    short = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
    }
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind in MAPPING_ERRORS:
        return f"expected a mapping (got {_show(err['input'])})"
    if kind in short:
        msg = short[kind].format(**{k: _show(v) for k, v in ctx.items()})
    else:
        msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{msg} (got {_show(err['input'])})" if err["loc"] else msg


def _show(v: Any) -> str:
    """repr, but whole floats without the `.0` (YAML's `-1` becomes -1.0 in a float field)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


def format_sweep_error(e: ValidationError, source: str, model: type[BaseConfig] | None = None) -> str:
    """The first schema error as `source: dotted.field: message`, without pydantic's union tags;
    with `model` (the class validated), an unknown key names the closest known one."""
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    if len(loc) >= 3 and loc[0] == "parameters" and loc[2] in PARAM_TYPES:
        del loc[2]  # the discriminator tag pydantic inserts
    kind = err["type"]
    if loc and loc[-1] in SCALAR_TAGS and sum(x["loc"][:-1] == err["loc"][:-1] for x in e.errors()) > 1:
        # every member of a choice's union refused it: one message, not the first member's
        del loc[-1]
        kind, err = "scalar", {**err, "msg": "expected a string, a finite number, a boolean or null"}
    if kind == "union_tag_not_found":
        msg = f"needs type: one of {', '.join(PARAM_TYPES)}"
    elif kind == "union_tag_invalid":
        tag = err["ctx"]["tag"]
        near = closest(tag, PARAM_TYPES)
        hint = f"; did you mean {near!r}?" if near is not None else ""
        msg = f"unknown type {tag!r}; one of {', '.join(PARAM_TYPES)}{hint}"
    elif kind in MAPPING_ERRORS:
        msg = f"expected a mapping (got {err['input']!r})"
    elif kind == "extra_forbidden":
        msg = "unknown key" + (key_hint(model, err["loc"]) if model is not None else "")
    else:
        msg = _message(err) + choice_hint(err)
    where = ".".join(loc)
    return f"{source}: {where + ': ' if where else ''}{msg}"


__all__ = [
    "CategoricalParam",
    "GridParam",
    "IntParam",
    "LogUniformParam",
    "Objective",
    "SweepSpec",
    "UniformParam",
    "ValidatedSweep",
    "load_spec",
    "validate_spec",
]
