"""Top-k selection of components from attributions (docs/method.md §1.5).

`k` is one int, or one per instance (`(instances,)`, a pack's members each with their own top-k;
`k_max` its largest value, known on the host). Ties at the k-th largest value go to the lowest
index, so an instance's mask depends on its own attributions and k alone: the same in a pack as
alone.
"""

from __future__ import annotations

import torch
from torch import Tensor


def keep_largest(scores: Tensor, k: int | Tensor, k_max: int | None = None) -> Tensor:
    """Bool mask of the `k` largest entries along the last axis of `scores`.

    `k`: an int, or a tensor broadcastable to `scores.shape[:-1] + (1,)` whose largest value is `k_max`.
    """
    n = scores.shape[-1]
    top = min(k if isinstance(k, int) else (k_max if k_max is not None else int(k.max())), n)
    if top <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if isinstance(k, int):  # the k-th largest is the smallest of the k largest: no sort needed (20 % of topk)
        kth = scores.topk(top, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        need: Tensor | int = top
    else:
        ranked = scores.topk(top, dim=-1).values  # descending
        count_t = k.clamp(max=n).expand(*scores.shape[:-1], 1)
        kth = ranked.gather(-1, count_t - 1)
        need = count_t
    above = scores > kth
    tied = scores == kth
    # the k-th value's ties, lowest index first, fill what the larger values leave
    fill = need - above.sum(-1, keepdim=True)
    return above | (tied & (tied.cumsum(-1) <= fill))


def batch_topk_mask(attr: Tensor, k: int | Tensor, k_max: int | None = None) -> Tensor:
    """Keep the `k` largest attributions per instance over the whole `(batch, C)` slab.

    `attr: (batch, instances, C)` -> bool mask of the same shape; a sample may get 0 or many.
    """
    batch, n_inst, C = attr.shape
    flat = attr.transpose(0, 1).reshape(n_inst, batch * C)
    mask = keep_largest(flat, k if isinstance(k, int) else k.view(n_inst, 1), k_max)
    return mask.reshape(n_inst, batch, C).transpose(0, 1)


def sample_topk_mask(attr: Tensor, k: int | Tensor, k_max: int | None = None) -> Tensor:
    """Keep the `k` largest attributions of every sample and instance."""
    return keep_largest(attr, k if isinstance(k, int) else k.view(1, -1, 1), k_max)


def exact_topk_mask(attr: Tensor, x: Tensor) -> Tensor:
    """Batch top-k with k = the number of nonzero input features in the batch, per instance."""
    k = (x != 0).sum(dim=(0, 2))
    return batch_topk_mask(attr, k, int(k.max().item()))


def topk_mask(
    attr: Tensor,
    *,
    topk: float,
    batch_topk: bool,
    exact: bool = False,
    x: Tensor | None = None,
    always_on_last: bool = False,
    k: Tensor | None = None,
    k_max: int | None = None,
) -> Tensor:
    """The mask the minimality pass uses. `always_on_last`: distil_from_target (1.5).

    `k`: per-instance counts `(instances,)` used instead of `topk` (a pack's members' own
    `int(topk * batch)`, or `int(topk)` per sample), with `k_max` their largest.
    """
    if always_on_last:
        attr = attr[..., :-1]
    if exact:
        assert x is not None
        mask = exact_topk_mask(attr, x)
    elif k is not None:
        mask = batch_topk_mask(attr, k, k_max) if batch_topk else sample_topk_mask(attr, k, k_max)
    elif batch_topk:
        mask = batch_topk_mask(attr, int(topk * attr.shape[0]))
    else:
        mask = sample_topk_mask(attr, int(topk))
    if always_on_last:
        mask = torch.cat([mask, torch.ones_like(mask[..., :1])], dim=-1)
    return mask
