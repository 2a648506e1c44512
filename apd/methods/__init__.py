"""Decomposition methods: one registry line each (docs/architecture.md, "Add a method").

A config names its method with `method:` (default `apd`, so configs written before SPD existed
keep working); `validate_config` validates it as the discriminated union of the registered
methods' configs, and `method_of` gives the `Method` that runs it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from apd.config import DEFAULT_METHOD, MethodConfig
from apd.errors import ConfigError
from apd.methods.base import Decomposition, Members, Method, StepOutput

METHODS: dict[str, str | type[Method]] = {
    "apd": "apd.methods.apd:APD",
    "spd": "apd.methods.spd:SPD",
}
"""Method name -> `module:Class` of its `Method` (imported on first use), or the class itself."""


def register(name: str, target: str | type[Method]) -> None:
    """Add a method (`module:Class`, or a `Method` subclass); names are unique."""
    if name in METHODS and METHODS[name] != target:
        raise ValueError(f"method {name!r} is already registered as {METHODS[name]}")
    METHODS[name] = target
    _adapter.cache_clear()
    get_method.cache_clear()


def unregister(name: str) -> None:
    """Remove a method (a test that registered its own)."""
    METHODS.pop(name, None)
    _adapter.cache_clear()
    get_method.cache_clear()


def method_names() -> list[str]:
    return list(METHODS)


@functools.cache
def get_method(name: str) -> Method:
    """The `Method` registered as `name`; ConfigError listing the known ones otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method: unknown method {name!r}; known: {', '.join(METHODS)}")
    target = METHODS[name]
    if not isinstance(target, str):
        return target()
    module, cls = target.split(":")
    method: Method = getattr(importlib.import_module(module), cls)()
    return method


def method_of(cfg: MethodConfig) -> Method:
    return get_method(cfg.method)


def _tag(value: Any) -> str:
    method = value.get("method", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "method", None)
    return method if isinstance(method, str) and method in METHODS else "?"


@functools.cache
def _adapter() -> TypeAdapter[Any]:
    from typing import Annotated, Union

    members = tuple(Annotated[get_method(name).config_type, Tag(name)] for name in METHODS)
    union = Annotated[Union[members], Discriminator(_tag)]  # type: ignore[valid-type]  # noqa: UP007
    return TypeAdapter(union)


def validate_config(data: Any) -> MethodConfig:
    """The config as its method's type; pydantic's ValidationError (locations without the tag) otherwise."""
    if isinstance(data, dict):
        method = data.get("method", DEFAULT_METHOD)
        if method not in METHODS:
            raise ConfigError(f"method: unknown method {method!r}; known: {', '.join(METHODS)}")
    try:
        cfg: MethodConfig = _adapter().validate_python(data)
    except ValidationError as e:
        raise _untagged(e) from None
    return cfg


def _untagged(e: ValidationError) -> ValidationError:
    """The same errors with the union's tag (`apd`, `spd`) dropped from each location."""
    errors = []
    for err in e.errors():
        loc = tuple(err["loc"])
        if loc and loc[0] in METHODS:
            loc = loc[1:]
        errors.append({**err, "loc": loc})
    return ValidationError.from_exception_data(e.title, errors)  # type: ignore[arg-type]


__all__ = [
    "METHODS",
    "Decomposition",
    "Members",
    "Method",
    "StepOutput",
    "get_method",
    "method_names",
    "method_of",
    "register",
    "unregister",
    "validate_config",
]
