"""Packs: K settings of one method trained as one decomposition along the instance axis (docs/method.md).

Member j of a pack owns instances `[j I, (j + 1) I)` of the target tiled K times (`tile_target`).
Its components are drawn by its own `init` from its own seed, its batches come from its own data
stream, its loss uses its own coefficients and top-k (`Method.packed_loss`), and `PackedAdam`
steps it with its own learning rate. Every op is per instance, so a member trains exactly as it
would alone, to float rounding (`tests/test_pack.py` checks it against solo runs). A member whose
loss turns NaN or infinite leaves the pack at the next record, DIVERGED at its own step; the
others go on, in a pack that no longer computes it.

What may differ between members: `MEMBER_KEYS` (every method) and the method's `pack_keys`
(`apd.methods.base` says how a method supports packs). Everything else (shapes, steps, batch
size, target, device, ...) must be equal: `check_members` refuses other packs in one line.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from apd.config import MethodConfig
from apd.decompose import DecomposeResult, StepRecord, sampling_generator
from apd.errors import ConfigError, Diverged
from apd.methods import Decomposition, Members, Method, StepOutput, method_of
from apd.schedules import lr_at
from apd.targets.base import Target

MEMBER_KEYS = frozenset({"lr", "lr_schedule", "lr_warmup_pct", "lr_exponential_halflife", "seed", "eval"})
"""Config keys of every method that may differ between members: the learning rate and its schedule
(per-member steps in `PackedAdam`), the seed (each member's own init and data stream) and the
evaluation settings (each member is judged alone)."""

LR_BLOCK = 256
"""Steps of per-member Adam step sizes computed on the host and sent to the device at once."""


# ---------------------------------------------------------------------------------------------
# Which settings can share a pack


def pack_key(cfg: MethodConfig) -> str:
    """Settings with equal keys can share a pack (a method without `pack_keys` packs with nothing)."""
    method = method_of(cfg)
    data = cfg.to_dict()
    if not method.pack_keys:
        return json.dumps(data, sort_keys=True)
    for key in MEMBER_KEYS:
        data.pop(key, None)
    for key in method.pack_keys:  # their values may differ, not whether a term is on
        data[key] = data.get(key) is None
    return json.dumps(data, sort_keys=True)


def check_members(cfgs: Sequence[MethodConfig]) -> None:
    """ConfigError naming the first key in which the configs cannot share a pack."""
    if not cfgs:
        raise ConfigError("pack: no members")
    method = method_of(cfgs[0])
    if len(cfgs) > 1 and not method.pack_keys:
        raise ConfigError(f"pack: method {method.name} does not support packs (use pack: 1)")
    first = _flat(cfgs[0].to_dict())
    for cfg in cfgs[1:]:
        if pack_key(cfg) == pack_key(cfgs[0]):
            continue
        other = _flat(cfg.to_dict())
        for key in sorted(first.keys() | other.keys()):
            root = key.split(".")[0]
            if root in MEMBER_KEYS or first.get(key) == other.get(key):
                continue
            if key in method.pack_keys and (first.get(key) is None) == (other.get(key) is None):
                continue
            raise ConfigError(
                f"pack: members differ in {key} ({first.get(key)!r} vs {other.get(key)!r}); only "
                f"{', '.join(sorted(MEMBER_KEYS | method.pack_keys))} may differ within a pack "
                "(a coefficient only in value, not in being set)"
            )


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# Building a pack: tiled target, members' components


def tile_target(target: Target, k: int) -> Target:
    """`target` with every instance repeated for k members (member-major), frozen like it.

    Every parameter and buffer must carry the instance axis first, except those a target declares
    `shared_tensors`; the tiled target's output is checked against the target's on a random batch,
    so a target that breaks that rule is refused.
    """
    if k == 1:
        return target
    n = target.n_instances
    tiled = copy.deepcopy(target)
    for module in tiled.modules():
        shared = getattr(module, "shared_tensors", ())
        for tensors in (module._parameters, module._buffers):
            for name, t in tensors.items():
                if t is None or name in shared:
                    continue
                if t.dim() == 0 or t.shape[0] != n:
                    why = f"{name} has no instance axis"
                    raise ConfigError(f"pack: target {type(target).__name__} cannot be packed ({why})")
                repeated = t.detach().repeat(k, *([1] * (t.dim() - 1)))
                tensors[name] = nn.Parameter(repeated, t.requires_grad) if isinstance(t, nn.Parameter) else repeated  # type: ignore[assignment]
    tiled.n_instances = n * k
    _check_tiled(target, tiled, k)
    return tiled


@torch.no_grad()
def _check_tiled(target: Target, tiled: Target, k: int) -> None:
    device = next(iter(target.buffers()), next(target.parameters())).device
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(3, target.n_instances, target.n_inputs, generator=gen, device=device)
    try:
        out = tiled(x.repeat(1, k, 1))
    except RuntimeError:
        out = None
    alone = target(x).repeat(1, k, 1)
    if out is None or out.shape != alone.shape or not torch.allclose(out, alone):
        raise ConfigError(f"pack: target {type(target).__name__} cannot be packed (its tiled copy computes otherwise)")


def instance_rows(members: Sequence[int], n: int, device: torch.device) -> Tensor:
    """The instance indices of the members at positions `members` of a pack of n-instance members."""
    idx = torch.tensor(members, dtype=torch.long, device=device)
    return (idx[:, None] * n + torch.arange(n, device=device)).flatten()


def member_components(
    method: Method, cfg: MethodConfig, target: Target, packed: Decomposition, position: int
) -> Decomposition:
    """The components of the member at `position`, cut out of the pack's (a copy, on their device)."""
    n = target.n_instances
    device = next(packed.parameters()).device
    comps = method.init(cfg, target, torch.Generator().manual_seed(0)).to(device)
    sl = slice(position * n, (position + 1) * n)
    comps.load_state_dict({k: v[sl].clone() for k, v in packed.state_dict().items()})
    return comps


class PackedAdam:
    """AdamW without weight decay, one learning rate per member: `torch.optim.AdamW`'s single-tensor
    step op for op (its CPU path), with the step size `-lr / (1 - beta1^t)` applied per member."""

    def __init__(self, params: Sequence[nn.Parameter], members: int, betas: tuple[float, float] = (0.9, 0.999)):
        self.params, self.members, self.betas, self.eps = list(params), members, betas, 1e-8
        self.t = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step_sizes(self, lrs: Sequence[float], t: int) -> list[float]:
        """Each member's `-lr / (1 - beta1^t)`, in double on the host as AdamW computes it."""
        bias1 = 1 - self.betas[0] ** t
        return [-(lr / bias1) for lr in lrs]

    @torch.no_grad()
    def step(self, neg_step: Tensor) -> None:
        """One update with the members' step sizes `neg_step (members,)` (`step_sizes` at t + 1)."""
        self.t += 1
        beta1, beta2 = self.betas
        bias2_sqrt = (1 - beta2**self.t) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            grad = p.grad
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            scaled = m.view(self.members, -1) * neg_step.view(-1, 1)  # AdamW: value * exp_avg inside addcdiv
            p.view(self.members, -1).addcdiv_(scaled, denom.view(self.members, -1))

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "exp_avg": list(self.exp_avg), "exp_avg_sq": list(self.exp_avg_sq)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        for mine, saved in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            for dst, src in zip(mine, saved, strict=True):
                dst.copy_(src)

    def select_(self, rows: Tensor, members: int) -> None:
        """Keep only the instance `rows` of every state tensor (members left the pack)."""
        self.exp_avg = [m[rows].clone() for m in self.exp_avg]
        self.exp_avg_sq = [v[rows].clone() for v in self.exp_avg_sq]
        self.members = members


class _Pack:
    """The live members of a pack: their configs, tiled target, components, optimiser and step sizes."""

    def __init__(self, cfgs: Sequence[MethodConfig], target: Target, alive: Sequence[int]) -> None:
        self.cfgs, self.target, self.alive = list(cfgs), target, list(alive)
        self.method = method_of(cfgs[0])
        self.device = next(iter(target.buffers()), next(target.parameters())).device
        self.members = Members(tuple(cfgs[j] for j in self.alive), target.n_instances)
        self.packed_target = tile_target(target, len(self.alive))
        parts = [
            self.method.init(cfgs[j], target, torch.Generator().manual_seed(cfgs[j].seed)).state_dict()
            for j in self.alive
        ]
        self.comps = self.method.init(self.members.first, self.packed_target, torch.Generator().manual_seed(0))
        self.comps.load_state_dict({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
        self.comps.to(self.device)
        self.opt = PackedAdam(list(self.method.parameters(self.comps)), len(self.alive))
        self._block: tuple[int, list[list[float]], Tensor] | None = None

    def lrs(self, step: int) -> tuple[list[float], Tensor]:
        """Each live member's lr at `step` (host) and its Adam step size for that step's update (device)."""
        start, lrs, sizes = self._block or (-LR_BLOCK, [], torch.empty(0))
        if not start <= step < start + LR_BLOCK:
            start = step
            lrs = [[_lr(self.cfgs[j], s) for j in self.alive] for s in range(step, step + LR_BLOCK)]
            steps = [self.opt.step_sizes(row, s + 1) for s, row in enumerate(lrs, start=step)]
            sizes = torch.tensor(steps, device=self.device)
            self._block = (start, lrs, sizes)
        return lrs[step - start], sizes[step - start]

    def drop(self, leaving: Sequence[int]) -> None:
        """Remove the members `leaving` (original indices): the pack stops computing them."""
        keep = [p for p, j in enumerate(self.alive) if j not in leaving]
        rows = instance_rows(keep, self.target.n_instances, self.device)
        state = {k: v[rows].clone() for k, v in self.comps.state_dict().items()}
        self.alive = [self.alive[p] for p in keep]
        self.members = Members(tuple(self.cfgs[j] for j in self.alive), self.target.n_instances)
        self.packed_target = tile_target(self.target, len(self.alive))
        self.comps = self.method.init(self.members.first, self.packed_target, torch.Generator().manual_seed(0))
        self.comps.load_state_dict(state)
        self.comps.to(self.device)
        old = self.opt
        self.opt = PackedAdam(list(self.method.parameters(self.comps)), len(self.alive))
        old.select_(rows, len(self.alive))
        self.opt.load_state_dict(old.state_dict())
        self._block = None

    def member(self, j: int) -> Decomposition:
        return member_components(self.method, self.cfgs[j], self.target, self.comps, self.alive.index(j))


def _draw(batches: Sequence[Iterator[Tensor]], alive: Sequence[int]) -> Tensor:
    """The pack's batch `(batch, K I, n)`: each member's next batch. Members that share one stream
    object (same seed and data settings, see `apd.run`) share its draw: one draw per distinct stream
    per step instead of one per member (on a GPU each draw is a few kernel launches)."""
    drawn: dict[int, Tensor] = {}
    for j in alive:
        key = id(batches[j])
        if key not in drawn:
            drawn[key] = next(batches[j])
    return torch.cat([drawn[id(batches[j])] for j in alive], dim=1)


def _lr(cfg: MethodConfig, step: int) -> float:
    return lr_at(
        step,
        lr=cfg.lr,
        steps=cfg.steps,
        schedule=cfg.lr_schedule,
        warmup_pct=cfg.lr_warmup_pct,
        halflife=cfg.lr_exponential_halflife,
    )


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass(frozen=True)
class PackRecord:
    """The records of the live members after `step` updates; `state()` snapshots the whole pack."""

    step: int
    records: dict[int, StepRecord]
    """Member index (its position in the configs) -> its record, as its solo run would make it."""
    state: Callable[[], dict[str, Any]]


def decompose_pack(
    cfgs: Sequence[MethodConfig],
    target: Target,
    batches: Sequence[Iterator[Tensor]],
    *,
    on_step: Callable[[PackRecord], None] | None = None,
    on_end: Callable[[int, DecomposeResult], None] | None = None,
    state: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[int, DecomposeResult]:
    """Train the members `cfgs` as one pack on `target` (their shared one), member j on `batches[j]`.

    The loop of `apd.decompose.decompose`, for K members at once: records every `log_every` steps,
    a member that diverged ends there (`on_end`, then it leaves the pack), and `state` resumes from
    a `PackRecord.state()` snapshot. Returns each member's result by its index in `cfgs` (after a
    resume: of the members the snapshot still held).
    """
    check_members(cfgs)
    cfg = cfgs[0]
    pack = _Pack(cfgs, target, state["members"] if state is not None else range(len(cfgs)))
    sampling = [sampling_generator(c, pack.device) for c in cfgs]
    resumed_at = _resume(pack, state, batches, sampling) if state is not None else -1
    start = max(resumed_at, 0)
    records: dict[int, list[StepRecord]] = {j: [] for j in range(len(cfgs))}
    results: dict[int, DecomposeResult] = {}

    def end(j: int, result: DecomposeResult) -> None:
        results[j] = result
        if on_end is not None:
            on_end(j, result)

    # NaN/inf are tracked per member on the device and read at record steps only (no host syncs)
    first_bad = torch.full((len(pack.alive),), -1, dtype=torch.long, device=pack.device)
    bar = tqdm(range(start, cfg.steps + 1), initial=start, total=cfg.steps + 1, disable=not progress, desc="pack")
    for step in bar:
        pack.method.before_step(cfg, pack.comps)
        lrs, neg_step = pack.lrs(step)
        is_record = step % cfg.log_every == 0 or step == cfg.steps
        snap = _snapshot(pack, step, batches, sampling) if is_record else None
        x = _draw(batches, pack.alive)
        out = pack.method.packed_loss(
            pack.members, pack.packed_target, pack.comps, x, [sampling[j] for j in pack.alive]
        )
        assert out.member_totals is not None, f"{pack.method.name}.packed_loss returned no member totals"
        first_bad = torch.where(~torch.isfinite(out.member_totals) & (first_bad < 0), step, first_bad)
        leaving: list[int] = []
        if snap is not None and step != resumed_at:  # a resumed run's first record repeats the last
            made, leaving = _record(pack, out, first_bad, step, lrs, snap, records, end)
            if on_step is not None and made:
                on_step(PackRecord(step, made, snap))
        if step == cfg.steps:
            break
        pack.opt.zero_grad()
        out.total.backward()
        pack.method.after_backward(cfg, pack.comps)
        pack.opt.step(neg_step)
        if leaving:  # after the update, which no other member's values depend on
            keep = [p for p, j in enumerate(pack.alive) if j not in leaving]
            if not keep:
                break
            first_bad = first_bad[keep]
            pack.drop(leaving)
    for j in list(pack.alive):
        if j not in results:
            end(j, DecomposeResult(pack.member(j), "finished", cfg.steps, records[j]))
    return results


def _resume(
    pack: _Pack, state: dict[str, Any], batches: Sequence[Iterator[Tensor]], sampling: Sequence[torch.Generator]
) -> int:
    """Load a `PackRecord.state()` snapshot into the pack and the members' streams; its step."""
    pack.comps.load_state_dict(state["components"])
    pack.opt.load_state_dict(state["optimizer"])
    for j, data, gen in zip(pack.alive, state["data"], state["sampling"], strict=True):
        if data is not None and hasattr(batches[j], "load_state_dict"):
            batches[j].load_state_dict(data)  # type: ignore[attr-defined]
        sampling[j].set_state(gen.cpu())
    return int(state["step"])


def _record(
    pack: _Pack,
    out: StepOutput,
    first_bad: Tensor,
    step: int,
    lrs: Sequence[float],
    snap: Callable[[], dict[str, Any]],
    records: dict[int, list[StepRecord]],
    end: Callable[[int, DecomposeResult], None],
) -> tuple[dict[int, StepRecord], list[int]]:
    """Each live member's record at `step` as its solo run makes it, or its end if its loss turned
    NaN/inf (at its first bad step): (the records, the members leaving)."""
    rows = _host_rows(pack, out, first_bad)
    made, leaving = {}, []
    for p, j in enumerate(pack.alive):
        bad, values = int(rows["first_bad"][p]), {k: v[p] for k, v in rows.items()}
        if bad >= 0:
            leaving.append(j)
            err = _diverged(bad, values, tuple(out.terms))
            end(j, DecomposeResult(pack.member(j), "diverged", bad, records[j], str(err)))
            continue
        losses = {"total_loss": values["total_loss"], **{k: values[k] for k in out.terms}}
        made[j] = StepRecord(step, lrs[p], losses, {k: values[k] for k in out.stats}, snap)
        records[j].append(made[j])
    return made, leaving


def _snapshot(
    pack: _Pack, step: int, batches: Sequence[Iterator[Tensor]], sampling: Sequence[torch.Generator]
) -> Callable[[], dict[str, Any]]:
    """The pack's state before this step's batch and loss (live references: save inside on_step)."""
    alive = list(pack.alive)
    data = [batches[j].state_dict() if hasattr(batches[j], "state_dict") else None for j in alive]  # type: ignore[attr-defined]
    gens = [sampling[j].get_state() for j in alive]
    comps, opt = pack.comps, pack.opt

    def fn() -> dict[str, Any]:
        return {
            "step": step,
            "members": alive,
            "components": comps.state_dict(),
            "optimizer": opt.state_dict(),
            "data": data,
            "sampling": gens,
            "configs": [pack.cfgs[j].to_dict() for j in alive],
        }

    return fn


def _host_rows(pack: _Pack, out: StepOutput, first_bad: Tensor) -> dict[str, list[float]]:
    """Every member's first bad step, total, term means and stats, read in one device-to-host copy."""
    assert out.member_totals is not None
    rows = {"first_bad": first_bad.to(out.member_totals.dtype), "total_loss": out.member_totals}
    rows |= {k: pack.members.member_means(v.detach()) for k, v in out.terms.items()}
    rows |= {k: v.detach() for k, v in out.stats.items()}
    values = torch.stack(list(rows.values())).tolist()
    return dict(zip(rows, values, strict=True))


def _diverged(step: int, values: dict[str, float], terms: Sequence[str]) -> Diverged:
    """As a solo run reports it: the first non-finite term, else the total."""
    term, value = next(
        ((k, values[k]) for k in terms if not math.isfinite(values[k])), ("total_loss", values["total_loss"])
    )
    return Diverged(step, term, value)


# ---------------------------------------------------------------------------------------------
# pack: auto


AUTO_MAX = 64
"""The largest pack `measure_pack_size` tries."""
AUTO_GAIN = 1.1
"""Doubling the pack must raise settings per second by this factor to be worth it."""


def measure_pack_size(cfg: MethodConfig, *, max_size: int = AUTO_MAX, steps: int = 5) -> int:
    """The pack size that trains the most settings of `cfg` per second on its device (`pack: auto`).

    1 on a CPU without measuring: there a step is bound by per-element work, so K members cost
    about K solo steps (bench/RESULTS.md). Elsewhere it times a few steps at K = 1, 2, 4, ... and
    stops when doubling K gains less than `AUTO_GAIN` in settings per second, or memory runs out.
    """
    from apd.device import resolve_device
    from apd.targets import load_target

    device = resolve_device(cfg.device)
    if device.type == "cpu" or not method_of(cfg).pack_keys:
        return 1
    loaded = load_target(cfg.target, device)
    best, best_rate, k = 1, 0.0, 1
    while k <= max_size:
        cfgs = [cfg.model_copy(update={"seed": cfg.seed + j}) for j in range(k)]
        try:
            seconds = _step_seconds(
                cfgs, loaded.model, [loaded.batches(c.batch_size, seed=c.seed) for c in cfgs], steps
            )
        except torch.OutOfMemoryError:
            break
        rate = k / seconds
        if rate < best_rate * AUTO_GAIN:
            break
        best, best_rate, k = k, rate, 2 * k
    return best


def _step_seconds(
    cfgs: Sequence[MethodConfig], target: Target, batches: Sequence[Iterator[Tensor]], steps: int
) -> float:
    """Seconds per training step of the pack `cfgs`, after two warm-up steps."""
    import time

    pack = _Pack(cfgs, target, range(len(cfgs)))
    sampling = [sampling_generator(c, pack.device) for c in cfgs]

    def step(s: int) -> None:
        pack.method.before_step(cfgs[0], pack.comps)
        _, neg_step = pack.lrs(s)
        x = torch.cat([next(b) for b in batches], dim=1)
        out = pack.method.packed_loss(pack.members, pack.packed_target, pack.comps, x, sampling)
        pack.opt.zero_grad()
        out.total.backward()
        pack.method.after_backward(cfgs[0], pack.comps)
        pack.opt.step(neg_step)

    for s in range(2):
        step(s)
    _sync(pack.device)
    start = time.perf_counter()
    for s in range(2, 2 + steps):
        step(s)
    _sync(pack.device)
    return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
