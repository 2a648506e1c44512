"""SPD, Stochastic Parameter Decomposition (docs/spd.md): the `Method` the loop runs.

Modules: `config` (settings), `components` (rank-one subcomponents and CI weights per matrix),
`sigmoids` (the leaky hard sigmoids), `ci` (the causal-importance functions), `masks` (stochastic
masks and the masked passes of a step), `losses` (one module per term), `naive` (the reference step,
the test oracle) and `fast` (the batched step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from apd.methods.base import Decomposition, Method, StepOutput
from apd.methods.spd.components import SPDComponents
from apd.methods.spd.config import SPDConfig
from apd.targets.base import Target

EVAL_CHUNK = 4096
"""Samples per CI evaluation call in `importances`."""


class SPD(Method):
    name = "spd"
    config_type = SPDConfig
    loss_keys = (
        "total_loss",
        "faithfulness_loss",
        "stochastic_recon_loss",
        "stochastic_recon_layerwise_loss",
        "importance_minimality_loss",
        "recon_loss",
        "recon_layerwise_loss",
        "out_recon_loss",
    )
    stat_keys = ("ci_l0",)
    importance_name = "causal importance"

    def init(self, cfg: Any, target: Target, generator: torch.Generator) -> Decomposition:
        comps = SPDComponents(
            target.layers,
            target.param_shapes(),
            n_instances=target.n_instances,
            C=cfg.C,
            d_gate=cfg.n_ci_mlp_neurons,
            tied_mode=cfg.tied_mode,
        )
        weights = {layer.name: target.layer_weight(layer).detach().cpu() for layer in target.layers}
        comps.init_(weights, init=cfg.init, generator=generator)
        if cfg.faithfulness_warmup_steps:
            _faithfulness_warmup_(cfg, comps, weights)
        return comps

    def loss(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor, generator: torch.Generator) -> StepOutput:
        if cfg.implementation == "naive":
            from apd.methods.spd.naive import naive_loss

            return naive_loss(cfg, target, _components(comps), x, generator)
        from apd.methods.spd.fast import fast_loss

        return fast_loss(cfg, target, _components(comps), x, generator)

    @torch.no_grad()
    def importances(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor) -> dict[str, Tensor]:
        """Causal importances `g = σ_lo(ĝ)` of every matrix (the lower-leaky side, docs/spd.md §6 item 14)."""
        from apd.methods.spd.naive import raw_ci
        from apd.methods.spd.sigmoids import lower_sigmoid

        lower = lower_sigmoid(cfg.lower_sigmoid)
        parts = [raw_ci(_components(comps), target, xc)[1] for xc in x.split(EVAL_CHUNK)]
        return {name: lower(torch.cat([p[name] for p in parts])) for name in parts[0]}

    def before_step(self, cfg: Any, comps: Decomposition) -> None:
        _components(comps).tie_sync_()

    def after_backward(self, cfg: Any, comps: Decomposition) -> None:
        _components(comps).tie_snapshot_()

    def saved_weights(self, comps: Decomposition) -> dict[str, Tensor]:
        """Every matrix's subcomponents `(I, C, d_in, d_out)`, keyed by layer (TMS: linear1, linear2 apart)."""
        spd = _components(comps)
        return {layer.name: spd.layer_component_weights(layer).detach().cpu() for layer in spd.layers}


def _faithfulness_warmup_(cfg: SPDConfig, comps: SPDComponents, weights: dict[str, Tensor]) -> None:
    """Main's warm-up: AdamW on the faithfulness loss alone (docs/spd.md, appendix), before training."""
    from apd.methods.spd.losses import faithfulness_loss

    factors = [*comps.A.values(), *comps.B.values()]
    opt = torch.optim.AdamW(factors, lr=cfg.faithfulness_warmup_lr, weight_decay=cfg.faithfulness_warmup_weight_decay)
    for _ in range(cfg.faithfulness_warmup_steps):
        comps.tie_sync_()
        loss = faithfulness_loss(weights, {layer.name: comps.layer_weight(layer) for layer in comps.layers}).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        comps.tie_snapshot_()
        opt.step()
    comps.tie_sync_()


def _components(comps: Decomposition) -> SPDComponents:
    assert isinstance(comps, SPDComponents), f"SPD needs its own SPDComponents (got {type(comps).__name__})"
    return comps


__all__ = ["SPD", "SPDComponents", "SPDConfig"]
