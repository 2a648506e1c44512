"""The optimisation loop every method shares: one function, reporting through callbacks (docs/method.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from apd.config import DecomposeConfig
from apd.errors import Diverged
from apd.methods import Decomposition, Method, method_of
from apd.schedules import lr_at
from apd.targets.base import Target


@dataclass(frozen=True)
class StepRecord:
    """Losses after `step` updates. `state()` snapshots everything needed to resume from here."""

    step: int
    lr: float
    losses: dict[str, float]
    stats: dict[str, float]
    """The method's scalar diagnostics (`Method.stat_keys`), e.g. APD's `mean_active`."""
    state: Callable[[], dict[str, Any]] = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        return {"step": float(self.step), "lr": self.lr, **self.losses, **self.stats}


@dataclass
class DecomposeResult:
    components: Decomposition
    status: Literal["finished", "diverged", "stopped"]
    steps_done: int
    records: list[StepRecord]
    error: str | None = None


def make_components(cfg: DecomposeConfig, target: Target, device: torch.device) -> Decomposition:
    """The method's fresh components, drawn on the CPU from `cfg.seed` (identical on every device)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    return method_of(cfg).init(cfg, target, gen).to(device)


def sampling_generator(cfg: DecomposeConfig, device: torch.device) -> torch.Generator:
    """The stream a method's loss samples from (e.g. SPD's masks): its own, apart from data and init."""
    return torch.Generator(device=device).manual_seed(cfg.seed + 2)


def decompose(
    cfg: DecomposeConfig,
    target: Target,
    batches: Iterator[Tensor],
    *,
    components: Decomposition | None = None,
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
    method: Method = method_of(cfg)
    device = next(iter(target.buffers()), next(target.parameters())).device
    comps = components if components is not None else make_components(cfg, target, device)
    # fused: one pass over each parameter instead of ~7 (on the CPU the per-tensor loop cost 10x more)
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(method.parameters(comps), lr=cfg.lr, weight_decay=0.0, fused=fused)
    sampling = sampling_generator(cfg, device)
    start, records = 0, list[StepRecord]()
    resumed_at = -1
    if state is not None:
        comps.load_state_dict(state["components"])
        opt.load_state_dict(state["optimizer"])
        if hasattr(batches, "load_state_dict") and "data" in state:
            batches.load_state_dict(state["data"])
        if "sampling" in state:
            sampling.set_state(state["sampling"].cpu())
        start = resumed_at = state["step"]

    def snapshot(step: int, data: Any) -> Callable[[], dict[str, Any]]:
        # Live references: consume (save) inside on_step, before the next update changes them.
        def fn() -> dict[str, Any]:
            return {
                "step": step,
                "components": comps.state_dict(),
                "optimizer": opt.state_dict(),
                "data": data,
                "sampling": sampling_state,
                "config": cfg.to_dict(),
            }

        sampling_state = sampling.get_state()  # before this step's loss draws from it
        return fn

    # NaN/inf are tracked on the device and checked at record steps, so steps need no host sync
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    # Records (and their syncs) come every log_every steps, which can outlast the whole run; the bar's
    # postfix is also refreshed every ~1% of the run (at least 10 steps apart): at most ~100 extra
    # host syncs per run, never one per step, and none without a bar (sweep trials).
    display_every = max(10, cfg.steps // 100)
    bar = tqdm(
        range(start, cfg.steps + 1),
        initial=start,
        total=cfg.steps + 1,
        disable=not progress,
        desc="decompose",
        dynamic_ncols=True,
    )
    for step in bar:
        method.before_step(cfg, comps)
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
        snap = snapshot(step, data_state) if is_record else None
        out = method.loss(cfg, target, comps, next(batches), sampling)
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
            stats = {k: v.item() for k, v in out.stats.items()}
            assert snap is not None
            record = StepRecord(step, lr, losses, stats, snap)
            records.append(record)
            bar.set_postfix(loss=f"{losses['total_loss']:.3g}", **{k: f"{v:.3g}" for k, v in stats.items()})
            if on_step is not None:
                on_step(record)
            if step < cfg.steps and should_stop is not None and should_stop():
                return DecomposeResult(comps, "stopped", step, records)
        elif progress and step % display_every == 0:
            _show(bar, out.total, out.stats)
        if step == cfg.steps:
            break
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        method.after_backward(cfg, comps)
        opt.step()
    return DecomposeResult(comps, "finished", cfg.steps, records)


def _show(bar: tqdm, total: Tensor, stats: dict[str, Tensor]) -> None:
    """The bar's postfix from this step's loss and stats: one device-to-host copy."""
    values = torch.stack([total.detach().float(), *(v.detach().float() for v in stats.values())]).tolist()
    shown = {k: f"{v:.3g}" for k, v in zip(stats, values[1:], strict=True)}
    bar.set_postfix(loss=f"{values[0]:.3g}", **shown, refresh=False)
