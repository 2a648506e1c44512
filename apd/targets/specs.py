"""Typed target specs: architecture, data defaults and training recipe, tagged by `kind`.

A spec is everything needed to rebuild a target, so a trained file stores its spec and loads
without the registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

import torch
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from apd.config import BaseConfig, NonNegativeFloat, PositiveFloat, PositiveInt, Probability, format_validation_error
from apd.errors import ConfigError
from apd.targets.base import Target
from apd.targets.gated import GatedMLP
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

ValueRange = tuple[float, float]


class TrainRecipe(BaseConfig):
    """AdamW training of a target on its own data (method notes 2.2, 2.3)."""

    steps: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    lr_schedule: Literal["constant", "linear", "cosine"]
    """`linear` 1 - t/T (TMS code), `cosine` cos(pi t / (2 (T - 1))) (resid code), see apd.schedules."""
    weight_decay: NonNegativeFloat = 0.01


class _SparseData(BaseConfig):
    @model_validator(mode="after")
    def _range(self) -> Self:
        vr = getattr(self, "value_range", None)
        if vr is not None and vr[0] > vr[1]:
            raise ValueError(f"value_range must be (lo, hi) with lo <= hi (got {vr})")
        return self


class TMSSpec(_SparseData):
    """Toy model of superposition `ReLU(W^T [I] W x + b)`; loss sum_instances mean imp (x - x_hat)^2."""

    kind: Literal["tms"] = "tms"
    description: str = ""
    n_features: PositiveInt
    n_hidden: PositiveInt
    n_instances: PositiveInt = 1
    n_hidden_layers: Annotated[int, Field(ge=0)] = 0
    hidden_init: Literal["identity", "random"] = "identity"
    """Frozen hidden matrices: identity (`fixed_identity_hidden_layers`) or randn."""
    feature_probability: Probability = 0.05
    value_range: ValueRange = (0.0, 1.0)
    importance: PositiveFloat = 1.0
    train: TrainRecipe


class ResidMLPSpec(_SparseData):
    """Residual MLP trained on labels `y = x + ReLU(c x)` (or `|c x|`)."""

    kind: Literal["resid_mlp"] = "resid_mlp"
    description: str = ""
    n_features: PositiveInt
    d_embed: PositiveInt
    d_mlp: PositiveInt
    """Neurons per layer."""
    n_layers: PositiveInt = 1
    n_instances: PositiveInt = 1
    label_type: Literal["act_plus_resid", "abs"] = "act_plus_resid"
    use_trivial_label_coeffs: bool = True
    """c = 1 for every feature; otherwise c ~ U[1, 2] seeded by `label_fn_seed`."""
    label_fn_seed: int = 0
    loss_type: Literal["readoff", "resid"] = "readoff"
    """`readoff`: mean imp (y_hat - y)^2; `resid`: mean (r_final - y W_E)^2 on the residual stream."""
    importance_val: PositiveFloat = 1.0
    """Feature i has importance importance_val^i."""
    feature_probability: Probability = 0.01
    value_range: ValueRange = (-1.0, 1.0)
    train: TrainRecipe

    @model_validator(mode="after")
    def _resid_loss(self) -> Self:
        if self.loss_type == "resid" and self.importance_val != 1.0:
            raise ValueError("loss_type resid needs importance_val 1")
        return self


class GatedSpec(_SparseData):
    """Hand-coded gated function model (no training); `feature_probability` is the control-bit rate."""

    kind: Literal["gated"] = "gated"
    description: str = ""
    n_functions: PositiveInt = 4
    neurons_per_function: Annotated[int, Field(ge=2)] = 10
    n_layers: PositiveInt = 2
    feature_probability: Probability = 0.05
    value_range: ValueRange = (0.0, 5.0)
    """Range of the real input x."""

    @model_validator(mode="after")
    def _split(self) -> Self:
        if (self.n_functions * self.neurons_per_function) % self.n_layers:
            raise ValueError("n_functions * neurons_per_function must be divisible by n_layers")
        return self


class FileSpec(_SparseData):
    """A user-supplied linear+ReLU stack (format in `apd.targets.file`); set values override the file's."""

    kind: Literal["file"] = "file"
    description: str = ""
    path: str
    feature_probability: Probability | None = None
    value_range: ValueRange | None = None


TargetSpec = Annotated[TMSSpec | ResidMLPSpec | GatedSpec | FileSpec, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[TargetSpec] = TypeAdapter(TargetSpec)


def parse_spec(data: Any, *, source: str = "target spec") -> TargetSpec:
    """Validate a spec dict (as stored in a target file); ConfigError naming `source` otherwise."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def build_model(spec: TMSSpec | ResidMLPSpec | GatedSpec, seed: int = 0) -> Target:
    """A freshly initialised (or, for gated, hand-set) model on the CPU; `seed` fixes the init."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        if isinstance(spec, TMSSpec):
            return TMS(spec.n_features, spec.n_hidden, spec.n_instances, spec.n_hidden_layers, spec.hidden_init)
        if isinstance(spec, ResidMLPSpec):
            return ResidMLP(spec.n_features, spec.d_embed, spec.d_mlp, spec.n_layers, spec.n_instances)
        return GatedMLP(spec.n_functions, spec.neurons_per_function, spec.n_layers, spec.value_range, seed)
