"""Stochastic masks (docs/spd.md §1.3) and the masked passes one step runs.

A mask is `m = g + (1 - g) r` with `r ~ U(0, 1)` per sample, instance and subcomponent, drawn
independently for every matrix, i.e. `m ~ U(g, 1)` with `dm/dg = 1 - r`. The layerwise loss draws its
own fresh r (the code; the paper's pseudocode reuses the full pass's, docs/spd.md §6 item 5).

Every reconstruction term is a set of masked passes (`Pass`): which matrices are swapped for their
masked subcomponents and with which mask; every other matrix keeps the target's weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from apd.methods.spd.config import SPDConfig


@dataclass(frozen=True)
class Noise:
    """Uniform draws `(S, L, rows, I, C)` of the stochastic terms (None where the term is off)."""

    stochastic: Tensor | None
    layerwise: Tensor | None

    def rows(self, index: Tensor) -> Noise:
        """The draws of the samples `index (n, I)` (per instance), for a step that computes only those."""

        def pick(r: Tensor | None) -> Tensor | None:
            if r is None:
                return None
            idx = index[None, None, :, :, None].expand(*r.shape[:2], -1, -1, r.shape[-1])
            return r.gather(2, idx)

        return Noise(pick(self.stochastic), pick(self.layerwise))


def draw_noise(cfg: SPDConfig, shape: tuple[int, int, int, int], generator: torch.Generator) -> Noise:
    """Draws for `shape = (L, rows, I, C)`: the full passes' first, then the layerwise passes' (each if on)."""
    size = (cfg.n_mask_samples, *shape)

    def draw(on: bool) -> Tensor | None:
        return torch.rand(size, generator=generator, device=generator.device) if on else None

    stochastic = draw(bool(cfg.stochastic_recon_coeff))
    return Noise(stochastic, draw(bool(cfg.stochastic_recon_layerwise_coeff)))


def stochastic_mask(g: Tensor, r: Tensor) -> Tensor:
    """`g + (1 - g) r`: uniform on [g, 1]."""
    return g + (1 - g) * r


@dataclass(frozen=True)
class Pass:
    """One masked forward: `masks[l]` for every swapped matrix l (None = all subcomponents, unmasked)."""

    masks: Mapping[int, Tensor | None]

    @property
    def swapped(self) -> frozenset[int]:
        return frozenset(self.masks)


@dataclass(frozen=True)
class PassGroup:
    """The passes of one loss term, averaged into it."""

    term: str
    passes: list[Pass]


def plan_passes(cfg: SPDConfig, g: Callable[[int], Tensor], noise: Noise, n_layers: int) -> list[PassGroup]:
    """Every masked pass of the active reconstruction terms, from the CI `g(l)` and the draws.

    Order: stochastic (per sample), stochastic layerwise (per sample, per matrix), CI-masked,
    CI-masked layerwise, unmasked.
    """
    matrices = range(n_layers)
    groups = []
    if noise.stochastic is not None:
        r = noise.stochastic
        passes = [Pass({i: stochastic_mask(g(i), r[s, i]) for i in matrices}) for s in range(r.shape[0])]
        groups.append(PassGroup("stochastic_recon_loss", passes))
    if noise.layerwise is not None:
        r = noise.layerwise
        passes = [Pass({i: stochastic_mask(g(i), r[s, i])}) for s in range(r.shape[0]) for i in matrices]
        groups.append(PassGroup("stochastic_recon_layerwise_loss", passes))
    if cfg.recon_coeff:
        groups.append(PassGroup("recon_loss", [Pass({i: g(i) for i in matrices})]))
    if cfg.recon_layerwise_coeff:
        groups.append(PassGroup("recon_layerwise_loss", [Pass({i: g(i)}) for i in matrices]))
    if cfg.out_recon_coeff:
        groups.append(PassGroup("out_recon_loss", [Pass(dict.fromkeys(matrices))]))
    return groups
