"""Labels and training losses on tiny tensors, checked against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from apd.targets import TrainRecipe, get_family
from apd.targets.resid_mlp import (
    ResidMLP,
    ResidMLPSpec,
    feature_importances,
    readoff_loss,
    resid_label_coeffs,
    resid_labels,
    resid_stream_loss,
)
from apd.targets.tms import tms_loss


def task_loss(spec: ResidMLPSpec, model: ResidMLP, x: torch.Tensor) -> torch.Tensor:
    return get_family(spec.kind).train_loss(spec, model, x)


RECIPE = TrainRecipe(steps=1, batch_size=1, lr=1e-3, lr_schedule="constant")


def test_resid_labels_by_hand() -> None:
    x = torch.tensor([[[-1.0, 0.5, 2.0]]])
    c = torch.tensor([1.0, 1.0, 2.0])
    # x + ReLU(c x) = [-1 + 0, 0.5 + 0.5, 2 + 4]; |c x| = [1, 0.5, 4]
    assert resid_labels(x, c, "act_plus_resid").tolist() == [[[-1.0, 1.0, 6.0]]]
    assert resid_labels(x, c, "abs").tolist() == [[[1.0, 0.5, 4.0]]]


def test_label_coeffs_trivial_or_seeded_uniform() -> None:
    spec = ResidMLPSpec(n_features=50, d_embed=8, d_mlp=2, train=RECIPE)
    assert resid_label_coeffs(spec).tolist() == [1.0] * 50
    random = spec.model_copy(update={"use_trivial_label_coeffs": False})
    c0 = resid_label_coeffs(random)
    assert ((c0 >= 1) & (c0 < 2)).all() and c0.std() > 0.1
    assert torch.equal(c0, resid_label_coeffs(random))
    assert not torch.equal(c0, resid_label_coeffs(random.model_copy(update={"label_fn_seed": 1})))


def test_importances_and_readoff_loss_by_hand() -> None:
    imp = feature_importances(3, 0.5, "cpu")
    assert imp.tolist() == [1.0, 0.5, 0.25]
    out, labels = torch.tensor([[[1.0, 2.0, 3.0]]]), torch.zeros(1, 1, 3)
    # mean(1 * 1, 0.5 * 4, 0.25 * 9) = (1 + 2 + 2.25) / 3
    assert readoff_loss(out, labels, imp).item() == pytest.approx(1.75)


def test_tms_loss_sums_instances_of_means() -> None:
    out = torch.zeros(1, 2, 2)
    labels = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    # instance 0: mean(1, 1) = 1; instance 1: mean(4, 0) = 2
    assert tms_loss(out, labels).item() == pytest.approx(3.0)
    assert tms_loss(out, labels, importance=0.5).item() == pytest.approx(1.5)


def test_resid_stream_loss_by_hand() -> None:
    model = ResidMLP(2, 2, 1, n_layers=1)
    with torch.no_grad():
        model.W_E.copy_(torch.eye(2)[None])
        model.mlp_in[0].zero_()
        model.mlp_out[0].zero_()
    x = torch.tensor([[[1.0, -1.0]]])
    y = resid_labels(x, torch.ones(2), "act_plus_resid")  # [2, -1]
    # MLP off: r = x, so mean((x - y)^2) = mean(1, 0)
    assert resid_stream_loss(model, x, y).item() == pytest.approx(0.5)
    with torch.no_grad():
        model.mlp_in[0].copy_(torch.tensor([[[1.0], [0.0]]]))
        model.mlp_out[0].copy_(torch.tensor([[[1.0, 0.0]]]))
    # neuron = ReLU(x_0) = 1 written back to dim 0: r = [2, -1] = y W_E
    assert resid_stream_loss(model, x, y).item() == pytest.approx(0.0)


def test_task_loss_follows_loss_type() -> None:
    spec = ResidMLPSpec(n_features=2, d_embed=2, d_mlp=1, train=RECIPE)
    model = ResidMLP(2, 2, 1)
    with torch.no_grad():
        model.W_E.copy_(torch.eye(2)[None])
        model.mlp_in[0].zero_()
    x = torch.tensor([[[1.0, -1.0]]])
    # readoff with y_hat = x, y = [2, -1]: mean(1, 0)
    assert task_loss(spec, model, x).item() == pytest.approx(0.5)
    half = spec.model_copy(update={"importance_val": 0.5})
    assert task_loss(half, model, torch.tensor([[[0.0, 1.0]]])).item() == pytest.approx(0.5 * 1.0 / 2)
    assert task_loss(spec.model_copy(update={"loss_type": "resid"}), model, x).item() == pytest.approx(0.5)


def test_labels_belong_to_the_network() -> None:
    spec = ResidMLPSpec(
        n_features=3, d_embed=4, d_mlp=2, label_type="abs", use_trivial_label_coeffs=False, train=RECIPE
    )
    model = get_family("resid_mlp").build(spec, 0)
    x = torch.tensor([[[-1.0, 0.5, 2.0]]])
    assert torch.equal(model.labels(x), resid_labels(x, resid_label_coeffs(spec), "abs"))
    assert model.state_dict().keys() == {"W_E", "mlp_in.0", "mlp_out.0"}  # rebuilt from the spec, never stored
