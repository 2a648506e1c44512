"""Faithfulness and simplicity of the fast step: one autograd node per decomposed parameter (method notes 1.3, 1.7).

The same values and gradients as `faithfulness_loss` and `schatten_loss` (paper form) up to float
rounding, for less work on large factors: `P = sum_c A_c B_c` is one GEMM over a copy of A laid out
`(d_in, C m)` that the backward reuses for `dB = -2 A^T R`; `dA = -2 R B^T` accumulates in place into
the Schatten term's `2 t A`, so each factor's gradient is built in one buffer, not summed from parts;
column and row norms are dot products (no squared copy of A or B).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from apd.methods.apd.components import Components
from apd.targets.base import Layer

SCHATTEN_EPS = 1e-16
"""Inside the power, as `schatten_loss`: keeps the gradient finite at zero norms."""
SMALL = 2**16
"""Up to this many elements of residual copies (one per component), `dA` is one broadcast matmul."""


class _ParamTerms(torch.autograd.Function):
    """`(||W - sum_c A_c B_c||^2 (I,), sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + eps)^(p/2) (I, C))` of one parameter."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, w: Tensor | None, p: float | None) -> tuple[Tensor, Tensor]:
        n_inst, C, d_in, m = a.shape
        d_out = b.shape[-1]
        sq = a.new_zeros(n_inst)
        a_cols = resid = None
        if w is not None:
            a_cols = a.permute(0, 2, 1, 3).reshape(n_inst, d_in, C * m)  # a copy: `[A_1 .. A_C]`
            resid = w - torch.bmm(a_cols, b.reshape(n_inst, C * m, d_out))
            sq = torch.linalg.vecdot(resid.flatten(1), resid.flatten(1))
        norms = a.new_zeros(n_inst, C)
        na = nb = powered = None
        if p is not None:
            na = torch.linalg.vecdot(a, a, dim=-2)  # (I, C, m)
            nb = torch.linalg.vecdot(b, b, dim=-1)
            powered = (na * nb + SCHATTEN_EPS).pow(p / 2)
            norms = powered.sum(-1)
        ctx.p = p
        ctx.save_for_backward(a, b, a_cols, resid, na, nb, powered)
        ctx.set_materialize_grads(False)
        return sq, norms

    @staticmethod
    def backward(ctx: Any, g_sq: Tensor | None, g_norms: Tensor | None) -> tuple[Tensor | None, ...]:
        a, b, a_cols, resid, na, nb, powered = ctx.saved_tensors
        n_inst, C, d_in, m = a.shape
        d_out = b.shape[-1]
        if g_norms is not None and ctx.p is not None:
            # d/dA_{:,m} (na nb + eps)^(p/2) = p (na nb + eps)^(p/2 - 1) nb A_{:,m}
            t = g_norms.unsqueeze(-1) * ctx.p * powered / (na * nb + SCHATTEN_EPS)
            da = a * (t * nb).unsqueeze(-2)
            db = b * (t * na).unsqueeze(-1)
        else:
            da, db = torch.zeros_like(a), torch.zeros_like(b)
        if g_sq is not None and resid is not None:
            r = resid * (-2 * g_sq).view(n_inst, 1, 1)
            if n_inst * C * d_in * d_out <= SMALL:
                da += torch.matmul(r.unsqueeze(1), b.transpose(-1, -2))  # copies r per component: small
            else:
                for i in range(n_inst):  # every component against the same residual: a stride-0 batch, no copy
                    da[i].baddbmm_(r[i].expand(C, d_in, d_out), b[i].transpose(-1, -2))
            db.view(n_inst, C * m, d_out).baddbmm_(a_cols.transpose(-1, -2), r)
        return da, db, None, None


def param_terms(
    target_weights: dict[str, Tensor],
    components: Components,
    layers: tuple[Layer, ...],
    *,
    faithfulness: bool,
    schatten_p: float | None,
) -> tuple[Tensor, Tensor]:
    """`(sum_l ||W_l - sum_c P_{c,l}||^2 (I,), sum_l sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + 1e-16)^(p/2) (I, C))`.

    Summed over layers as `faithfulness_loss` and `schatten_loss` do: a tied layer counts twice. A term
    that is off (`faithfulness` False, `schatten_p` None) comes back as zeros and costs nothing.
    """
    uses = Counter(layer.param for layer in layers)
    sq: Tensor | None = None
    norms: Tensor | None = None
    for param, n_uses in uses.items():
        w = target_weights[param].detach() if faithfulness else None
        s, n = _ParamTerms.apply(components.A[param], components.B[param], w, schatten_p)
        sq = n_uses * s if sq is None else sq + n_uses * s
        norms = n_uses * n if norms is None else norms + n_uses * n
    assert sq is not None and norms is not None
    return sq, norms
