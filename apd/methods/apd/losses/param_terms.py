"""Faithfulness and simplicity of the fast step: one autograd node per decomposed parameter (docs/method.md §1.3, §1.7).

The same values and gradients as `faithfulness_loss` and `schatten_loss` (paper form) up to float
rounding, for less work on large factors: each factor's gradient is built in one buffer (the other
terms' gradient, plus the Schatten term, then the faithfulness GEMMs `dA = -2 R B^T`, `dB = -2 A^T R`
accumulated in place), not summed by autograd from one fresh copy per term; column and row norms
are reductions, not squared copies of A and B. The node also hands out aliases of A and B: the
step's other terms use those, so their gradients arrive in this node's backward.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from apd.methods.apd.components import Components, component_chunks
from apd.targets.base import Layer

SCHATTEN_EPS = 1e-16
"""Inside the power, as `schatten_loss`: keeps the gradient finite at zero norms."""
SMALL = 2**16
"""Up to this many elements of per-component copies, a product over components is one broadcast matmul."""


class _ParamTerms(torch.autograd.Function):
    """`||W - sum_c A_c B_c||^2 (I,)`, `sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + eps)^(p/2) (I, C)`, aliases of A and B.

    Works through the components in cache-sized chunks (`component_chunks`): the forward's copy of
    `[A_c ..]` for the GEMM and its norms, and the backward's gradient terms for a chunk, each read
    the chunk from memory once.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: Tensor, b: Tensor, w: Tensor | None, p: float | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n_inst, C, d_in, m = a.shape
        d_out = b.shape[-1]
        total = a.new_zeros(n_inst, d_in, d_out) if w is not None else None
        na = a.new_empty(n_inst, C, m) if p is not None else None
        nb = a.new_empty(n_inst, C, m) if p is not None else None
        for sl in component_chunks(a, b):
            a_c, b_c = a[:, sl], b[:, sl]
            if total is not None:  # sum_c A_c B_c as one GEMM per chunk over `[A_c ..]` side by side
                a_cols = a_c.permute(0, 2, 1, 3).reshape(n_inst, d_in, -1)
                total.baddbmm_(a_cols, b_c.reshape(n_inst, a_cols.shape[-1], d_out))
            if na is not None and nb is not None:
                na[:, sl] = torch.linalg.vecdot(a_c, a_c, dim=-2)  # norm() over a strided axis is 4x slower
                nb[:, sl] = torch.linalg.vector_norm(b_c, dim=-1).square_()
        sq, resid = a.new_zeros(n_inst), None
        if total is not None and w is not None:
            resid = w - total
            sq = torch.linalg.vecdot(resid.flatten(1), resid.flatten(1))
        norms, powered = a.new_zeros(n_inst, C), None
        if p is not None and na is not None and nb is not None:
            powered = (na * nb + SCHATTEN_EPS).pow(p / 2)
            norms = powered.sum(-1)
        ctx.p = p
        ctx.save_for_backward(a, b, resid, na, nb, powered)
        ctx.set_materialize_grads(False)
        return sq, norms, a.view_as(a), b.view_as(b)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, g_sq: Tensor | None, g_norms: Tensor | None, g_a: Tensor | None, g_b: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        a, b, resid, na, nb, powered = ctx.saved_tensors
        coef_a = coef_b = None
        if g_norms is not None and ctx.p is not None:
            # d/dA_{:,m} (na nb + eps)^(p/2) = p (na nb + eps)^(p/2 - 1) nb A_{:,m}
            t = g_norms.unsqueeze(-1) * ctx.p * powered / (na * nb + SCHATTEN_EPS)
            coef_a, coef_b = (t * nb).unsqueeze(-2), (t * na).unsqueeze(-1)
        r = None
        if g_sq is not None and resid is not None:
            r = resid * (-2 * g_sq).view(-1, 1, 1)  # (I, d_in, d_out)
        da, db = torch.empty_like(a), torch.empty_like(b)
        for sl in component_chunks(a, b):
            for x, d, g, coef in ((a, da, g_a, coef_a), (b, db, g_b, coef_b)):
                # the other terms' gradient plus the Schatten term, in this chunk of the buffer
                if coef is None:
                    d[:, sl] = 0.0 if g is None else g[:, sl]
                elif g is None:
                    torch.mul(x[:, sl], coef[:, sl], out=d[:, sl])
                else:
                    torch.addcmul(g[:, sl], x[:, sl], coef[:, sl], out=d[:, sl])
            if r is not None:
                _add_faithfulness_(da[:, sl], db[:, sl], a[:, sl], b[:, sl], r)
        return da, db, None, None


def _add_faithfulness_(da: Tensor, db: Tensor, a: Tensor, b: Tensor, r: Tensor) -> None:
    """`dA_c += r B_c^T`, `dB_c += A_c^T r` for every component of the chunk, `r (I, d_in, d_out)` shared."""
    n_inst, C = a.shape[:2]
    if n_inst * C * r[0].numel() <= SMALL:  # one matmul each, with r copied per component
        da += torch.matmul(r.unsqueeze(1), b.transpose(-1, -2))
        db += torch.matmul(a.transpose(-1, -2), r.unsqueeze(1))
        return
    for i in range(n_inst):  # r as a stride-0 batch: no copy per component
        r_c = r[i].expand(C, *r.shape[1:])
        da[i].baddbmm_(r_c, b[i].transpose(-1, -2))
        db[i].baddbmm_(a[i].transpose(-1, -2), r_c)


def param_terms(
    target_weights: dict[str, Tensor],
    components: Components,
    layers: tuple[Layer, ...],
    *,
    faithfulness: bool,
    schatten_p: float | None,
) -> tuple[Tensor, Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """`sum_l ||W_l - sum_c P_{c,l}||^2 (I,)`, `sum_l sum_m (|A_c,:,m|^2 |B_c,m,:|^2 + 1e-16)^(p/2) (I, C)`
    and `{param: (A, B)}` aliases of the factors for the step's other terms (`masked_layer_fns(factors=...)`).

    Summed over layers as `faithfulness_loss` and `schatten_loss` do: a tied layer counts twice. A term
    that is off (`faithfulness` False, `schatten_p` None) comes back as zeros and costs nothing.
    """
    uses = Counter(layer.param for layer in layers)
    sq: Tensor | None = None
    norms: Tensor | None = None
    factors = {}
    for param, n_uses in uses.items():
        w = target_weights[param].detach() if faithfulness else None
        s, n, a, b = _ParamTerms.apply(components.A[param], components.B[param], w, schatten_p)
        sq = n_uses * s if sq is None else sq + n_uses * s
        norms = n_uses * n if norms is None else norms + n_uses * n
        factors[param] = (a, b)
    assert sq is not None and norms is not None
    return sq, norms, factors
