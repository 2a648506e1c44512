"""Typed configs for one decomposition: frozen pydantic models that reject unknown keys.

`MethodConfig` holds what every method shares (target, schedule, run, evaluation); each method's
config subclasses it (`apd.methods.<name>.config`) and `parse_config` picks one by its `method`
key. Experiment YAMLs ship in `apd/experiments/`.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from apd.errors import ConfigError


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads `true` as 1: `C: true` or `lr: yes` is a typo, not a number
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool), Field(ge=-(2**63), le=2**63 - 1)]
"""An integer setting: booleans refused, and within int64 (torch's sizes and seeds)."""
Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
"""A finite float setting (booleans, inf and nan refused)."""
Probability = Annotated[Float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[Float, Field(gt=0.0)]
NonNegativeFloat = Annotated[Float, Field(ge=0.0)]
PositiveInt = Annotated[Int, Field(gt=0)]

DataGenerationType = Literal[
    "at_least_zero_active",
    "exactly_one_active",
    "exactly_two_active",
    "exactly_three_active",
    "exactly_four_active",
    "exactly_five_active",
]
LRSchedule = Literal["constant", "linear", "cosine", "exponential"]


class BaseConfig(BaseModel):
    """Frozen, strict base with YAML round-tripping. Every float setting must be finite (`allow_inf_nan`),
    so a method's config that uses a plain `float` gets the check too."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls.from_dict(read_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, source, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


class TargetRef(BaseConfig):
    """Which target to decompose, and the data distribution used while decomposing it.

    Any other key overrides that field of the registered target's spec (`n_hidden: 3`,
    `train: {steps: 500}`): the target is then trained and cached under its own name
    (`apd.targets.train.cache_path`) and the run's config.yaml records the overrides.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str | None = None
    """Registered target name (trained once and cached by `apd train-target`)."""
    path: str | None = None
    """A target file written by `apd train-target` or a user-supplied network (`apd.targets.file`).
    A relative path is read relative to the config file that names it (`load_config`)."""
    seed: Int = 0
    """Training seed of a registered target (part of its cache key)."""
    feature_probability: Probability | None = None
    """Overrides the target's training feature probability for the decomposition data."""
    data_generation_type: DataGenerationType = "at_least_zero_active"

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name is None) == (self.path is None):
            raise ValueError("set exactly one of target.name and target.path")
        if self.model_extra:
            from apd.targets.registry import check_overrides

            check_overrides(self.name, self.model_extra)
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        """The spec fields this config overrides (`{}` for the registered spec)."""
        return dict(self.model_extra or {})


class EvalConfig(BaseConfig):
    """Ground-truth metrics: sample sizes and every threshold of the `recovered` verdict."""

    # TMS
    mmcs_min: Probability = 0.99
    ml2r_min: NonNegativeFloat = 0.8
    ml2r_max: PositiveFloat | None = None
    require_one_to_one: bool = True
    identity_hidden_rel_tol: NonNegativeFloat = 0.05
    # targets with known true mechanisms (TMS, gated, user files that ship `ground_truth`); defaults
    # calibrated on 60 TMS 5-2 instances at the paper's settings (bench/RESULTS.md): those the MMCS/ML2R
    # rule accepts have split shares 0.036-0.046 and mechanism cosines 0.986-0.992, the rest >= 0.19 / <= 0.87
    split_max: NonNegativeFloat = 0.08
    """A feature is split when a second component holds more than this share of its true mechanism
    (least-squares coefficient, `apd.metrics.mechanisms`): 0.5 for a feature halved over two
    components, 0.1 for a 90/10 split; APD leaves about 0.04 in other components of a recovered feature."""
    mechanism_cos_min: Probability = 0.97
    """Every true mechanism needs a matched component (Hungarian on flattened weights) at least this aligned."""
    mechanism_norm_min: NonNegativeFloat = 0.8
    mechanism_norm_max: PositiveFloat = 1.25
    """The matched component's norm over the mechanism's must lie in [min, max]."""
    # residual MLP
    contribution_cutoff: NonNegativeFloat = 0.04
    dedicated_min: Probability = 0.95
    norm_top1_mse_max: NonNegativeFloat = 1.0
    scrub_ratio_min: NonNegativeFloat = 10.0
    scrub_batches: PositiveInt = 100
    scrub_batch_size: PositiveInt | None = None
    """Defaults to the decomposition's batch size, as in the reference code."""
    # residual MLP, components grouped per matrix (SPD): neuron contributions of c*(l, f) vs the target's
    contribution_r_min: Probability = 0.95
    contribution_slope_min: NonNegativeFloat = 0.9
    contribution_slope_max: PositiveFloat = 1.1
    # any target
    identity_tol: Probability = 0.1
    figures: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        if self.mechanism_norm_min > self.mechanism_norm_max:
            lo, hi = self.mechanism_norm_min, self.mechanism_norm_max
            raise ValueError(f"mechanism_norm_min ({lo}) must be <= mechanism_norm_max ({hi})")
        return self


DEFAULT_METHOD = "apd"
"""The method of a config without a `method` key (every config written before SPD existed)."""


class MethodConfig(BaseConfig):
    """Settings every decomposition method shares: target, optimisation schedule, run and evaluation.

    Each method subclasses it with `method: Literal["name"]` and its own settings
    (`apd.methods.<name>.config`); `parse_config` picks the subclass by `method` (default `apd`).
    """

    method: str
    target: TargetRef
    # optimisation
    lr: PositiveFloat
    lr_schedule: LRSchedule = "constant"
    lr_exponential_halflife: PositiveFloat | None = None
    lr_warmup_pct: Probability = 0.0
    steps: PositiveInt
    batch_size: PositiveInt
    seed: Int = 0
    device: str = "auto"
    log_every: PositiveInt = 100
    """Steps between StepRecords (progress, callbacks, history); each record syncs the device."""
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _schedule(self) -> Self:
        if self.lr_schedule == "exponential" and self.lr_exponential_halflife is None:
            raise ValueError("lr_schedule exponential needs lr_exponential_halflife")
        return self

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> Self:
        if cls is not MethodConfig:
            return super().from_dict(data, source=source)
        return parse_config(data, source=source)  # type: ignore[return-value]


DecomposeConfig = MethodConfig
"""The config of one decomposition, whatever its method (annotations use this name)."""


def parse_config(data: Any, *, source: str = "config") -> MethodConfig:
    """Validate a config dict as the method its `method` key names (default `apd`); one-line ConfigError."""
    from apd.methods import get_method, method_names, validate_config

    model: type[BaseModel] | None = None
    if isinstance(data, dict):
        name = data.get("method", DEFAULT_METHOD)
        if not isinstance(name, str) or name not in method_names():
            raise ConfigError(f"{source}: method: {unknown_name('method', name, method_names())}")
        model = get_method(name).config_type
    try:
        return validate_config(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model)) from None


def unknown_target(cfg: MethodConfig) -> str | None:
    """`unknown target ...` when `cfg` names a target that is not registered; None otherwise."""
    from apd.targets import target_names

    names = target_names()
    if cfg.target.name is None or cfg.target.name in names:
        return None
    return unknown_name("target", cfg.target.name, names)


# ---------------------------------------------------------------------------------------------
# Messages: one line, naming the field, with the closest known name for a typo


def closest(name: object, known: Iterable[str]) -> str | None:
    """The known name nearest to `name` (difflib's ratio >= 0.6), if any."""
    matches = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_name(kind: str, name: object, known: Sequence[str]) -> str:
    """`unknown target 'tms-5-3'; did you mean 'tms-5-2'? known: ...` (the hint only when one is close)."""
    near = closest(name, known)
    hint = f" did you mean {near!r}?" if near is not None else ""
    return f"unknown {kind} {name!r};{hint} known: {', '.join(known)}"


def _unwrap(tp: Any) -> Any:
    """`Annotated[X, ...]` and `X | None` -> X (a union of several types stays)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        members = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) in (Union, types.UnionType) and len(members) == 1:
            tp = members[0]
            continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged(model: type[BaseModel], tag: object) -> bool:
    """Whether one of `model`'s fields is a Literal that admits `tag` (a discriminated-union member)."""
    for field in model.model_fields.values():
        tp = _unwrap(field.annotation)
        if get_origin(tp) is Literal and tag in get_args(tp):
            return True
    return False


def section_keys(model: type[BaseModel], loc: Sequence[Any]) -> tuple[list[str], list[str]] | None:
    """The keys allowed in the section at pydantic location `loc` under `model`, and `loc` without
    union tags; None when `loc` does not lead to a section."""
    tp: Any = model
    path: list[str] = []
    for part in loc:
        tp = _unwrap(tp)
        origin = get_origin(tp)
        if _is_model(tp):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif origin is dict:
            tp = get_args(tp)[1]
        elif origin is list:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in map(_unwrap, get_args(tp)) if _is_model(m) and _tagged(m, part)]
            if len(members) != 1:
                return None
            tp = members[0]
            continue  # a discriminator tag pydantic inserts: not a key
        else:
            return None
        path.append(str(part))
    tp = _unwrap(tp)
    return (list(tp.model_fields), path) if _is_model(tp) else None


def dotted_keys(model: type[BaseModel]) -> list[str]:
    """Every setting of `model` as a dotted key (`lr`, `target.seed`, `eval.mmcs_min`, ...)."""
    out = []
    for name, field in model.model_fields.items():
        tp = _unwrap(field.annotation)
        out += [f"{name}.{k}" for k in dotted_keys(tp)] if _is_model(tp) else [name]
    return out


def key_hint(model: type[BaseModel] | None, loc: Sequence[Any]) -> str:
    """`; did you mean 'eval.mmcs_min'?` for the unknown key at `loc`, or '' when nothing is close."""
    found = section_keys(model, loc[:-1]) if model is not None and loc else None
    if found is None:
        return ""
    keys, path = found
    near = closest(loc[-1], keys)
    return f"; did you mean {'.'.join([*path, near])!r}?" if near is not None else ""


def choice_hint(err: Any) -> str:
    """`; did you mean 'gradient'?` for a Literal error whose input is close to one of the choices."""
    if err["type"] != "literal_error" or not isinstance(err.get("input"), str):
        return ""
    near = closest(err["input"], re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", ""))))
    return f"; did you mean {near!r}?" if near is not None else ""


MAPPING_ERRORS = ("model_type", "model_attributes_type", "dict_type")
"""pydantic's error types for a scalar or list where a section (mapping) belongs."""


def format_validation_error(e: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """The first pydantic error as `source: dotted.field: message (got value)`. `model` (the class
    validated) lets an unknown key name the closest known one."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    hint = choice_hint(err)
    if err["type"] == "extra_forbidden":
        msg, hint = "unknown key", key_hint(model, err["loc"])
    elif err["type"] in MAPPING_ERRORS:
        msg = "expected a mapping of keys"
    got = "" if err["type"] in ("missing", "extra_forbidden") or not loc else f" (got {err['input']!r})"
    extra = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{source}: {loc + ': ' if loc else ''}{msg}{got}{hint}{extra}"


# ---------------------------------------------------------------------------------------------
# Files, experiment registry and overrides


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one silently, so a repeated `search:` would drop the first block)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then an explicit key overrides it, as YAML intends
            key = self.construct_object(key_node, deep=True)
            try:
                first = lines.get(key)
            except TypeError:  # unhashable: the base class says so
                continue
            if first is not None:
                raise DuplicateKeyError(
                    None, None, f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark
                )
            lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str) -> Any:
    """YAML text as Python data (safe types only, no duplicate keys); a one-line ConfigError otherwise."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except DuplicateKeyError as e:
        assert e.problem_mark is not None
        raise ConfigError(f"{source}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise ConfigError(f"{source}:{where} not valid YAML ({_one_line(problem)})") from None
    except (ValueError, RecursionError) as e:  # e.g. a date like 2024-02-30
        raise ConfigError(f"{source}: not valid YAML ({_one_line(str(e) or type(e).__name__)})") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_yaml(path: str | Path) -> Any:
    """A YAML file as Python data. Every problem (missing, a directory, unreadable, not UTF-8 text,
    not YAML, a duplicated key) is a one-line ConfigError naming the file, the one reader every
    config, sweep and experiment file goes through."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a YAML file")
    if not p.exists():
        raise ConfigError(f"{p}: no such file")
    if not p.is_file():
        raise ConfigError(f"{p}: not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file (invalid UTF-8 at byte {e.start})") from None
    return load_yaml_text(text, str(p))


def check_output_dir(out: Path, flag: str = "--out") -> None:
    """`out` must be a writable folder, or one that can be created: checked before anything runs."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a folder ({flag})")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if not out.exists() and parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(f"{out}: cannot create a folder in {parent} ({flag})")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: not writable ({flag})")


def experiment_names() -> list[str]:
    """Experiment configs shipped in `apd/experiments/`."""
    files = resources.files("apd") / "experiments"
    return sorted(f.name.removesuffix(".yaml") for f in files.iterdir() if f.name.endswith(".yaml"))


def experiment_path(name: str) -> Path:
    path = Path(str(resources.files("apd") / "experiments" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(unknown_name("experiment", name, experiment_names()))
    return path


def resolve_experiment(name_or_path: str | Path) -> Path:
    """A registered experiment name or a path to a config YAML."""
    p = Path(name_or_path)
    if not str(name_or_path).strip():
        raise ConfigError("empty experiment name (give a registered one, see `apd list`, or a config YAML)")
    if p.suffix in (".yaml", ".yml") or p.exists():
        if p.is_dir():
            raise ConfigError(f"{p}: is a directory, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"{p}: no such file")
        return p
    return experiment_path(str(name_or_path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["topk=0.5", "target.seed=1"]` -> `{"topk": 0.5, "target.seed": 1}` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: {key!r} has an empty part (expected e.g. target.seed=1)")
        try:
            out[key] = load_yaml_text(value, "") if value.strip() else None
        except ConfigError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy). Unknown keys are left for validation to reject."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {part} is not a section")
            node = child
        node[leaf] = value
    return out


def absolute_target_path(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """`data` with a relative `target.path` made absolute against `base_dir` (where the file naming it is)."""
    target = data.get("target")
    if isinstance(target, dict) and isinstance(target.get("path"), str):
        p = Path(target["path"]).expanduser()
        if not p.is_absolute():
            return {**data, "target": {**target, "path": os.path.abspath(base_dir / p)}}
    return data


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> DecomposeConfig:
    """Load an experiment by registered name or path and apply dotted overrides.

    A relative `target.path` in the file is read relative to the file; one given as an override,
    relative to the working directory. Either way the config holds it absolute.
    """
    path = resolve_experiment(name_or_path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    if "experiment" in data and "objective" in data:
        raise ConfigError(f"{path}: a sweep file (it has experiment: and objective:); run it with apd sweep")
    source = str(path) if not overrides else f"{path} with overrides"
    try:
        merged = apply_overrides(absolute_target_path(data, path.parent), overrides or {})
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    cfg = parse_config(absolute_target_path(merged, Path.cwd()), source=source)
    if (problem := unknown_target(cfg)) is not None:
        raise ConfigError(f"{source}: target.name: {problem}")
    return cfg
