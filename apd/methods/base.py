"""The seam between the training loop and a decomposition method (docs/architecture.md).

A method is one `Method` subclass plus its config (a `MethodConfig` subclass tagged by `method`)
and its `Decomposition` (the trained module). The loop (`apd.decompose`), the run folder
(`apd.run`), evaluation (`apd.metrics`), the sweep trial and the analysis call a method only
through these classes; none of them imports a method's own modules.

Shapes: inputs `(batch, instances, d)`; a decomposed parameter `(instances, d_in, d_out)`; a
method's components of it `(instances, C, d_in, d_out)` when materialised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from apd.config import MethodConfig
from apd.targets.base import Layer, LayerFn, Target

Masks = Tensor | Mapping[str, Tensor]
"""Component masks `(batch, instances, C)`: one tensor for every group, or one per group name."""


@dataclass
class StepOutput:
    """What one training step's loss computation returns."""

    terms: dict[str, Tensor]
    """Per-instance values `(instances,)` of every active loss term, keyed as in `Method.loss_keys`."""
    total: Tensor
    """The scalar the optimiser minimises."""
    stats: dict[str, Tensor] = field(default_factory=dict)
    """Scalar diagnostics recorded with the losses (e.g. APD's `mean_active`), keyed as in `Method.stat_keys`."""


class Decomposition(nn.Module):
    """The components a method learns for a target's decomposed parameters.

    Components come in *groups*: a group is a set of decomposed layers whose components share one
    index c and one mask (APD: a single group over every layer; SPD: one group per matrix).
    """

    n_instances: int
    params: tuple[str, ...]
    """The decomposed parameters (target.weights() keys) the components cover."""
    groups: dict[str, tuple[str, ...]]
    """Group name -> the names of the layers its components live in."""
    group_sizes: dict[str, int]
    """Group name -> number of components C of that group."""

    @property
    def C(self) -> int:
        """The number of components when every group has the same number (else an error)."""
        sizes = set(self.group_sizes.values())
        if len(sizes) != 1:
            raise ValueError(f"groups have different component counts: {self.group_sizes}")
        return sizes.pop()

    def component_weights(self, param: str) -> Tensor:
        """Each component's part of decomposed parameter `param`: `(instances, C, d_in, d_out)`."""
        raise NotImplementedError

    def total_weight(self, param: str) -> Tensor:
        """The sum of the components of `param`: `(instances, d_in, d_out)`."""
        return self.component_weights(param).sum(1)

    def layer_fns(self, layers: tuple[Layer, ...], mask: Masks | None = None) -> dict[str, LayerFn]:
        """The layers as the decomposition computes them: all components, or those weighted by `mask`."""
        raise NotImplementedError

    def group_of(self, layer: str) -> str:
        for group, members in self.groups.items():
            if layer in members:
                return group
        raise KeyError(layer)


class Method(ABC):
    """One decomposition method: its config, its components, its loss and its importances."""

    name: ClassVar[str]
    config_type: ClassVar[type[MethodConfig]]
    loss_keys: ClassVar[tuple[str, ...]]
    """Every loss term the method can report (`metrics.json` holds each, null where a term is off)."""
    stat_keys: ClassVar[tuple[str, ...]] = ()
    """Scalar diagnostics of a step record besides the losses."""
    importance_name: ClassVar[str] = "importance"
    """What `importances` computes, in words (APD: attributions; SPD: causal importances)."""

    @abstractmethod
    def init(self, cfg: Any, target: Target, generator: torch.Generator) -> Decomposition:
        """Fresh components for `target` on the CPU, drawn from `generator` (the same on every device)."""

    @abstractmethod
    def loss(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor, generator: torch.Generator) -> StepOutput:
        """Every loss term for the batch `x`; `generator` (on x's device) drives any sampling."""

    @abstractmethod
    def importances(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor) -> dict[str, Tensor]:
        """Detached per-sample importances `(batch, instances, C)` of every group, for evaluation."""

    def check_device(self, cfg: Any, device: torch.device) -> None:  # noqa: B027 (an optional hook)
        """Refuse settings the device cannot run (raise ConfigError)."""

    def parameters(self, comps: Decomposition) -> Iterable[nn.Parameter]:
        """What the optimiser updates."""
        return comps.parameters()

    def before_step(self, cfg: Any, comps: Decomposition) -> None:  # noqa: B027
        """Runs before each step's loss (e.g. renormalising factors)."""

    def after_backward(self, cfg: Any, comps: Decomposition) -> None:  # noqa: B027
        """Runs between `backward` and the optimiser step (e.g. projecting gradients)."""

    def saved_weights(self, comps: Decomposition) -> dict[str, Tensor]:
        """Materialised components written beside the state dict in `components.pt` (CPU tensors)."""
        return {p: comps.component_weights(p).detach().cpu() for p in comps.params}

    def load(self, cfg: Any, target: Target, state_dict: Mapping[str, Tensor], device: torch.device) -> Decomposition:
        """Components saved by `apd.run` (`components.pt`'s `state_dict`), on `device`."""
        comps = self.init(cfg, target, torch.Generator().manual_seed(0)).to(device)
        comps.load_state_dict(dict(state_dict))
        return comps
