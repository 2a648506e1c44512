"""Target models: registry, training recipes, cache and loading (method notes section 2)."""

from apd.targets.base import Layer, Target, run_with_cache
from apd.targets.load import LoadedTarget, load_target
from apd.targets.registry import TARGETS, get_spec, target_names
from apd.targets.specs import FileSpec, GatedSpec, ResidMLPSpec, TargetSpec, TMSSpec, TrainRecipe, parse_spec
from apd.targets.train import cache_dir, cache_path, resolve_device, train, train_target, train_target_main

__all__ = [
    "TARGETS",
    "FileSpec",
    "GatedSpec",
    "Layer",
    "LoadedTarget",
    "ResidMLPSpec",
    "TMSSpec",
    "Target",
    "TargetSpec",
    "TrainRecipe",
    "cache_dir",
    "cache_path",
    "get_spec",
    "load_target",
    "parse_spec",
    "resolve_device",
    "run_with_cache",
    "target_names",
    "train",
    "train_target",
    "train_target_main",
]
