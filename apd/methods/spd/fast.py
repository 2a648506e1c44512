"""The fast SPD step: the reference step's numbers (`apd.methods.spd.naive`) from fewer, batched passes.

Exact up to float rounding (tests/methods/spd/test_fast.py checks losses and gradients on every target
family with the same draws):

* **CI functions**: every subcomponent of every matrix in one batched op (`ci.batched_gate`).
* **Masked passes stacked along the batch**: the S full passes, the S x L layerwise passes and any
  CI-masked or unmasked pass run as one forward of the repeated batch. Each matrix computes, per pass,
  only what that pass needs (docs/spd.md §7): the swapped matrix's masked subcomponents; the target's
  own output where no earlier matrix is swapped (layerwise prefix, from the clean pass); the target
  weight elsewhere. A swapped matrix whose input is still the target's reuses `h = a A` from the CI
  step. (Computing each case on its own rows is cheaper than the spec's delta trick, and exact.)
* **Residual MLPs** run in folded coordinates (`apd.methods.spd.resid`): nothing of width d_embed is
  computed per sample.
* **Zero samples** (`zero_rows`): a sample whose decomposed layers all see a zero input (in every
  pass, since its first swapped matrix then outputs exactly 0 = the target's output) adds 0 to every
  reconstruction loss and the CI at 0 to the importance loss, so only the other samples are computed
  (per instance, padded to the largest count), with the batch mean still over the whole batch. Mask
  draws are made for the computed samples only; the naive step draws for all.
* Terms whose coefficient is null or 0 are never computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from apd.methods.base import StepOutput
from apd.methods.spd.ci import batched_gate, gate_at_zero
from apd.methods.spd.components import SPDComponents
from apd.methods.spd.config import SPDConfig
from apd.methods.spd.losses import divergence, faithfulness_loss, importance_minimality_loss
from apd.methods.spd.masks import Noise, Pass, draw_noise, plan_passes
from apd.methods.spd.naive import CI_L0_THRESHOLD, assemble
from apd.methods.spd.sigmoids import lower_sigmoid, upper_leaky
from apd.targets.base import Layer, LayerFn, Target, run_with_cache
from apd.targets.resid_mlp import ResidMLP


@dataclass
class CleanPass:
    """The target's pass on the computed samples, and what the masked passes reuse from it."""

    out: Tensor
    """Target output `(n, I, d_out)` on the computed samples."""
    h: list[Tensor]
    """Inner activations `a_l A_l (n, I, C)` of every matrix (target.layers order), with their graph to A."""


class Runner:
    """A target's clean pass and its masked passes on the computed samples `x (n, I, n_inputs)`."""

    clean: CleanPass

    def outputs(self, passes: Sequence[Pass]) -> Tensor:
        """Outputs `(len(passes), n, I, d_out)` of the masked passes."""
        raise NotImplementedError


def skip_zero_rows(cfg: SPDConfig, device: torch.device) -> bool:
    return cfg.zero_rows == "skip" or (cfg.zero_rows == "auto" and device.type == "cpu")


def kept_rows(active: Tensor) -> Tensor:
    """`(n, I)` sample indices per instance: the active ones first, padded with inactive ones to one count.

    n is read on the host (the one sync of the step), at least 1.
    """
    n = max(int(active.sum(0).max()), 1)
    return active.to(torch.float32).topk(n, dim=0, sorted=False).indices  # every active row, in any order


def take(t: Tensor, rows: Tensor) -> Tensor:
    """The samples `rows (n, I)` of `t (batch, I, ...)`, per instance."""
    idx = rows.view(*rows.shape, *([1] * (t.dim() - 2))).expand(*rows.shape, *t.shape[2:])
    return t.gather(0, idx)


def fast_loss(
    cfg: SPDConfig,
    target: Target,
    comps: SPDComponents,
    x: Tensor,
    generator: torch.Generator,
    noise: Noise | None = None,
) -> StepOutput:
    """Every active loss term for the batch `x`; `noise` (drawn for the whole batch) replaces the draws (tests)."""
    layers, batch = target.layers, x.shape[0]
    skip = skip_zero_rows(cfg, x.device)
    if type(target) is ResidMLP:
        from apd.methods.spd.resid import ResidRunner

        rows = kept_rows(x.ne(0).any(-1)) if skip else None
        runner: Runner = ResidRunner(target, comps, x if rows is None else take(x, rows))
    else:
        runner, rows = GenericRunner.build(target, comps, x, skip)
    n = runner.clean.out.shape[0]
    weights = _ci_weights(comps)
    raw = batched_gate(torch.stack(runner.clean.h), weights, compile=cfg.compile)  # (L, n, I, C)
    lower = lower_sigmoid(cfg.lower_sigmoid)
    g = lower(raw)
    raw0 = gate_at_zero(weights) if n < batch else None  # (L, I, C): CI of every sample not computed

    terms: dict[str, Tensor] = {}
    if cfg.faithfulness_coeff:
        tw = {layer.name: target.layer_weight(layer).detach() for layer in layers}
        terms["faithfulness_loss"] = faithfulness_loss(tw, {ly.name: comps.layer_weight(ly) for ly in layers})
    if noise is None:
        noise = draw_noise(cfg, (len(layers), n, x.shape[1], comps.C), generator)
    elif rows is not None:
        noise = noise.rows(rows)
    groups = plan_passes(cfg, g.__getitem__, noise, len(layers))
    if groups:
        outs = runner.outputs([p for group in groups for p in group.passes])
        divs = divergence(outs, runner.clean.out, cfg.output_loss_type, batch)  # (passes, I)
        for group, part in zip(groups, divs.split([len(gr.passes) for gr in groups]), strict=True):
            terms[group.term] = part.mean(0)
    if cfg.importance_minimality_coeff:
        assert cfg.pnorm is not None
        imp = importance_minimality_loss([upper_leaky(raw).flatten(0, 1)], cfg.pnorm, batch)
        if raw0 is not None:
            imp = imp + (batch - n) * upper_leaky(raw0).pow(cfg.pnorm).sum(dim=(0, 2)) / batch
        terms["importance_minimality_loss"] = imp
    active = (g > CI_L0_THRESHOLD).float().sum(dim=(0, 3)).sum(0)  # (I,)
    if raw0 is not None:
        active = active + (batch - n) * (lower(raw0) > CI_L0_THRESHOLD).float().sum(dim=(0, 2))
    return assemble(cfg, terms, active / batch)


def _ci_weights(comps: SPDComponents) -> tuple[Tensor, ...]:
    if comps.d_gate > 0:
        return comps.ci_w_in, comps.ci_b_in, comps.ci_w_out, comps.ci_b_out
    return comps.ci_w, comps.ci_b


class GenericRunner(Runner):
    """Any target through `Target.forward` with layer functions: the masked passes as one stacked forward."""

    def __init__(
        self, target: Target, comps: SPDComponents, x: Tensor, cache: dict[str, tuple[Tensor, Tensor]], out: Tensor
    ) -> None:
        self.target, self.comps, self.x, self.cache = target, comps, x, cache
        self.position = {name: i for i, name in enumerate(cache)}  # forward order (the cache's insertion order)
        h = [comps.inner(layer, cache[layer.name][0]) for layer in target.layers]
        self.clean = CleanPass(out, h)

    @classmethod
    def build(cls, target: Target, comps: SPDComponents, x: Tensor, skip: bool) -> tuple[GenericRunner, Tensor | None]:
        with torch.no_grad():
            out, cache = run_with_cache(target, x)
        rows = None
        if skip:
            active = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            for a, _ in cache.values():
                active |= a.ne(0).any(-1)
            rows = kept_rows(active)
            x, out = take(x, rows), take(out, rows)
            cache = {k: (take(a, rows), take(o, rows)) for k, (a, o) in cache.items()}
        return cls(target, comps, x, cache, out), rows

    def outputs(self, passes: Sequence[Pass]) -> Tensor:
        n = self.x.shape[0]
        fns = {layer.name: self._layer_fn(index, layer, passes) for index, layer in enumerate(self.target.layers)}
        out = self.target(self.x.repeat(len(passes), *([1] * (self.x.dim() - 1))), fns)
        return out.view(len(passes), n, *out.shape[1:])

    def _layer_fn(self, index: int, layer: Layer, passes: Sequence[Pass]) -> LayerFn:
        """Layer `index` over the stacked passes: consecutive passes that treat it alike form one segment."""
        here = self.position[layer.name]
        segments: list[list] = []  # [kind, first pass, end pass, masks]
        for j, p in enumerate(passes):
            clean = not any(self.position[self.target.layers[k].name] < here for k in p.swapped)
            if index in p.masks:
                mask = p.masks[index]
                kind = ("reuse" if clean else "masked") + ("" if mask is not None else "-unmasked")
            else:
                kind, mask = ("cached" if clean else "target"), None
            if segments and segments[-1][0] == kind:
                segments[-1][2] += 1
                segments[-1][3].append(mask)
            else:
                segments.append([kind, j, j + 1, [mask]])
        n = self.x.shape[0]
        out_clean = self.cache[layer.name][1]
        h = self.clean.h[index]
        weight = self.target.layer_weight(layer).detach()
        _, b = self.comps.factors(layer)

        def fn(a: Tensor) -> Tensor:
            parts = []
            for kind, j0, j1, masks in segments:
                k = j1 - j0
                if kind == "cached":  # no swapped matrix before this one: the target's own output
                    parts.append(out_clean.repeat(k, *([1] * (out_clean.dim() - 1))))
                elif kind == "target":
                    parts.append(torch.einsum("b i d, i d e -> b i e", a[j0 * n : j1 * n], weight))
                else:
                    if kind.startswith("reuse"):  # input = the target's: h from the CI step
                        inner = h.expand(k, *h.shape)
                    else:
                        inner = self.comps.inner(layer, a[j0 * n : j1 * n]).view(k, *h.shape)
                    if not kind.endswith("unmasked"):
                        inner = inner * torch.stack(masks)  # type: ignore[arg-type]
                    parts.append(torch.einsum("k b i c, i c e -> k b i e", inner, b).flatten(0, 1))
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return fn
