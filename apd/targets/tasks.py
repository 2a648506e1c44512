"""Each target family's data, labels and training loss (method notes 2.1-2.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from apd.data import sample_sparse_features
from apd.targets.base import Target
from apd.targets.gated import GatedMLP
from apd.targets.resid_mlp import ResidMLP
from apd.targets.specs import GatedSpec, ResidMLPSpec, TargetSpec, TMSSpec


def model_device(model: Target) -> torch.device:
    return next(model.parameters()).device


def sample_batch(
    model: Target,
    batch_size: int,
    *,
    feature_probability: float,
    value_range: tuple[float, float],
    data_generation_type: str = "at_least_zero_active",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Inputs `(batch, instances, n_inputs)` on the model's device: sparse features, or the gated inputs."""
    if isinstance(model, GatedMLP):
        return model.sample_inputs(
            batch_size,
            control_probability=feature_probability,
            data_generation_type=data_generation_type,
            generator=generator,
        )
    return sample_sparse_features(
        batch_size,
        model.n_instances,
        model.n_inputs,
        feature_probability=feature_probability,
        value_range=value_range,
        data_generation_type=data_generation_type,
        generator=generator,
        device=model_device(model),
    )


def resid_label_coeffs(spec: ResidMLPSpec) -> Tensor:
    """`c (n_features,)` on the CPU: ones, or U[1, 2] from `label_fn_seed`."""
    if spec.use_trivial_label_coeffs:
        return torch.ones(spec.n_features)
    return torch.rand(spec.n_features, generator=torch.Generator().manual_seed(spec.label_fn_seed)) + 1


def resid_labels(x: Tensor, coeffs: Tensor, label_type: str) -> Tensor:
    """`x + ReLU(c x)` (act_plus_resid) or `|c x|` (abs), elementwise per feature."""
    cx = x * coeffs.to(x.device)
    return x + F.relu(cx) if label_type == "act_plus_resid" else cx.abs()


def feature_importances(n_features: int, importance_val: float, device: torch.device | str) -> Tensor:
    """Feature i weighs `importance_val^i`."""
    return importance_val ** torch.arange(n_features, device=device, dtype=torch.float32)


def tms_loss(out: Tensor, labels: Tensor, importance: float = 1.0) -> Tensor:
    """Sum over instances of the mean over batch and features of `imp (labels - out)^2`."""
    return (importance * (labels - out) ** 2).mean(dim=(0, 2)).sum()


def readoff_loss(out: Tensor, labels: Tensor, importances: Tensor) -> Tensor:
    """Mean over batch, instances and features of `imp_i (out - labels)^2`."""
    return (importances * (out - labels) ** 2).mean()


def resid_stream_loss(model: ResidMLP, x: Tensor, labels: Tensor) -> Tensor:
    """Mean squared distance between the final residual stream and `labels @ W_E`."""
    r = model.embed(x)
    for i in range(model.n_layers):
        r = r + model.apply_layer(f"mlp_out_{i}", F.relu(model.apply_layer(f"mlp_in_{i}", r, None)), None)
    return ((r - model.embed(labels)) ** 2).mean()


def task_labels(spec: TargetSpec, model: Target, x: Tensor) -> Tensor:
    """What the target was trained to output for `x` (TMS: |x|, as the reference code)."""
    if isinstance(spec, TMSSpec):
        return x.abs()
    if isinstance(spec, ResidMLPSpec):
        return resid_labels(x, resid_label_coeffs(spec), spec.label_type)
    if isinstance(spec, GatedSpec):
        assert isinstance(model, GatedMLP)
        return model.labels(x)
    raise TypeError(f"{spec.kind} targets have no task labels")


def task_loss(spec: TargetSpec, model: Target, x: Tensor) -> Tensor:
    """The training loss of the spec's recipe on inputs `x` (gated: MSE to the analytic output)."""
    labels = task_labels(spec, model, x)
    if isinstance(spec, TMSSpec):
        return tms_loss(model(x), labels, spec.importance)
    if isinstance(spec, ResidMLPSpec):
        assert isinstance(model, ResidMLP)
        if spec.loss_type == "resid":
            return resid_stream_loss(model, x, labels)
        return readoff_loss(model(x), labels, feature_importances(spec.n_features, spec.importance_val, x.device))
    return ((model(x) - labels) ** 2).mean()
