"""Target models, one family per module, their registry, training recipes, cache and loading (docs/method.md)."""

from apd.targets.base import Layer, Target, run_with_cache
from apd.targets.family import Check, Column, EvalContext, Family, TargetSpec, TrainRecipe
from apd.targets.file import FileSpec
from apd.targets.gated import GatedSpec
from apd.targets.load import LoadedTarget, TargetInfo, describe_target, load_target
from apd.targets.registry import (
    FAMILIES,
    TARGETS,
    family_of_model,
    get_family,
    get_spec,
    parse_spec,
    register_family,
    resolve_spec,
    target_names,
)
from apd.targets.resid_mlp import ResidMLPSpec
from apd.targets.tms import TMSSpec
from apd.targets.train import cache_dir, cache_path, resolve_device, train, train_target, train_target_main

__all__ = [
    "FAMILIES",
    "TARGETS",
    "Check",
    "Column",
    "EvalContext",
    "Family",
    "FileSpec",
    "GatedSpec",
    "Layer",
    "LoadedTarget",
    "ResidMLPSpec",
    "TMSSpec",
    "Target",
    "TargetInfo",
    "TargetSpec",
    "TrainRecipe",
    "cache_dir",
    "cache_path",
    "describe_target",
    "family_of_model",
    "get_family",
    "get_spec",
    "load_target",
    "parse_spec",
    "register_family",
    "resolve_device",
    "resolve_spec",
    "run_with_cache",
    "target_names",
    "train",
    "train_target",
    "train_target_main",
]
