"""Target families and registered targets: one registry line each (docs/method.md for every number).

`FAMILIES` maps a spec's `kind` to its `Family` (`apd.targets.family` says how to add one);
`TARGETS` names specs. A config's `target` may override any field of its named spec
(`target.n_hidden: 3`, `--set target.train.steps=500`); `resolve_spec` applies them.

Recipes: TMS as the reference `train_tms.py` (AdamW wd 0.01, lr 5e-3 with linear decay to 0; the
paper's constant LR is `lr_schedule="constant"`). The `-id` variants (a frozen identity hidden
layer) exist only in the SPD paper, so they use its retrained-target recipe: 10k steps, constant
5e-3, batch 1024 (5-2) / 8192 (40-10), with the instance counts of the plain variants (instances
train independently). Residual MLPs use the published 1-layer recipe for every depth (the 2- and
3-layer recipes are unpublished): AdamW wd 0.01, lr 3e-3 quarter-cosine, batch 2048, 10k steps.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from apd.config import format_validation_error
from apd.errors import ApdError, ConfigError
from apd.targets.base import Target
from apd.targets.family import Family, TargetSpec, TrainRecipe
from apd.targets.file import FileFamily
from apd.targets.gated import GatedFamily, GatedSpec
from apd.targets.resid_mlp import ResidMLPFamily, ResidMLPSpec
from apd.targets.tms import TMSFamily, TMSSpec

FAMILIES: dict[str, Family] = {
    "tms": TMSFamily(),
    "resid_mlp": ResidMLPFamily(),
    "gated": GatedFamily(),
    "file": FileFamily(),
}
"""Family kind -> its `Family`: the one place the toolkit learns what a target family is."""


def register_family(family: Family) -> None:
    """Add a family; kinds are unique (registering the same class again is a no-op)."""
    known = FAMILIES.get(family.kind)
    if known is not None and type(known) is not type(family):
        raise ValueError(f"target family {family.kind!r} is already registered ({type(known).__name__})")
    FAMILIES[family.kind] = family
    _adapter.cache_clear()


def get_family(kind: str) -> Family:
    """The family of `kind`; ConfigError listing the known ones otherwise."""
    try:
        return FAMILIES[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown target family {kind!r}; known: {', '.join(FAMILIES)}") from None


def family_of_model(model: Target) -> Family:
    """The family whose ground truth judges decompositions of `model` (its `kind`)."""
    kind = getattr(model, "kind", None)
    if kind is None:
        raise ApdError(f"{type(model).__name__}: a Target needs `kind`, the family that judges it")
    return get_family(kind)


@functools.cache
def _adapter() -> TypeAdapter[Any]:
    members = tuple(f.spec_type for f in FAMILIES.values())
    union = members[0] if len(members) == 1 else Union[members]  # type: ignore[valid-type]  # noqa: UP007
    return TypeAdapter(Annotated[union, Field(discriminator="kind")])  # type: ignore[arg-type]


def parse_spec(data: Any, *, source: str = "target spec") -> TargetSpec:
    """Validate a spec dict (as stored in a target file) as its family's spec; ConfigError naming `source`."""
    try:
        spec: TargetSpec = _adapter().validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return spec


_RESID = TrainRecipe(steps=10_000, batch_size=2048, lr=3e-3, lr_schedule="cosine")

TARGETS: dict[str, TargetSpec] = {
    "tms-5-2": TMSSpec(
        description="TMS 5 features -> 2 hidden, 12 instances",
        n_features=5, n_hidden=2, n_instances=12,
        train=TrainRecipe(steps=5000, batch_size=1024, lr=5e-3, lr_schedule="linear"),
    ),
    "tms-40-10": TMSSpec(
        description="TMS 40 features -> 10 hidden, 3 instances",
        n_features=40, n_hidden=10, n_instances=3,
        train=TrainRecipe(steps=2000, batch_size=2048, lr=5e-3, lr_schedule="linear"),
    ),
    "tms-5-2-id": TMSSpec(
        description="TMS 5-2 with a frozen identity hidden layer (SPD paper), 12 instances",
        n_features=5, n_hidden=2, n_instances=12, n_hidden_layers=1,
        train=TrainRecipe(steps=10_000, batch_size=1024, lr=5e-3, lr_schedule="constant"),
    ),
    "tms-40-10-id": TMSSpec(
        description="TMS 40-10 with a frozen identity hidden layer (SPD paper), 3 instances",
        n_features=40, n_hidden=10, n_instances=3, n_hidden_layers=1,
        train=TrainRecipe(steps=10_000, batch_size=8192, lr=5e-3, lr_schedule="constant"),
    ),
    "resid-mlp-1": ResidMLPSpec(
        description="residual MLP, 100 features, d_embed 1000, 1 layer x 50 neurons",
        n_features=100, d_embed=1000, d_mlp=50, n_layers=1, train=_RESID,
    ),
    "resid-mlp-2": ResidMLPSpec(
        description="residual MLP, 100 features, d_embed 1000, 2 layers x 25 neurons",
        n_features=100, d_embed=1000, d_mlp=25, n_layers=2, train=_RESID,
    ),
    "resid-mlp-3": ResidMLPSpec(
        description="residual MLP, 102 features, d_embed 1000, 3 layers x 17 neurons (SPD paper)",
        n_features=102, d_embed=1000, d_mlp=17, n_layers=3, train=_RESID,
    ),
    "gated-4": GatedSpec(
        description="hand-coded gated functions: 4 functions x 10 ReLUs over 2 residual layers",
    ),
}  # fmt: skip


def target_names() -> list[str]:
    """Registered target names, in registry order."""
    return list(TARGETS)


def get_spec(name: str) -> TargetSpec:
    """The registered spec; ConfigError listing the known names otherwise."""
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def override_spec(name: str, overrides: Mapping[str, Any]) -> TargetSpec:
    """The registered spec `name` with `overrides` (nested dicts merge); pydantic's ValidationError
    with the overridden field's location (e.g. `n_hidden`, `train.steps`) when they are invalid."""
    spec = get_spec(name)
    if not overrides:
        return spec
    for key, value in overrides.items():
        if key == "kind":
            raise _error(key, value, "cannot be overridden (the family is fixed by the target name)")
    try:
        return type(spec).model_validate(_merge(spec.to_dict(), overrides))
    except ValidationError as e:
        # a rule across fields (no location of its own) is pinned on the first override that met it
        key, value = next(iter(overrides.items()))
        errors = [
            {**err, "loc": tuple(err["loc"])} if err["loc"] else {**err, "loc": (key,), "input": value}
            for err in e.errors()
        ]
        raise ValidationError.from_exception_data(f"target {name}", errors) from None  # type: ignore[arg-type]


def _error(key: str, value: Any, message: str) -> ValidationError:
    line = {"type": "value_error", "loc": (key,), "input": value, "ctx": {"error": ValueError(message)}}
    return ValidationError.from_exception_data("target", [line])  # type: ignore[list-item]


def check_overrides(name: str | None, overrides: Mapping[str, Any]) -> None:
    """Validate `target.<field>` overrides of a config's target (TargetRef calls it)."""
    if not overrides:
        return
    key, value = next(iter(overrides.items()))
    if name is None:
        raise _error(key, value, "a spec override needs a registered target.name (a target file's network is fixed)")
    if name not in TARGETS:
        raise _error(key, value, f"unknown target {name!r} to override; known: {', '.join(TARGETS)}")
    override_spec(name, overrides)


def resolve_spec(name: str, overrides: Mapping[str, Any] | None = None) -> TargetSpec:
    """The spec a config's target names, with its overrides; one-line ConfigError when they are invalid."""
    try:
        return override_spec(name, overrides or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "target")) from None
