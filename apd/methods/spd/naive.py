"""The reference SPD step (docs/spd.md §1.6), pass for pass as the paper code runs it: the test oracle.

One clean target pass gives the labels and every matrix's input; each matrix's CI functions run on
its inner activations; then one forward per masked pass (S full passes, S x L layerwise passes, and
any CI-masked or unmasked pass that is on), each a full target forward with the swapped matrices'
`((x A) ⊙ m) B`. Terms whose coefficient is null or 0 are skipped (the code also ran its resid yaml's
`out_recon_coeff: 0.0` pass, for nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from apd.methods.base import StepOutput
from apd.methods.spd.ci import gate
from apd.methods.spd.components import SPDComponents
from apd.methods.spd.config import SPDConfig
from apd.methods.spd.losses import divergence, faithfulness_loss, importance_minimality_loss
from apd.methods.spd.masks import Noise, draw_noise, plan_passes
from apd.methods.spd.sigmoids import lower_sigmoid, upper_leaky
from apd.targets.base import Target, run_with_cache

CI_L0_THRESHOLD = 0.01
"""A subcomponent counts as active in `ci_l0` when its causal importance exceeds this (the code's value)."""


def raw_ci(comps: SPDComponents, target: Target, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The target's output (no graph) and every matrix's raw CI `ĝ (batch, I, C)`, one matrix at a time."""
    with torch.no_grad():
        out, cache = run_with_cache(target, x)
    raw = {}
    for index, layer in enumerate(target.layers):
        h = comps.inner(layer, cache[layer.name][0])  # not detached: the CI side also trains A
        raw[layer.name] = gate(h, comps.ci_weights(index))
    return out, raw


def naive_loss(
    cfg: SPDConfig,
    target: Target,
    comps: SPDComponents,
    x: Tensor,
    generator: torch.Generator,
    noise: Noise | None = None,
) -> StepOutput:
    """Every active loss term for the batch `x (batch, I, n_inputs)`; `noise` replaces the draws (tests)."""
    layers = target.layers
    f, raw = raw_ci(comps, target, x)
    lower = lower_sigmoid(cfg.lower_sigmoid)
    g = [lower(raw[layer.name]) for layer in layers]
    terms: dict[str, Tensor] = {}
    if cfg.faithfulness_coeff:
        weights = {layer.name: target.layer_weight(layer).detach() for layer in layers}
        terms["faithfulness_loss"] = faithfulness_loss(weights, {ly.name: comps.layer_weight(ly) for ly in layers})
    if noise is None:
        noise = draw_noise(cfg, (len(layers), x.shape[0], x.shape[1], comps.C), generator)
    for group in plan_passes(cfg, g.__getitem__, noise, len(layers)):
        divs = []
        for p in group.passes:
            fns = {layers[i].name: comps.layer_fn(layers[i], mask) for i, mask in p.masks.items()}
            divs.append(divergence(target(x, fns), f, cfg.output_loss_type))
        terms[group.term] = torch.stack(divs).mean(0)
    if cfg.importance_minimality_coeff:
        assert cfg.pnorm is not None
        g_plus = [upper_leaky(raw[layer.name]) for layer in layers]
        terms["importance_minimality_loss"] = importance_minimality_loss(g_plus, cfg.pnorm)
    ci_l0 = sum((gl > CI_L0_THRESHOLD).float().sum(-1).mean(0) for gl in g)
    return assemble(cfg, terms, ci_l0)  # type: ignore[arg-type]


def assemble(cfg: SPDConfig, terms: dict[str, Tensor], ci_l0: Tensor) -> StepOutput:
    """`total = sum_instances sum_terms coeff * term`: each instance trains exactly as a one-model run.

    `ci_l0 (I,)` is the mean number of subcomponents per sample, summed over matrices, with CI > 0.01.
    """
    total = sum(cfg.coeff(name.removesuffix("_loss") + "_coeff") * term.sum() for name, term in terms.items())
    return StepOutput(terms, total, {"ci_l0": ci_l0.mean()})  # type: ignore[arg-type]
