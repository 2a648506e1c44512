"""The fast step (`apd.methods.apd.fast`, `implementation: fast`) against the per-output reference code.

Every target family (TMS with and without hidden identity layers, 1- and 2-layer residual MLPs,
the hand-coded gated model, a user-supplied linear stack, and TMS/resid through the generic
batched-autograd path) and every attribution type: attributions, loss terms and the gradients
of the total loss w.r.t. A and B agree to float tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import apd.methods.apd.fast as fast
from apd.config import DecomposeConfig
from apd.data import Batches, sample_sparse_features
from apd.decompose import decompose
from apd.methods.apd.attributions import attributions
from apd.methods.apd.components import Components
from apd.methods.apd.config import APDConfig
from apd.methods.apd.fast import ActivePairs, fast_attributions, masked_layer_fns, needs_graph
from apd.methods.apd.losses import apd_loss
from apd.targets.base import Target
from apd.targets.file import LinearStack
from apd.targets.gated import GatedMLP
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

KINDS = ["gradient", "gradient_apd", "activation", "ablation"]


class GenericTMS(TMS):
    """Same model; a subclass has no closed form, so it takes the batched-autograd path."""


class GenericResidMLP(ResidMLP):
    pass


def make_target(family: str) -> Target:
    torch.manual_seed(0)
    if family == "tms":
        t: Target = TMS(5, 2, n_instances=2)
    elif family == "tms-id":
        t = TMS(5, 2, n_instances=2, n_hidden_layers=1)
    elif family == "tms-generic":
        t = GenericTMS(5, 2, n_instances=2, n_hidden_layers=1)
    elif family == "resid1":
        t = ResidMLP(4, 32, 4, n_layers=1, n_instances=2, embed_seed=0)
    elif family == "resid2":
        t = ResidMLP(4, 32, 3, n_layers=2, n_instances=1, embed_seed=0)
    elif family == "resid-generic":
        t = GenericResidMLP(4, 32, 3, n_layers=2, n_instances=1, embed_seed=0)
    elif family == "gated":
        t = GatedMLP(n_functions=2, neurons_per_function=4, n_layers=2, seed=0)
    elif family == "file":
        ws = [torch.randn(2, 6, 5), torch.randn(2, 5, 4) / 2, torch.randn(2, 4, 3) / 2]
        t = LinearStack(ws, [torch.randn(2, 5) / 4, None, torch.randn(2, 3)])
    else:
        raise ValueError(family)
    return t.eval().requires_grad_(False)


FAMILIES = ["tms", "tms-id", "tms-generic", "resid1", "resid2", "resid-generic", "gated", "file"]


def near_target(target: Target, C: int = 4, seed: int = 0) -> Components:
    """Random components plus the target's weights in component 0, so the APD model is near the target.

    (A purely random APD model switches the gated model's ReLUs all off.)
    """
    m = max(min(d_in, d_out) for d_in, d_out in target.param_shapes().values())
    gen = torch.Generator().manual_seed(seed)
    comps = Components(target.param_shapes(), n_instances=target.n_instances, C=C, m=m, init_scale=1.0, generator=gen)
    with torch.no_grad():
        for name, w in target.weights().items():
            d_in, d_out = w.shape[-2:]
            a, b = comps.A[name], comps.B[name]
            a.mul_(0.5)
            b.mul_(0.5)
            if d_out <= d_in:  # A_0 = [W 0], B_0 = [I; 0]
                a[:, 0, :, :d_out] = w
                b[:, 0, :d_out, :] = torch.eye(d_out)
            else:  # A_0 = [I 0], B_0 = [W; 0]
                a[:, 0, :, :d_in] = torch.eye(d_in)
                b[:, 0, :d_in, :] = w
    return comps


def inputs(target: Target, batch: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, GatedMLP):
        return target.sample_inputs(batch, control_probability=0.5, generator=gen)
    lo = -1.0 if isinstance(target, ResidMLP) else 0.0
    return sample_sparse_features(
        batch, target.n_instances, target.n_inputs, feature_probability=0.4, value_range=(lo, 1.0), generator=gen
    )


def close(actual: Tensor, expected: Tensor, rtol: float = 2e-4, *, nonzero: bool = True) -> None:
    """Relative to the tensor's scale, so a few tiny entries do not need absolute agreement."""
    scale = expected.abs().max().item()
    assert scale > 0 or not nonzero, "degenerate case: the reference is all zeros"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-12)


# ---------------------------------------------------------------------------------------------
# Attributions


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attributions_match_reference(family: str, kind: str) -> None:
    target = make_target(family)
    comps = near_target(target)
    for batch in (3, 16):  # resid folds `r A_in` into `x (W_E A_in)` only at the larger batch
        x = inputs(target, batch)
        expected = attributions(kind, target, comps, x).detach()
        with torch.no_grad():
            actual = fast_attributions(kind, target, comps, x)
        assert actual.shape == (batch, target.n_instances, comps.C)
        close(actual, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["tms-id", "resid2", "resid-generic", "file"])
def test_chunked_paths_match_reference(family: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny budgets: outputs in chunks of 1 (batched backward), components one by one (ablation),
    # batches of a sample or two (closed forms)
    monkeypatch.setattr(fast, "CHUNK_ELEMENTS", 8)
    monkeypatch.setattr(fast, "CPU_CHUNK_ELEMENTS", 64)
    target = make_target(family)
    comps = near_target(target)
    x = inputs(target, 9)
    with torch.no_grad():
        close(fast_attributions(kind, target, comps, x), attributions(kind, target, comps, x).detach())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["tms", "tms-id", "resid1", "resid2", "resid-generic", "gated"])
def test_attribution_gradients_match_reference(family: str, kind: str) -> None:
    """Lp APD differentiates the attributions: the same gradients reach A and B (none for ablation)."""
    target = make_target(family)
    comps = near_target(target)
    x = inputs(target, 16)
    weights = torch.rand(16, target.n_instances, comps.C, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (attributions, fast_attributions):
        comps.zero_grad(set_to_none=True)
        attr = fn(kind, target, comps, x)
        if kind == "ablation":
            assert not attr.requires_grad
            return
        (attr * weights).sum().backward()
        grads.append([p.grad.clone() for p in comps.parameters()])  # type: ignore[union-attr]
    for expected, actual in zip(*grads, strict=True):
        close(actual, expected)


def test_gradient_attribution_needs_the_target_graph_only_without_a_closed_form() -> None:
    assert not needs_graph("gradient", make_target("tms"))
    assert not needs_graph("gradient", make_target("resid2"))
    assert needs_graph("gradient", make_target("gated"))
    assert needs_graph("gradient", make_target("tms-generic"))
    assert not needs_graph("gradient_apd", make_target("gated"))  # it runs its own APD pass


# ---------------------------------------------------------------------------------------------
# The whole loss


def config(kind: str, **kw: object) -> DecomposeConfig:
    base: dict[str, object] = dict(
        target={"name": "unused"},
        C=4,
        attribution_type=kind,
        topk=1.0,
        batch_topk=True,
        param_match_coeff=1.0,
        topk_recon_coeff=1.0,
        act_recon_coeff=1.0,
        schatten_coeff=0.5,
        schatten_pnorm=0.9,
        out_recon_coeff=0.3,
        lr=1e-3,
        steps=10,
        batch_size=16,
    )
    return APDConfig.model_validate(base | kw)


def loss_and_grads(cfg: DecomposeConfig, target: Target, comps: Components, x: Tensor):
    comps.zero_grad(set_to_none=True)
    out = apd_loss(cfg, target, comps, x)
    out.total.backward()
    grads = {name: p.grad.clone() for name, p in comps.named_parameters()}  # type: ignore[union-attr]
    return out, grads


def assert_same_step(cfg: DecomposeConfig, target: Target, comps: Components, x: Tensor) -> None:
    naive, naive_grads = loss_and_grads(cfg.model_copy(update={"implementation": "naive"}), target, comps, x)
    fast_out, fast_grads = loss_and_grads(cfg, target, comps, x)
    assert torch.equal(fast_out.mask, naive.mask) if fast_out.mask.dtype == torch.bool else True
    if fast_out.mask.dtype != torch.bool:
        close(fast_out.mask.detach(), naive.mask.detach())
    assert set(fast_out.terms) == set(naive.terms) - ({"out_recon_loss"} if cfg.out_recon_coeff is None else set())
    for name, value in fast_out.terms.items():
        close(value.detach(), naive.terms[name].detach(), nonzero=False)
    close(fast_out.total.detach(), naive.total.detach())
    for name, g in naive_grads.items():
        close(fast_grads[name], g, nonzero=False)


@pytest.mark.parametrize("masked_forward", ["dense", "sparse"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_topk_loss_terms_and_gradients_match_reference(family: str, kind: str, masked_forward: str) -> None:
    target = make_target(family)
    comps = near_target(target)
    x = inputs(target, 16)
    assert_same_step(config(kind, masked_forward=masked_forward), target, comps, x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["tms", "tms-id", "resid1", "resid-generic", "file"])
def test_lp_loss_terms_and_gradients_match_reference(family: str, kind: str) -> None:
    target = make_target(family)
    comps = near_target(target)
    cfg = config(
        kind,
        topk=None,
        topk_recon_coeff=None,
        act_recon_coeff=None,
        lp_sparsity_coeff=0.7,
        pnorm=0.9,
        out_recon_coeff=None,
    )
    assert_same_step(cfg, target, comps, inputs(target, 16))


@pytest.mark.parametrize(
    "options",
    [
        {"batch_topk": False, "topk": 2.0},
        {"exact_topk": True},
        {"distil_from_target": True},
        {"out_recon_coeff": None},
        {"act_recon_coeff": None, "schatten_coeff": None, "param_match_coeff": None},
    ],
)
def test_topk_variants_match_reference(options: dict[str, object]) -> None:
    target = make_target("tms")
    target = TMS(5, 2, n_instances=1).eval().requires_grad_(False)  # exact_topk needs one instance
    comps = near_target(target)
    for masked_forward in ("dense", "sparse"):
        cfg = config("gradient", masked_forward=masked_forward, **options)
        assert_same_step(cfg, target, comps, inputs(target, 16))


def test_resid_training_runs_match_step_for_step() -> None:
    """Ten AdamW steps with unit-norm A: the fast and the naive run log the same losses."""
    target = make_target("resid1")
    cfg = config("gradient", steps=10, log_every=2, unit_norm_matrices=True, init_scale=2.0, out_recon_coeff=None)

    def batches() -> Batches:
        return Batches(lambda n, gen: inputs(target, n, seed=int(torch.randint(0, 10**6, (1,), generator=gen))), 16,
                       seed=0, device="cpu")  # fmt: skip

    runs = [
        decompose(cfg.model_copy(update={"implementation": impl}), target, batches(), progress=False)
        for impl in ("fast", "naive")
    ]
    for f, n in zip(runs[0].records, runs[1].records, strict=True):
        for key, value in f.losses.items():
            assert value == pytest.approx(n.losses[key], rel=1e-4, abs=1e-8), (f.step, key)
        assert f.stats["mean_active"] == n.stats["mean_active"]


# ---------------------------------------------------------------------------------------------
# Sparse masked forward


def test_active_pairs_hand_computed() -> None:
    # batch 4, 1 instance, C 2; active pairs (sample, component): (0, 0), (1, 0), (3, 1)
    mask = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=torch.bool).unsqueeze(1)
    pairs = ActivePairs.from_mask(mask)
    # one block per component, padded to the largest group (2 pairs): padding row 0 with valid 0
    assert pairs.group is None
    assert pairs.rows.tolist() == [[0, 1], [3, 0]]
    assert pairs.valid.squeeze(-1).tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert pairs.cost == 4


def test_active_pairs_split_very_uneven_groups_into_blocks() -> None:
    # 64 samples, 2 instances x 4 components; component 0 of instance 0 is always on, the rest
    # once each: 71 pairs, blocks of max(8, ceil(71 / 8)) = 9 -> 8 blocks for the big group
    mask = torch.zeros(64, 2, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    for g in range(1, 8):
        mask[g, g // 4, g % 4] = True
    pairs = ActivePairs.from_mask(mask)
    assert pairs.group is not None
    assert pairs.rows.shape == (8 + 7, 9)
    assert pairs.group.tolist() == [0] * 8 + list(range(1, 8))
    assert int(pairs.valid.sum()) == 71


@pytest.mark.parametrize("pattern", ["random", "empty", "full", "uneven"])
def test_sparse_masked_forward_matches_dense(pattern: str) -> None:
    target = make_target("tms-id")  # a tied layer and an instance axis
    comps = near_target(target)
    x = inputs(target, 64)
    gen = torch.Generator().manual_seed(3)
    mask = {
        "random": torch.rand(64, 2, 4, generator=gen) < 0.2,
        "empty": torch.zeros(64, 2, 4, dtype=torch.bool),
        "full": torch.ones(64, 2, 4, dtype=torch.bool),
        "uneven": torch.nn.functional.pad(torch.ones(64, 2, 1, dtype=torch.bool), (0, 3)),
    }[pattern]
    results = []
    for mode in ("dense", "sparse"):
        comps.zero_grad(set_to_none=True)
        out = target(x, masked_layer_fns(comps, target.layers, mask, mode=mode))
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in comps.parameters())])  # type: ignore[union-attr]
    for dense, sparse in zip(*results, strict=True):
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)


def test_auto_masked_forward_is_sparse_only_for_sparse_masks_and_large_dense_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = make_target("tms")
    comps = near_target(target)
    sparse_mask = torch.zeros(64, 2, 4, dtype=torch.bool)
    sparse_mask[::8, :, 1] = True  # 16 pairs in 2 groups of 8: cost 16 <= 512 / 4
    dense_mask = torch.ones(64, 2, 4, dtype=torch.bool)
    sparse_fn = ActivePairs.layer_fn.__qualname__
    # the dense pass's widest intermediate: 64 samples x 2 instances x 4 components x min(5, 2) = 1024
    assert masked_layer_fns(comps, target.layers, sparse_mask)["linear1"].__qualname__.startswith(sparse_fn) is False
    monkeypatch.setattr(fast, "SMALL_DENSE", 1024)
    assert masked_layer_fns(comps, target.layers, sparse_mask)["linear1"].__qualname__.startswith(sparse_fn)
    assert not masked_layer_fns(comps, target.layers, dense_mask)["linear1"].__qualname__.startswith(sparse_fn)


# ---------------------------------------------------------------------------------------------
# Switches


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gradient", "gradient_apd"])
def test_compiled_attributions_give_the_reference_step(kind: str) -> None:
    target = make_target("tms-id")
    comps = near_target(target)
    assert_same_step(config(kind, compile=True), target, comps, inputs(target, 16))


@pytest.mark.parametrize("masked_forward", ["dense", "sparse"])
@pytest.mark.parametrize("family", ["tms", "resid1"])
def test_bfloat16_top_k_pass_stays_near_the_float32_step(family: str, masked_forward: str) -> None:
    """Autocast touches only the top-k pass: same mask, terms within bf16 rounding, aligned gradients."""
    target = make_target(family)
    comps = near_target(target)
    x = inputs(target, 16)
    ref, ref_grads = loss_and_grads(config("gradient", masked_forward=masked_forward), target, comps, x)
    half_cfg = config("gradient", masked_forward=masked_forward, autocast_dtype="bfloat16")
    half, half_grads = loss_and_grads(half_cfg, target, comps, x)
    assert torch.equal(half.mask, ref.mask)
    assert torch.equal(half.terms["faithfulness_loss"], ref.terms["faithfulness_loss"])  # not autocast
    for name in ("topk_recon_loss", "act_recon_loss", "out_recon_loss"):
        assert half.terms[name].dtype == torch.float32
        torch.testing.assert_close(half.terms[name], ref.terms[name], rtol=5e-2, atol=1e-4)
    for name, g in ref_grads.items():
        cos = torch.nn.functional.cosine_similarity(half_grads[name].flatten(), g.flatten(), dim=0)
        assert cos > 0.99, name


def test_switches_need_the_fast_step() -> None:
    from apd.errors import ConfigError

    with pytest.raises(ConfigError, match="need implementation: fast"):
        DecomposeConfig.from_dict(config("gradient").to_dict() | {"implementation": "naive", "compile": True})


# ---------------------------------------------------------------------------------------------
# Dense masked pass, batch-innermost layout, zero samples


@pytest.mark.parametrize("m", [1, 4])  # m 1: A_c then B_c; m 4: P_c = A_c B_c, the mask on either side
@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("family", ["tms-id", "resid1"])
def test_dense_masked_pass_matches_components(family: str, batch_last: bool, m: int) -> None:
    target = make_target(family)
    comps = Components(target.param_shapes(), n_instances=target.n_instances, C=4, m=m,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    x = inputs(target, 32)
    if batch_last:
        x = x.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    mask = torch.rand(32, target.n_instances, 4, generator=torch.Generator().manual_seed(3)) < 0.4
    results = []
    for fns in (comps.layer_fns(target.layers, mask), fast.dense_masked_fns(comps, target.layers, mask)):
        comps.zero_grad(set_to_none=True)
        out = target(x, fns)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in comps.parameters())])  # type: ignore[union-attr]
    for expected, actual in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_narrow_targets_run_with_the_batch_innermost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "BATCH_LAST_MAX_WIDTH", 8)
    narrow, wide = make_target("tms"), make_target("resid1")  # widest layers 5 and 32
    assert fast.batch_last(narrow) and not fast.batch_last(wide)
    x = inputs(narrow, 16)
    run = fast.target_pass(narrow, x)
    assert run.out is not None and run.out.stride(0) == 1  # (batch, I, d) view of (I, d, batch)
    torch.testing.assert_close(run.out, narrow(x))
    run = fast.target_pass(wide, inputs(wide, 16))
    assert run.out is not None and run.out.stride(-1) == 1


@pytest.mark.parametrize("kind", ["gradient", "gradient_apd"])
@pytest.mark.parametrize("family", ["resid2", "tms"])
def test_attributions_skip_all_zero_samples(family: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Most samples all zero: the closed forms run on the rest and match the reference, gradients included."""
    picked = []
    rows = fast.ModelPass.rows
    monkeypatch.setattr(fast.ModelPass, "rows", lambda self, idx: picked.append(len(idx)) or rows(self, idx))
    torch.manual_seed(0)
    target: Target = (
        ResidMLP(4, 32, 3, n_layers=2, n_instances=1, embed_seed=0) if family == "resid2" else TMS(5, 2, n_instances=1)
    ).eval().requires_grad_(False)  # fmt: skip
    comps = near_target(target)
    x = inputs(target, 24)
    x[::3] = 0.0
    x[1::3] = 0.0  # 2/3 of the samples are zero: below ZERO_INPUT_SKIP
    expected = attributions(kind, target, comps, x)
    actual = fast_attributions(kind, target, comps, x)
    close(actual.detach(), expected.detach())
    assert picked and picked[0] <= 8  # the closed form saw only the nonzero samples
    assert actual[::3].abs().max() == 0
    weights = torch.rand(24, 1, comps.C, generator=torch.Generator().manual_seed(2))
    grads = []
    for attr in (expected, actual):
        comps.zero_grad(set_to_none=True)
        (attr * weights).sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in comps.parameters()])  # type: ignore[union-attr]
    for e, a in zip(*grads, strict=True):
        close(a, e)


def test_compile_auto_only_for_long_cpu_runs_of_large_tms_tangents() -> None:
    tms_40_10, tms_5_2 = TMS(40, 10, n_instances=3), TMS(5, 2, n_instances=12)
    resid = ResidMLP(100, 1000, 50, n_instances=1)
    big, small = torch.empty(2048, 3, 40), torch.empty(2048, 12, 5)  # tangents 2048*3*50*40, 2048*12*5*5

    def use(setting: bool | str, target: Target, x: Tensor, *, steps: int = 20000, C: int = 50, kind: str = "gradient"):
        return fast.use_compile(setting, steps=steps, kind=kind, target=target, C=C, x=x)

    assert use("auto", tms_40_10, big)
    assert use("auto", tms_40_10, big, kind="gradient_apd")
    assert not use("auto", tms_40_10, big, steps=1999)  # a short run never pays the compilation
    assert not use("auto", tms_40_10, big, kind="activation")  # not measured
    assert not use("auto", tms_40_10, big.to("meta"))  # not measured off the CPU
    assert not use("auto", tms_5_2, small, C=5)  # 0.6M elements: no gain
    assert not use("auto", resid, torch.empty(256, 1, 100), C=130)  # slower compiled
    assert use(True, tms_5_2, small, steps=10) and not use(False, tms_40_10, big)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("masked_forward", ["auto", "sparse"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["tms", "tms-id", "resid1", "resid2", "gated", "file"])
def test_fast_step_matches_the_reference_on_cuda(family: str, kind: str, masked_forward: str) -> None:
    """The GPU paths (`auto` is dense there; sparse reads its block shapes on the host) give the naive step's terms."""
    target = make_target(family)
    x, comps = inputs(target, 16).cuda(), near_target(target).cuda()  # drawn on the CPU, as in the CPU tests
    assert_same_step(config(kind, masked_forward=masked_forward), target.cuda(), comps, x)
