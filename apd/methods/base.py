"""The seam between the training loop and a decomposition method (docs/architecture.md).

A method is one `Method` subclass plus its config (a `MethodConfig` subclass tagged by `method`)
and its `Decomposition` (the trained module). The loop (`apd.decompose`), the run folder
(`apd.run`), evaluation (`apd.metrics`), the sweep trial and the analysis call a method only
through these classes; none of them imports a method's own modules.

Shapes: inputs `(batch, instances, d)`; a decomposed parameter `(instances, d_in, d_out)`; a
method's components of it `(instances, C, d_in, d_out)` when materialised.

Packs (`apd.pack`): K settings of one method trained in one step along the instance axis, member j
owning instances `[j I, (j + 1) I)` of a target tiled K times. A method supports packs when

* every tensor of its `Decomposition`'s state dict has the instance axis first (the pack builds its
  components from each member's own `init` and cuts members out of them by slicing that axis);
* every op of its loss is per instance, so one member's values never reach another's;
* it names in `pack_keys` its own config keys that may differ between members (shape-free scalars:
  coefficients, top-k, ...; a key's None-ness may not differ: it switches a term on or off), and
  `packed_loss` computes the loss with each member's values of those keys (`Members.values`).

The shared keys of `apd.pack.MEMBER_KEYS` (lr and its schedule, seed, evaluation) are the loop's
business; every other key must be equal across the members. `before_step`/`after_backward` get
the first member's config. The target is tiled by `apd.pack.tile_target`, which needs the
instance axis first on its every parameter and buffer (checked: the gated target has none, so it
is refused). APD supports packs; a method with empty `pack_keys` (the default) runs every setting
alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
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
    """Scalar diagnostics recorded with the losses (e.g. APD's `mean_active`), keyed as in `Method.stat_keys`;
    `(members,)`, one per member, from `packed_loss`."""
    member_totals: Tensor | None = None
    """`packed_loss` only: each member's own total `(members,)` (`total` is their sum)."""


@dataclass(frozen=True)
class Members:
    """The configs of a pack's members (`apd.pack`): member j owns instances `[j I, (j + 1) I)`."""

    configs: tuple[Any, ...]
    instances: int
    """I: the instances of one member (the target's own)."""
    _cache: dict[tuple[str, str, torch.dtype], Tensor] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def first(self) -> Any:
        """The config whose structural keys (equal across members) the step reads."""
        return self.configs[0]

    def values(self, key: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """Each member's value of config attribute `key` `(members,)` on `device`, built once."""
        cached = self._cache.get((key, str(device), dtype))
        if cached is None:
            values = [getattr(cfg, key) for cfg in self.configs]
            cached = self._cache[(key, str(device), dtype)] = torch.tensor(values, device=device, dtype=dtype)
        return cached

    def per_instance(self, key: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """`values` repeated for each member's instances: `(members * I,)`."""
        key_i = f"{key}/instances"
        cached = self._cache.get((key_i, str(device), dtype))
        if cached is None:
            cached = self.values(key, device, dtype).repeat_interleave(self.instances)
            self._cache[(key_i, str(device), dtype)] = cached
        return cached

    def member_means(self, values: Tensor) -> Tensor:
        """Per-instance `(members * I,)` values averaged within each member: `(members,)`."""
        return values.view(len(self.configs), self.instances).mean(-1)


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
    pack_keys: ClassVar[frozenset[str]] = frozenset()
    """The method's config keys that may differ between the members of a pack (module docstring);
    empty: the method does not support packs."""

    @abstractmethod
    def init(self, cfg: Any, target: Target, generator: torch.Generator) -> Decomposition:
        """Fresh components for `target` on the CPU, drawn from `generator` (the same on every device)."""

    @abstractmethod
    def loss(self, cfg: Any, target: Target, comps: Decomposition, x: Tensor, generator: torch.Generator) -> StepOutput:
        """Every loss term for the batch `x`; `generator` (on x's device) drives any sampling."""

    def packed_loss(
        self, members: Members, target: Target, comps: Decomposition, x: Tensor, generators: Sequence[torch.Generator]
    ) -> StepOutput:
        """`loss` for a pack: per-instance `terms`, each member's total in `member_totals` with its own
        values of `pack_keys`, `stats` per member; `total` their sum, so each member's gradient is its own.
        `generators`: each member's sampling stream (the one `loss` would get alone)."""
        raise NotImplementedError(f"method {self.name} does not support packs")

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
