"""Registry: every name resolves to a valid spec that round-trips through a file's dict form."""

from __future__ import annotations

import pytest

from apd.errors import ConfigError
from apd.targets import FAMILIES, TARGETS, get_family, get_spec, parse_spec, register_family, target_names
from apd.targets.gated import GatedMLP, GatedSpec
from apd.targets.resid_mlp import ResidMLP, ResidMLPSpec
from apd.targets.tms import TMS, TMSFamily, TMSSpec

REQUIRED = [
    "tms-5-2",
    "tms-40-10",
    "tms-5-2-id",
    "tms-40-10-id",
    "resid-mlp-1",
    "resid-mlp-2",
    "resid-mlp-3",
    "gated-4",
]


def test_required_names_registered() -> None:
    assert set(REQUIRED) <= set(target_names())
    assert target_names() == list(TARGETS)


@pytest.mark.parametrize("name", REQUIRED)
def test_spec_round_trips_and_builds(name: str) -> None:
    spec = get_spec(name)
    assert parse_spec(spec.to_dict()) == spec
    model = get_family(spec.kind).build(spec)
    assert {"tms": TMS, "resid_mlp": ResidMLP, "gated": GatedMLP}[spec.kind] is type(model)
    assert model.kind == spec.kind and model.n_instances >= 1 and model.layers


def test_architectures_match_the_method_notes() -> None:
    sizes = {n: get_spec(n) for n in REQUIRED}
    tms = {n: s for n, s in sizes.items() if isinstance(s, TMSSpec)}
    assert {n: (s.n_features, s.n_hidden, s.n_instances, s.n_hidden_layers) for n, s in tms.items()} == {
        "tms-5-2": (5, 2, 12, 0),
        "tms-40-10": (40, 10, 3, 0),
        "tms-5-2-id": (5, 2, 12, 1),
        "tms-40-10-id": (40, 10, 3, 1),
    }
    assert [(s.train.steps, s.train.batch_size, s.train.lr_schedule) for s in tms.values()] == [
        (5000, 1024, "linear"),
        (2000, 2048, "linear"),
        (10_000, 1024, "constant"),
        (10_000, 8192, "constant"),
    ]
    resid = {n: s for n, s in sizes.items() if isinstance(s, ResidMLPSpec)}
    assert {n: (s.n_features, s.d_embed, s.d_mlp, s.n_layers) for n, s in resid.items()} == {
        "resid-mlp-1": (100, 1000, 50, 1),
        "resid-mlp-2": (100, 1000, 25, 2),
        "resid-mlp-3": (102, 1000, 17, 3),
    }
    for s in resid.values():
        assert (s.feature_probability, s.value_range, s.use_trivial_label_coeffs) == (0.01, (-1.0, 1.0), True)
        assert (s.train.lr, s.train.lr_schedule, s.train.batch_size, s.train.steps) == (3e-3, "cosine", 2048, 10_000)
    gated = sizes["gated-4"]
    assert isinstance(gated, GatedSpec)
    assert (gated.n_functions, gated.neurons_per_function, gated.n_layers) == (4, 10, 2)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown target 'tms-9-9'; known: tms-5-2, tms-40-10"):
        get_spec("tms-9-9")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "tms", "n_features": 5, "n_hidden": 2}, "train: Field required"),
        ({"kind": "mlp"}, "Input tag 'mlp' found using 'kind' does not match"),
        ({"kind": "gated", "n_layers": 3}, "divisible by n_layers"),
        ({"kind": "gated", "value_range": [5, 0]}, "lo <= hi"),
        ({"kind": "file", "path": "x.pt", "colour": 1}, "colour: unknown key"),
        (
            {
                "kind": "resid_mlp",
                "n_features": 2,
                "d_embed": 4,
                "d_mlp": 2,
                "loss_type": "resid",
                "importance_val": 0.5,
                "train": {"steps": 1, "batch_size": 1, "lr": 1.0, "lr_schedule": "constant"},
            },
            "loss_type resid needs importance_val 1",
        ),
    ],
)
def test_bad_specs_fail_naming_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(data, source="spec.yaml")


def test_family_registry() -> None:
    assert list(FAMILIES) == ["tms", "resid_mlp", "gated", "file"]
    for kind, family in FAMILIES.items():
        assert family.kind == kind and family.spec_type.model_fields["kind"].default == kind
        assert family.checks and len({c.name for c in family.checks}) == len(family.checks)
        assert all(c.name.isidentifier() for c in family.checks)
    register_family(TMSFamily())  # the same family again: nothing changes
    assert type(FAMILIES["tms"]) is TMSFamily

    class Impostor(TMSFamily):
        pass

    with pytest.raises(ValueError, match="target family 'tms' is already registered"):
        register_family(Impostor())
    with pytest.raises(ConfigError, match="unknown target family 'mlp'; known: tms, resid_mlp, gated, file"):
        get_family("mlp")


def test_describe_from_spec_dicts() -> None:
    assert FAMILIES["tms"].describe(get_spec("tms-5-2-id").to_dict()) == "TMS 5-2, hidden identity"
    assert FAMILIES["resid_mlp"].describe(get_spec("resid-mlp-2").to_dict()) == "residual MLP, 2 layers"
    assert FAMILIES["gated"].describe(get_spec("gated-4").to_dict()) == "gated functions, 4 x 10 ReLUs over 2 layers"
    assert FAMILIES["file"].describe({"kind": "file", "path": "/x/net.pt"}) == "user network net.pt"
    assert FAMILIES["tms"].describe({"kind": "file", "path": "/x/t.pt"}) == "TMS"  # a TMS-format user file
