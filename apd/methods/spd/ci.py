"""Causal-importance functions (docs/spd.md §1.2): one scalar MLP per subcomponent, on its inner activation.

`h[b, i, c] = a[b, i] · A[i, :, c]` (a = the target's input to the matrix, not detached, so the CI side
also trains A). GateMLP: `ĝ = sum_k GELU(h w_in[c, k] + b_in[c, k]) w_out[c, k] + b_out[c]` (exact erf
GELU); affine gate (`n_ci_mlp_neurons: 0`): `ĝ = h w[c] + b[c]`. Then `g = σ_lo(ĝ)` (masks) and
`g+ = σ_up(ĝ)` (importance penalty).

`gate_mlp` is the reference form (one matrix, as the code's einsums). `batched_gate_mlp` evaluates the
MLPs of every subcomponent of every matrix as one op: a custom autograd function that never stores the
`(K, n, d_gate)` hidden layer (it recomputes it in backward, chunk by chunk, so on the CPU each chunk
stays in cache) and folds `w_out` into the reductions instead of materialising the hidden gradient.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

CPU_CHUNK_ELEMENTS = 2**16
"""Hidden-layer elements per chunk on the CPU (256 kB in fp32: the chunk's temporaries stay in L2)."""
CHUNK_ELEMENTS = 2**26
"""Elsewhere: bounds the transient hidden layer (256 MB in fp32)."""


def gate_mlp(h: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """One matrix's CI MLPs: `h (batch, I, C)`, weights `(I, C, d_gate)`, `b_out (I, C)` -> `ĝ (batch, I, C)`."""
    pre = torch.einsum("b i c, i c g -> b i c g", h, w_in) + b_in
    return torch.einsum("b i c g, i c g -> b i c", F.gelu(pre), w_out) + b_out


def gate_affine(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """One matrix's affine gates: `h (batch, I, C)`, `w, b (I, C)`."""
    return h * w + b


def gate(h: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """`gate_mlp` or `gate_affine`, by the number of weights (4 or 2)."""
    return gate_mlp(h, *weights) if len(weights) == 4 else gate_affine(h, *weights)


def gate_at_zero(weights: tuple[Tensor, ...]) -> Tensor:
    """`ĝ(0)` of every subcomponent: weights with any leading axes `(..., C[, d_gate])` -> `(..., C)`."""
    if len(weights) == 4:
        _, b_in, w_out, b_out = weights
        return (F.gelu(b_in) * w_out).sum(-1) + b_out
    return weights[1]


class _BatchedGateMLP(torch.autograd.Function):
    """`ĝ[k, b] = sum_g GELU(h[k, b] w_in[k, g] + b_in[k, g]) w_out[k, g] + b_out[k]` for K = (matrix, I, C).

    The hidden layer is laid out `(k, d_gate, n)`, so every reduction is a batched row-vector product,
    and each chunk runs a handful of ops that write straight into the outputs.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
        K, n = h.shape
        out = b_out.unsqueeze(-1).expand(K, n).contiguous().unsqueeze(1)  # (K, 1, n), starts at b_out
        h3, w_in3, b_in3, w_out3 = h.unsqueeze(1), w_in.unsqueeze(-1), b_in.unsqueeze(-1), w_out.unsqueeze(1)
        for sl in _chunks(h, w_in.shape[-1]):
            z = F.gelu(torch.baddbmm(b_in3[sl], w_in3[sl], h3[sl]))  # (k, G, n)
            out[sl].baddbmm_(w_out3[sl], z)
        ctx.save_for_backward(h, w_in, b_in, w_out)
        return out.squeeze(1)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (dout,) = grads
        h, w_in, b_in, w_out = ctx.saved_tensors
        K, n = h.shape
        G = w_in.shape[-1]
        d3 = dout.contiguous().unsqueeze(1)  # (K, 1, n)
        h3, w_in3, b_in3 = h.unsqueeze(1), w_in.unsqueeze(-1), b_in.unsqueeze(-1)
        fold = (w_out * w_in).unsqueeze(1)  # (K, 1, G): dh = sum_g dpre w_out w_in
        hs = torch.stack([h, torch.ones_like(h)], dim=1)  # (K, 2, n)
        dw_out = h.new_empty(K, 1, G)
        sums = h.new_empty(K, 2, G)  # sum_b h dpre, sum_b dpre
        dh = h.new_empty(K, 1, n) if ctx.needs_input_grad[0] else None
        for sl in _chunks(h, G):
            pre = torch.baddbmm(b_in3[sl], w_in3[sl], h3[sl])  # recomputed, (k, G, n)
            d = d3[sl]
            torch.bmm(d, F.gelu(pre).transpose(1, 2), out=dw_out[sl])
            # gelu'(pre) d: the hidden layer's gradient without its w_out factor, folded in below
            dpre = torch.ops.aten.gelu_backward(d.expand_as(pre), pre)
            torch.bmm(hs[sl], dpre.transpose(1, 2), out=sums[sl])
            if dh is not None:
                torch.bmm(fold[sl], dpre, out=dh[sl])
        dh_out = dh.squeeze(1) if dh is not None else None
        return dh_out, sums[:, 0] * w_out, sums[:, 1] * w_out, dw_out.squeeze(1), dout.sum(1)


def _chunks(h: Tensor, d_gate: int) -> list[slice]:
    """Slices of the K axis whose hidden layers `(k, n, d_gate)` hold at most the chunk budget."""
    budget = CPU_CHUNK_ELEMENTS if h.device.type == "cpu" else CHUNK_ELEMENTS
    rows = max(1, budget // max(h.shape[1] * d_gate, 1))
    return [slice(s, min(s + rows, h.shape[0])) for s in range(0, h.shape[0], rows)]


def _gate_formula(h: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """The batched MLPs as plain ops `(K, n)` -> `(K, n)`, for `torch.compile` to fuse."""
    z = F.gelu(h.unsqueeze(1) * w_in.unsqueeze(-1) + b_in.unsqueeze(-1))  # (K, G, n)
    return (z * w_out.unsqueeze(-1)).sum(1) + b_out.unsqueeze(-1)


@functools.cache
def _compiled_gate() -> Any:
    return torch.compile(_gate_formula, dynamic=True)  # one compilation for every batch size


def batched_gate(h: Tensor, weights: tuple[Tensor, ...], *, compile: bool = False) -> Tensor:
    """Every matrix's CI functions at once: `h (L, n, I, C)`, weights `(L, I, C[, d_gate])` -> `ĝ (L, n, I, C)`.

    `compile` runs the MLPs through `torch.compile` (fused forward and backward) instead of the chunked op.
    """
    L, n, n_inst, C = h.shape
    if len(weights) == 2:
        w, b = weights
        return h * w.unsqueeze(1) + b.unsqueeze(1)
    w_in, b_in, w_out, b_out = weights
    G = w_in.shape[-1]
    hk = h.permute(0, 2, 3, 1).reshape(L * n_inst * C, n)  # (K, n): one row of samples per subcomponent
    flat = [w.reshape(-1, G) for w in (w_in, b_in, w_out)]
    gate_fn = _compiled_gate() if compile else _BatchedGateMLP.apply
    out: Tensor = gate_fn(hk, *flat, b_out.reshape(-1))
    # contiguous in (L, n, I, C): every elementwise op downstream (sigmoids, masks) then runs vectorised
    return out.view(L, n_inst, C, n).permute(0, 3, 1, 2).contiguous()
