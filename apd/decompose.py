"""The APD optimisation loop: one function, reporting through callbacks (method notes 1.9-1.13)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from apd.components import Components
from apd.config import DecomposeConfig
from apd.errors import Diverged
from apd.losses import apd_loss
from apd.schedules import lr_at
from apd.targets.base import Target


@dataclass(frozen=True)
class StepRecord:
    """Losses after `step` updates. `state()` snapshots everything needed to resume from here."""

    step: int
    lr: float
    losses: dict[str, float]
    mean_active: float | None
    state: Callable[[], dict[str, Any]] = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        out = {"step": float(self.step), "lr": self.lr, **self.losses}
        if self.mean_active is not None:
            out["mean_active"] = self.mean_active
        return out


@dataclass
class DecomposeResult:
    components: Components
    status: Literal["finished", "diverged", "stopped"]
    steps_done: int
    records: list[StepRecord]
    error: str | None = None


def make_components(cfg: DecomposeConfig, target: Target, device: torch.device) -> Components:
    gen = torch.Generator().manual_seed(cfg.seed)  # CPU init: identical on every device
    comps = Components(
        target.param_shapes(),
        n_instances=target.n_instances,
        C=cfg.C,
        m=cfg.m or target.default_m(),
        init_scale=cfg.init_scale,
        generator=gen,
    )
    return comps.to(device)


def decompose(
    cfg: DecomposeConfig,
    target: Target,
    batches: Iterator[Tensor],
    *,
    components: Components | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    state: dict[str, Any] | None = None,
    progress: bool = True,
) -> DecomposeResult:
    """Train components on `batches` for `cfg.steps` updates; records every `cfg.log_every` steps.

    `batches` may expose `state_dict`/`load_state_dict` (resumable data); `state` resumes a run
    from a `StepRecord.state()` snapshot. The loop runs to `step == cfg.steps` inclusive and the
    last iteration only evaluates, as the reference code does.
    """
    device = next(iter(target.buffers()), next(target.parameters())).device
    comps = components if components is not None else make_components(cfg, target, device)
    opt = torch.optim.AdamW(comps.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, records = 0, list[StepRecord]()
    resumed_at = -1
    if state is not None:
        comps.load_state_dict(state["components"])
        opt.load_state_dict(state["optimizer"])
        if hasattr(batches, "load_state_dict") and "data" in state:
            batches.load_state_dict(state["data"])
        start = resumed_at = state["step"]

    def snapshot(step: int, data: Any) -> Callable[[], dict[str, Any]]:
        # Live references: consume (save) inside on_step, before the next update changes them.
        def fn() -> dict[str, Any]:
            return {
                "step": step,
                "components": comps.state_dict(),
                "optimizer": opt.state_dict(),
                "data": data,
                "config": cfg.to_dict(),
            }

        return fn

    # NaN/inf are tracked on the device and checked at record steps, so steps need no host sync
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    bar = tqdm(
        range(start, cfg.steps + 1),
        initial=start,
        total=cfg.steps + 1,
        disable=not progress,
        desc="decompose",
        dynamic_ncols=True,
    )
    for step in bar:
        if cfg.unit_norm_matrices:
            comps.normalize_A_()
        lr = lr_at(
            step,
            lr=cfg.lr,
            steps=cfg.steps,
            schedule=cfg.lr_schedule,
            warmup_pct=cfg.lr_warmup_pct,
            halflife=cfg.lr_exponential_halflife,
        )
        for group in opt.param_groups:
            group["lr"] = lr
        is_record = step % cfg.log_every == 0 or step == cfg.steps
        # data state before this step's batch, so a resumed run draws the same batch
        data_state = batches.state_dict() if is_record and hasattr(batches, "state_dict") else None
        out = apd_loss(cfg, target, comps, next(batches))
        bad = ~torch.isfinite(out.total)
        first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
        if is_record and step != resumed_at:  # a resumed run's first record repeats the last
            if first_bad.item() >= 0:
                terms = {k: v.mean().item() for k, v in out.terms.items()}
                term, value = next(
                    ((k, v) for k, v in terms.items() if not torch.isfinite(torch.tensor(v))),
                    ("total_loss", out.total.item()),
                )
                err = Diverged(int(first_bad.item()), term, value)
                return DecomposeResult(comps, "diverged", int(first_bad.item()), records, str(err))
            losses = {"total_loss": out.total.item(), **{k: v.mean().item() for k, v in out.terms.items()}}
            mean_active = out.mask.float().sum(-1).mean().item() if cfg.topk is not None else None
            record = StepRecord(step, lr, losses, mean_active, snapshot(step, data_state))
            records.append(record)
            bar.set_postfix(loss=f"{losses['total_loss']:.3g}", active=mean_active)
            if on_step is not None:
                on_step(record)
            if step < cfg.steps and should_stop is not None and should_stop():
                return DecomposeResult(comps, "stopped", step, records)
        if step == cfg.steps:
            break
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        if cfg.unit_norm_matrices:
            comps.project_A_grads_()
        opt.step()
    return DecomposeResult(comps, "finished", cfg.steps, records)
