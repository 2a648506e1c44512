"""Residual MLPs in folded coordinates: SPD's clean and masked passes without any d_embed-wide sample.

`r_0 = x W_E`, `r_{k+1} = r_k + ReLU(r_k W_in_k) W_out_k`, `y = r_L W_Eᵀ`. The stream is only ever
read by a later `W_in` (or, swapped, by `A_in`: the CI input and the masked inner activations) and
by `W_Eᵀ`, so every write is carried as its products with those readers: a layer's write is
`hid W_out` (target) or `(v ⊙ m) B_out` (swapped, `v = hid A_out`), read by R as `hid (W_out R)` or
`(v ⊙ m)(B_out R)`. The folds `W_E R`, `W_out R`, `B_out R` are batch-free: the target's once per
target, the subcomponents' once per step. Per sample everything is n_features, d_mlp or C wide.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor

from apd.methods.spd.components import SPDComponents
from apd.methods.spd.fast import CleanPass, Runner
from apd.methods.spd.masks import Pass
from apd.targets.resid_mlp import ResidMLP

_TARGET_FOLDS: weakref.WeakKeyDictionary[ResidMLP, tuple[tuple[int, ...], dict[str, Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def _mm(a: Tensor, w: Tensor) -> Tensor:
    """`a (batch, I, p) @ w (I, p, q)` per instance."""
    return torch.einsum("b i p, i p q -> b i q", a, w)


def target_folds(target: ResidMLP) -> dict[str, Tensor]:
    """Products of the frozen target weights, cached until a weight changes: `in{k}` = W_E W_in_k,
    `out{j}>{k}` = W_out_j W_in_k, `out{k}>U` = W_out_k W_Eᵀ, `E>U` = W_E W_Eᵀ."""
    w_e: Tensor = target.get_buffer("W_E")
    weights = target.weights()
    key = tuple(v for t in (w_e, *weights.values()) for v in (t.data_ptr(), t._version))
    hit = _TARGET_FOLDS.get(target)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        e_t = w_e.transpose(-1, -2)
        folds = {"E>U": w_e @ e_t}
        for k in range(target.n_layers):
            folds[f"in{k}"] = w_e @ weights[f"mlp_in_{k}"]
            folds[f"out{k}>U"] = weights[f"mlp_out_{k}"] @ e_t
            for j in range(k):
                folds[f"out{j}>{k}"] = weights[f"mlp_out_{j}"] @ weights[f"mlp_in_{k}"]
    _TARGET_FOLDS[target] = (key, folds)
    return folds


class ResidRunner(Runner):
    """Clean and masked passes of a `ResidMLP` on the samples `x (n, I, n_features)`."""

    def __init__(self, target: ResidMLP, comps: SPDComponents, x: Tensor) -> None:
        self.target, self.comps, self.x = target, comps, x
        self.n_layers = target.n_layers
        names = [layer.name for layer in target.layers]
        self.index_in = [names.index(f"mlp_in_{k}") for k in range(self.n_layers)]
        self.index_out = [names.index(f"mlp_out_{k}") for k in range(self.n_layers)]
        self.const = target_folds(target)
        self._folds: dict[str, Tensor] = {}
        with torch.no_grad():
            self.hid: list[Tensor] = []
            self.out_parts: list[Tensor] = []  # hid_k (W_out_k W_Eᵀ): each layer's share of the output
            for k in range(self.n_layers):
                pre = _mm(x, self.const[f"in{k}"])
                for j in range(k):
                    pre = pre + _mm(self.hid[j], self.const[f"out{j}>{k}"])
                self.hid.append(pre.relu())
                self.out_parts.append(_mm(self.hid[k], self.const[f"out{k}>U"]))
            self.x_out = _mm(x, self.const["E>U"])
            out = self.x_out + sum(self.out_parts)
        h: list[Tensor] = [x.new_empty(0)] * len(names)
        for k in range(self.n_layers):
            h[self.index_in[k]] = self._read(k, [("clean", j) for j in range(k)], "A")  # r_k A_in_k
            h[self.index_out[k]] = _mm(self.hid[k], self._a(self.index_out[k]))
        self.clean = CleanPass(out, h)

    def _a(self, index: int) -> Tensor:
        return self.comps.factors(self.target.layers[index])[0]

    def _b(self, index: int) -> Tensor:
        return self.comps.factors(self.target.layers[index])[1]

    def _fold(self, key: str) -> Tensor:
        """Subcomponent folds, once per step: `EA{k}` = W_E A_in_k, `oA{j}>{k}` = W_out_j A_in_k,
        `bW{j}>{k}` = B_out_j W_in_k, `bA{j}>{k}` = B_out_j A_in_k, `bU{j}` = B_out_j W_Eᵀ."""
        if key not in self._folds:
            w_e: Tensor = self.target.get_buffer("W_E")
            kind = key[:2]
            j, _, k = key[2:].partition(">")
            if kind == "EA":
                fold = w_e @ self._a(self.index_in[int(j)])
            elif kind == "oA":
                fold = self.target.weights()[f"mlp_out_{j}"].detach() @ self._a(self.index_in[int(k)])
            elif kind == "bW":
                fold = self._b(self.index_out[int(j)]) @ self.target.weights()[f"mlp_in_{k}"].detach()
            elif kind == "bA":
                fold = self._b(self.index_out[int(j)]) @ self._a(self.index_in[int(k)])
            else:
                fold = self._b(self.index_out[int(j)]) @ w_e.transpose(-1, -2)
            self._folds[key] = fold
        return self._folds[key]

    def _read(self, k: int, writes: list[tuple[str, int | Tensor]], reader: str) -> Tensor:
        """`r_k R` for R = A_in_k (`reader` "A") or W_in_k ("W"), from x and the writes of layers j < k.

        A write is ("clean", j) (the target's hid_j), ("target", hid) or ("masked", v ⊙ m).
        """
        total = _mm(self.x, self._fold(f"EA{k}") if reader == "A" else self.const[f"in{k}"])
        for j, (kind, value) in enumerate(writes):
            if kind == "masked":
                assert isinstance(value, Tensor)
                fold = self._fold(f"bA{j}>{k}") if reader == "A" else self._fold(f"bW{j}>{k}")
            else:
                value = self.hid[j] if kind == "clean" else value
                assert isinstance(value, Tensor)
                fold = self._fold(f"oA{j}>{k}") if reader == "A" else self.const[f"out{j}>{k}"]
            total = total + _mm(value, fold)
        return total

    def outputs(self, passes: Sequence[Pass]) -> Tensor:
        return torch.stack([self._output(p) for p in passes])

    def _output(self, p: Pass) -> Tensor:
        clean = True  # no swapped matrix so far: activations are the target's
        writes: list[tuple[str, int | Tensor]] = []
        for k in range(self.n_layers):
            i_in, i_out = self.index_in[k], self.index_out[k]
            if i_in in p.masks:
                u = self.clean.h[i_in] if clean else self._read(k, writes, "A")
                mask = p.masks[i_in]
                hid = _mm(u if mask is None else u * mask, self._b(i_in)).relu()
                clean = False
            else:
                hid = self.hid[k] if clean else self._read(k, writes, "W").relu()
            if i_out in p.masks:
                v = self.clean.h[i_out] if clean else _mm(hid, self._a(i_out))
                mask = p.masks[i_out]
                writes.append(("masked", v if mask is None else v * mask))
                clean = False
            else:
                writes.append(("clean", k) if clean else ("target", hid))
        out = self.x_out
        for k, (kind, value) in enumerate(writes):
            if kind == "clean":
                out = out + self.out_parts[k]
            else:
                assert isinstance(value, Tensor)
                out = out + _mm(value, self._fold(f"bU{k}") if kind == "masked" else self.const[f"out{k}>U"])
        return out
