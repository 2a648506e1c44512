"""The APD loss: faithfulness + minimality (top-k or Lp) + simplicity (docs/method.md §1.3-1.8, 1.13).

Each term lives in its own module; `apd_loss` runs one training step's forward passes and
assembles them. `L = sum_terms coeff * term.mean()` over instances; terms with coeff None are off.
In a pack (`apd.pack`) each member's total uses its own coefficients, top-k and Schatten p over
its own instances, and `L` is the sum of the members' totals.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from apd.methods.apd.attributions import attributions
from apd.methods.apd.components import Components
from apd.methods.apd.config import APDConfig
from apd.methods.apd.fast import (
    compiled_attributions,
    fast_attributions,
    masked_layer_fns,
    needs_graph,
    reuse_freed_memory,
    target_pass,
    use_compile,
)
from apd.methods.apd.losses.faithfulness import faithfulness_loss
from apd.methods.apd.losses.lp_sparsity import lp_sparsity_loss, lp_weights
from apd.methods.apd.losses.param_terms import param_terms
from apd.methods.apd.losses.reconstruction import act_recon_loss, topk_recon_loss
from apd.methods.apd.losses.schatten import schatten_loss
from apd.methods.apd.topk import topk_mask
from apd.methods.base import Members
from apd.targets.base import Target, run_with_cache

__all__ = [
    "LossOutput",
    "act_recon_loss",
    "apd_loss",
    "faithfulness_loss",
    "lp_sparsity_loss",
    "lp_weights",
    "schatten_loss",
    "topk_recon_loss",
]


@dataclass
class LossOutput:
    terms: dict[str, Tensor]
    """Per-instance values `(instances,)` of every active term, e.g. `topk_recon_loss`."""
    total: Tensor
    mask: Tensor
    """`(batch, instances, C)`: the top-k mask (bool) or the Lp weights."""
    member_totals: Tensor | None = None
    """A pack's: each member's total `(members,)`."""


def apd_loss(
    cfg: APDConfig, target: Target, components: Components, x: Tensor, members: Members | None = None
) -> LossOutput:
    """All loss terms for a batch `x (batch, instances, n_inputs)`; `members`: a pack's (`cfg` is the first's)."""
    if cfg.implementation == "naive":
        return _naive_loss(cfg, target, components, x, members)
    return _fast_loss(cfg, target, components, x, members)


def _naive_loss(
    cfg: APDConfig, target: Target, components: Components, x: Tensor, members: Members | None = None
) -> LossOutput:
    """The naive step: the reference code's order of operations (docs/method.md §1.13), including its full
    APD forward and per-output attributions; the fast step's test oracle. It equals the reference code's
    step except the Lp variant's Schatten weighting unless `lp_schatten_form: code`."""
    layers = target.layers
    weights = {p: w.detach() for p, w in target.weights().items()}
    n_params = sum(weights[layer.param][0].numel() for layer in layers)
    terms: dict[str, Tensor] = {}

    with torch.no_grad():
        out_target, target_cache = run_with_cache(target, x)
    out_full = target(x, components.layer_fns(layers))  # the reference computes it even when only logged
    terms["out_recon_loss"] = topk_recon_loss(out_full, out_target)
    if cfg.param_match_coeff is not None:
        terms["faithfulness_loss"] = faithfulness_loss(weights, components, layers, norm=cfg.faithfulness_norm)

    attr = attributions(cfg.attribution_type, target, components, x)
    if cfg.topk is None:  # Lp APD: attributions stay differentiable w.r.t. the components
        assert cfg.pnorm is not None
        mask = lp_weights(attr, pnorm=cfg.pnorm, n_outputs=target.n_outputs)
        terms["lp_sparsity_loss"] = lp_sparsity_loss(mask)
    else:
        mask = _topk(cfg, attr, x, members)
        out_topk, topk_cache = run_with_cache(target, x, components.layer_fns(layers, mask))
        terms["topk_recon_loss"] = topk_recon_loss(out_topk, out_target)
        if cfg.act_recon_coeff is not None:
            names = target.act_recon_layers
            terms["act_recon_loss"] = act_recon_loss(
                [topk_cache[n][1] for n in names], [target_cache[n][1] for n in names], relu=target.act_recon_relu
            )
    if cfg.schatten_coeff is not None:
        terms["schatten_loss"] = schatten_loss(
            components, layers, mask, p=_schatten_p(cfg, members, x), n_params=n_params, form=cfg.lp_schatten_form
        )
    return _total(cfg, terms, mask, members)


def _fast_loss(
    cfg: APDConfig, target: Target, components: Components, x: Tensor, members: Members | None = None
) -> LossOutput:
    """The same terms as `_naive_loss` (up to float rounding) from fewer, cheaper passes (`apd.methods.apd.fast`).

    One target pass gives the labels, the act-recon targets and the attribution inputs; the full
    APD forward runs only for `out_recon_coeff`; faithfulness and Schatten come from one node per
    parameter (`param_terms`), whose factor aliases the masked forward reads; top-k attributions run
    without a graph; the masked forward computes only the active components where that pays.
    """
    layers = target.layers
    weights = {p: w.detach() for p, w in target.weights().items()}
    n_params = sum(weights[layer.param][0].numel() for layer in layers)
    terms: dict[str, Tensor] = {}

    if x.device.type == "cpu":
        reuse_freed_memory()
    run = target_pass(target, x, graph=needs_graph(cfg.attribution_type, target))
    labels = run.detached()
    if cfg.out_recon_coeff is not None:
        with _autocast(cfg, x):
            out_full = target(x, components.layer_fns(layers))
        assert labels.out is not None
        terms["out_recon_loss"] = topk_recon_loss(out_full.to(x.dtype), labels.out)
    faithful = cfg.param_match_coeff is not None
    p = _schatten_p(cfg, members, x) if cfg.schatten_coeff is not None else None
    # the fused node takes one p; a pack whose members differ in p takes the per-instance path
    fused_schatten = isinstance(p, float) and cfg.lp_schatten_form == "paper"
    schatten_p = p if isinstance(p, float) and fused_schatten else None
    sq, norms, factors = param_terms(weights, components, layers, faithfulness=faithful, schatten_p=schatten_p)
    if faithful:
        terms["faithfulness_loss"] = sq / n_params if cfg.faithfulness_norm == "mean" else sq

    compiled = use_compile(cfg.compile, steps=cfg.steps, kind=cfg.attribution_type, target=target, C=components.C, x=x)
    attribute = compiled_attributions() if compiled else fast_attributions
    if cfg.topk is None:  # Lp APD: attributions stay differentiable w.r.t. the components
        attr = attribute(cfg.attribution_type, target, components, x, run=run)
        assert cfg.pnorm is not None
        mask = lp_weights(attr, pnorm=cfg.pnorm, n_outputs=target.n_outputs)
        terms["lp_sparsity_loss"] = lp_sparsity_loss(mask)
    else:
        with torch.no_grad():  # only the discrete mask is used
            attr = attribute(cfg.attribution_type, target, components, x, run=run)
            mask = _topk(cfg, attr, x, members)
        fns = masked_layer_fns(components, layers, mask, mode=cfg.masked_forward, factors=factors)
        with _autocast(cfg, x):
            out_topk, topk_cache = run_with_cache(target, x, fns)
        assert labels.out is not None
        terms["topk_recon_loss"] = topk_recon_loss(out_topk.to(x.dtype), labels.out)
        if cfg.act_recon_coeff is not None:
            names = target.act_recon_layers
            terms["act_recon_loss"] = act_recon_loss(
                [topk_cache[n][1].to(x.dtype) for n in names],
                [labels.cache[n][1] for n in names],
                relu=target.act_recon_relu,
            )
    if fused_schatten:  # `sum_b s_bc` first (a count for top-k): the per-component norms do not depend on the sample
        terms["schatten_loss"] = (mask.sum(0).to(norms.dtype) * norms).sum(-1) / (n_params * mask.shape[0])
    elif cfg.schatten_coeff is not None:
        assert p is not None
        terms["schatten_loss"] = schatten_loss(
            components, layers, mask, p=p, n_params=n_params, form=cfg.lp_schatten_form
        )
    return _total(cfg, terms, mask, members)


def _autocast(cfg: APDConfig, x: Tensor) -> AbstractContextManager[object]:
    if cfg.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(x.device.type, dtype=getattr(torch, cfg.autocast_dtype))


def _topk(cfg: APDConfig, attr: Tensor, x: Tensor, members: Members | None = None) -> Tensor:
    assert cfg.topk is not None
    k, k_max = None, None
    if members is not None and not cfg.exact_topk:  # exact top-k counts each instance's own inputs
        ks = [c.k for c in members.configs]
        if len(set(ks)) > 1:
            k, k_max = members.per_instance("k", attr.device, torch.long), max(ks)
    return topk_mask(
        attr,
        topk=cfg.topk,
        batch_topk=cfg.batch_topk,
        exact=cfg.exact_topk,
        x=x,
        always_on_last=cfg.distil_from_target,
        k=k,
        k_max=k_max,
    )


def _schatten_p(cfg: APDConfig, members: Members | None, x: Tensor) -> float | Tensor:
    """One Schatten p, or a pack's per instance `(instances,)` when its members' differ."""
    if members is None or len({c.schatten_pnorm for c in members.configs}) == 1:
        return cfg.schatten_pnorm
    return members.per_instance("schatten_pnorm", x.device)


COEFFS = {
    "faithfulness_loss": "param_match_coeff",
    "topk_recon_loss": "topk_recon_coeff",
    "act_recon_loss": "act_recon_coeff",
    "schatten_loss": "schatten_coeff",
    "lp_sparsity_loss": "lp_sparsity_coeff",
    "out_recon_loss": "out_recon_coeff",
}
"""Loss term -> the config key of its coefficient (None: the term is off)."""


def _total(cfg: APDConfig, terms: dict[str, Tensor], mask: Tensor, members: Members | None = None) -> LossOutput:
    on = [(name, key) for name, key in COEFFS.items() if getattr(cfg, key) is not None and name in terms]
    if members is None:
        total = torch.stack([getattr(cfg, key) * terms[name].mean() for name, key in on]).sum()
        return LossOutput(terms=terms, total=total, mask=mask)
    # coeff * mean over the member's instances: the same ops, member by member, as alone
    weighted = [members.values(key, mask.device) * members.member_means(terms[name]) for name, key in on]
    member_totals = torch.stack(weighted).sum(0)
    return LossOutput(terms=terms, total=member_totals.sum(), mask=mask, member_totals=member_totals)
