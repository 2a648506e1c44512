"""APD, Attribution-based Parameter Decomposition (docs/method.md, APD): the `Method` the loop runs.

Modules: `config` (settings), `components` (A B factors shared across layers), `attributions`
(the naive per-output attributions, the test oracle), `fast` (the fast step's attributions and
sparse masked forward), `topk` (masks), `losses` (every term and the step's loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from apd.errors import ConfigError
from apd.methods.apd.components import Components
from apd.methods.apd.config import APDConfig
from apd.methods.base import Decomposition, Members, Method, StepOutput
from apd.targets.base import Target

EVAL_CHUNK = 512
"""Samples per attribution call in evaluation: bounds the `(batch, C, d_out)` tensors of gradient attributions."""


class APD(Method):
    name = "apd"
    config_type = APDConfig
    loss_keys = (
        "total_loss",
        "faithfulness_loss",
        "topk_recon_loss",
        "act_recon_loss",
        "schatten_loss",
        "lp_sparsity_loss",
        "out_recon_loss",
    )
    stat_keys = ("mean_active",)
    importance_name = "attribution"
    pack_keys = frozenset(
        {
            "topk",
            "param_match_coeff",
            "topk_recon_coeff",
            "act_recon_coeff",
            "schatten_coeff",
            "schatten_pnorm",
            "lp_sparsity_coeff",
            "out_recon_coeff",
            "init_scale",
        }
    )

    def init(self, cfg: Any, target: Target, generator: torch.Generator) -> Decomposition:
        if cfg.exact_topk and target.n_instances != 1:  # k is counted over the whole batch: one instance
            raise ConfigError(f"exact_topk: needs a target with one instance (this one has {target.n_instances})")
        return Components(
            target.param_shapes(),
            layers=target.layers,
            n_instances=target.n_instances,
            C=cfg.C,
            m=cfg.m or target.default_m(),
            init_scale=cfg.init_scale,
            generator=generator,
        )

    def check_device(self, cfg: Any, device: torch.device) -> None:
        if cfg.autocast_dtype is not None and device.type != "cuda":
            raise ConfigError(
                f"autocast_dtype: {cfg.autocast_dtype} is for CUDA devices; on the {device.type} it slowed "
                "the step 0.4-0.8x (bench/RESULTS.md)"
            )

    def before_step(self, cfg: Any, comps: Decomposition) -> None:
        if cfg.unit_norm_matrices:
            _components(comps).normalize_A_()

    def after_backward(self, cfg: Any, comps: Decomposition) -> None:
        if cfg.unit_norm_matrices:
            _components(comps).project_A_grads_()

    def loss(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor, generator: torch.Generator) -> StepOutput:
        from apd.methods.apd.losses import apd_loss

        out = apd_loss(cfg, target, _components(comps), x)
        stats = {"mean_active": out.mask.float().sum(-1).mean()} if cfg.topk is not None else {}
        return StepOutput(out.terms, out.total, stats)

    def packed_loss(
        self, members: Members, target: Target, comps: Decomposition, x: Tensor, generators: Sequence[torch.Generator]
    ) -> StepOutput:
        from apd.methods.apd.losses import apd_loss

        cfg = members.first
        out = apd_loss(cfg, target, _components(comps), x, members)
        stats = {}
        if cfg.topk is not None:  # each member's mean over its own (batch, instances), as alone
            active = out.mask.float().sum(-1)  # (batch, members * I)
            by_member = active.view(active.shape[0], len(members), -1).transpose(0, 1)
            stats["mean_active"] = by_member.reshape(len(members), -1).mean(-1)
        return StepOutput(out.terms, out.total, stats, out.member_totals)

    @torch.no_grad()
    def importances(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor) -> dict[str, Tensor]:
        from apd.methods.apd.attributions import attributions
        from apd.methods.apd.fast import fast_attributions

        fn = fast_attributions if cfg.implementation == "fast" else attributions
        parts = [fn(cfg.attribution_type, target, _components(comps), xc).detach() for xc in x.split(EVAL_CHUNK)]
        return {Components.GROUP: torch.cat(parts)}


def _components(comps: Decomposition) -> Components:
    assert isinstance(comps, Components), f"APD needs its own Components (got {type(comps).__name__})"
    return comps


__all__ = ["APD", "APDConfig", "Components"]
