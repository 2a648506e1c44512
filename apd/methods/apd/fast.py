"""The fast APD step (docs/method.md §1.4, §6): attributions for all outputs at once, a cheap top-k pass.

Same numbers as the reference code (`apd.methods.apd.attributions`, `Components.layer_fn`) up to float
rounding; `tests/methods/apd/test_fast.py` checks every target family and attribution type.

* Gradient attributions `attr_c = sum_o s_{c,o}^2` need the output tangents
  `s_{c,o} = sum_l g_{o,l} . u_{c,l}`: the change of output o when every layer's weight moves
  along component c. TMS and residual MLPs get them in closed form (`GRADIENT_RULES`: forward mode
  in folded coordinates, `u_{c,l} M = (a_l A_c)(B_c M)` wherever the map M after layer l is
  linear; TMS folds every layer into one `(n_in, C d_L)` matrix, so its tangents are `x G` and
  need no forward pass), with no `(batch, C, d_out)` tensor per layer and no per-output loop;
  on the CPU they skip all-zero samples. Any other target gets all d_L output gradients from one
  batched backward (`is_grads_batched`).
* Activation attributions use `|inner_c B_c|^2 = inner_c (B_c B_c^T) inner_c^T`; ablation runs the
  C ablated models as a few batched forwards of `h = a W_sum - (a A_c) B_c`.
* The top-k pass is dense (`dense_masked_fns`: batch innermost, `P_c = A_c B_c` where cheaper) or
  computes only the active (sample, component) pairs (`ActivePairs`, whose shape is read on the
  host, so `masked_forward: auto` uses it on the CPU only, and only for large dense passes).
* Narrow targets (TMS) run their layers with the batch innermost (`batch_last`); the faithfulness
  and Schatten terms and the factors' gradients come from one node per parameter
  (`apd.methods.apd.losses.param_terms`); `compile: auto` compiles the attributions where that
  pays (`use_compile`); on the CPU glibc keeps freed blocks for reuse (`reuse_freed_memory`).
  Where the time goes, before and after: bench/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from apd.methods.apd.components import Components
from apd.targets.base import Layer, LayerFn, Target, run_with_cache
from apd.targets.resid_mlp import ResidMLP
from apd.targets.tms import TMS

CHUNK_ELEMENTS = 2**25
"""Largest intermediate (elements) of batched backwards, ablation forwards and, off the CPU, batch chunks."""
CPU_CHUNK_ELEMENTS = 2**20
"""Largest per-chunk intermediate on the CPU (4 MB in fp32: elementwise passes over it stay in cache)."""


@dataclass
class ModelPass:
    """One forward pass: output `(batch, I, d_L)` and each decomposed layer's (input, output)."""

    x: Tensor
    out: Tensor | None
    """None for a pass never run: TMS's closed form needs only x and the weights."""
    cache: dict[str, tuple[Tensor, Tensor]]
    inners: dict[str, Tensor] | None = None
    """`a_l A` of every layer `(batch, I, C, m)`, where an APD pass computed them anyway."""

    def detached(self) -> ModelPass:
        cache = {k: (a.detach(), h.detach()) for k, (a, h) in self.cache.items()}
        return ModelPass(self.x, None if self.out is None else self.out.detach(), cache, self.inners)

    def rows(self, idx: Tensor) -> ModelPass:
        """The samples `idx` of this pass."""

        def pick(t: Tensor) -> Tensor:
            return t.index_select(0, idx)

        cache = {k: (pick(a), pick(h)) for k, (a, h) in self.cache.items()}
        inners = None if self.inners is None else {k: pick(v) for k, v in self.inners.items()}
        return ModelPass(pick(self.x), None if self.out is None else pick(self.out), cache, inners)

    def inner(self, components: Components, layer: Layer, sl: slice) -> Tensor:
        """`a_l A` for the samples `sl`: recorded, or computed from the cached layer input."""
        if self.inners is not None:
            return self.inners[layer.name][sl]
        return components.inner_acts(layer, self.cache[layer.name][0][sl])


def target_pass(target: Target, x: Tensor, *, graph: bool = False) -> ModelPass:
    """The target's forward with cache; `graph` keeps the autograd graph from layer outputs to the output."""
    if graph:
        with torch.enable_grad():
            out, cache = run_with_cache(target, x, grad_outputs=True)
    else:
        with torch.no_grad():
            last = batch_last(target)
            fns = {layer.name: _linear_fn(target.layer_weight(layer), batch_last=last) for layer in target.layers}
            out, cache = run_with_cache(target, x, fns)
    return ModelPass(x, out, cache)


@functools.cache
def reuse_freed_memory() -> None:
    """Have glibc keep freed blocks below 32 MB for reuse instead of handing them back to the OS (once per process).

    The step allocates the same tensors every iteration; glibc's defaults map large blocks afresh and
    trim the heap, so every such allocation pays its page faults again (10-20% of a CPU step here).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's largest allowed value
    libc.mallopt(m_trim_threshold, 2**31 - 1)


BATCH_LAST_MAX_WIDTH = 64
"""Targets whose decomposed layers are all at most this wide run the fast step with the batch innermost."""


def batch_last(target: Target) -> bool:
    """Whether the fast step computes `target`'s layers with the batch innermost: all of them are narrow.

    A narrow layer's per-instance matmul `(batch, d_in) @ (d_in, d_out)` runs at a tenth of the
    speed of `(d_out, d_in) @ (d_in, batch)` on the CPU (both read x where it lies), and elementwise
    work over `(batch, I, 5)` rows does not vectorise. The layers then return `(batch, I, d)` views
    of `(I, d, batch)` storage, and the target's own elementwise ops keep that layout.
    """
    return max(max(shape) for shape in target.param_shapes().values()) <= BATCH_LAST_MAX_WIDTH


def needs_graph(kind: str, target: Target) -> bool:
    """Whether `fast_attributions` needs the target pass's graph (gradient attributions without a closed form)."""
    return kind == "gradient" and type(target) not in GRADIENT_RULES


# ---------------------------------------------------------------------------------------------
# Output tangents s (batch, I, C, d_L) for gradient attributions


Factors = Mapping[str, tuple[Tensor, Tensor]]
"""`(A, B)` by parameter name to use instead of the components' own (`param_terms`' aliases)."""


def _factors(components: Components, layer: Layer, factors: Factors | None) -> tuple[Tensor, Tensor]:
    """`components.factors(layer)`, from `factors` where given."""
    if factors is None:
        return components.factors(layer)
    a, b = factors[layer.param]
    return (b.transpose(-1, -2), a.transpose(-1, -2)) if layer.transposed else (a, b)


Weights = Mapping[str, Tensor]
"""Weight `(I, d_in, d_out)` of the model each layer (by name) computes, at which gradients are taken."""


def batch_chunks(batch: int, per_sample: int, device: torch.device) -> list[slice]:
    """Batch slices whose intermediates of `per_sample` elements per sample stay small.

    On the CPU a chunk's tensors stay in cache and reuse the allocator's blocks; fresh
    100 MB buffers cost more in page faults than the arithmetic that fills them.
    """
    budget = CPU_CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS
    n = max(1, budget // max(per_sample, 1))
    return [slice(i, min(i + n, batch)) for i in range(0, batch, n)]


def _squared_norm(s: Tensor) -> Tensor:
    """`sum_o s_o^2` over the last axis."""
    return (s * s).sum(-1)


def _tms_attr(target: Target, weights: Weights, run: ModelPass, components: Components) -> Tensor:
    """TMS `out = ReLU(x M + b)`: `s = ReLU'(x M + b) * (x G)`, `G_c = sum_l M_<l A_c B_c M_>l`.

    `M_<l` maps x to layer l's input and `M_>l` its output to the pre-activation (products of the
    weights; identity at the ends, `M` all of them), so all layers fold into one `(n_in, C d_L)`
    matrix per instance and each chunk costs one small batched matmul; no pass through the layers
    is needed (`run.x` alone). Chunks are laid out `(I, C d_L, batch)`: the ReLU' mask and the sum
    over outputs then run along contiguous memory instead of 5-wide rows.
    """
    assert isinstance(target, TMS)
    layers = target.layers
    readouts: list[Tensor | None] = []  # M_>l, last layer first
    readout: Tensor | None = None
    for layer in reversed(layers):
        readouts.append(readout)
        w = weights[layer.name]
        readout = w if readout is None else w @ readout
    fold: Tensor | None = None
    prefix: Tensor | None = None  # M_<l
    for layer, ro in zip(layers, reversed(readouts), strict=True):
        a, b = components.factors(layer)
        if prefix is not None:
            a = torch.einsum("i x d, i c d m -> i c x m", prefix, a)
        if ro is not None:
            b = torch.einsum("i c m e, i e o -> i c m o", b, ro)
        fold = a @ b if fold is None else fold + a @ b  # (I, C, n_in, d_L)
        w = weights[layer.name]
        prefix = w if prefix is None else prefix @ w
    assert fold is not None and prefix is not None
    x = run.x
    batch, n_inst, n_in = x.shape
    C, n_out = components.C, fold.shape[-1]
    fold_t = fold.transpose(-1, -2).reshape(n_inst, C * n_out, n_in)
    bias = target.b_final.detach().unsqueeze(-1)  # (I, d_L, 1)
    parts = []
    for sl in batch_chunks(batch, n_inst * C * n_out, x.device):
        x_t = x[sl].permute(1, 2, 0)  # (I, n_in, n), read from x in place
        s = torch.bmm(fold_t, x_t)  # (I, C d_L, n)
        # ReLU' where the output is positive, as autograd takes it from the output
        relu_grad = (torch.baddbmm(bias, prefix.transpose(-1, -2), x_t) > 0).to(s.dtype)  # (I, d_L, n)
        # relu_grad is 0 or 1, so (s relu_grad)^2 = s^2 relu_grad; in place unless it must carry gradients
        sq = s.view(n_inst, C, n_out, -1)
        sq = sq.square() if sq.requires_grad else sq.square_()
        sq = sq * relu_grad.unsqueeze(1) if sq.requires_grad else sq.mul_(relu_grad.unsqueeze(1))
        parts.append(sq.sum(2).permute(2, 0, 1))  # (n, I, C)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _resid_attr(target: Target, weights: Weights, run: ModelPass, components: Components) -> Tensor:
    """Residual MLP: forward-mode tangents with the residual stream kept as what reads it.

    The tangent of layer k's output is only ever read by the later `W_in` and by `W_U`, so it is
    carried as its projections onto `R_k = [W_in_{k+1} .. W_U]` (widths d_mlp and d_L), never in
    d_embed: `dh_out R = dhid (W_out R) + hidden (A_out B_out R)`. With a large batch,
    `r_k A_in B_in` is folded the same way into `x (W_E P_in) + sum_j hidden_j (W_out_j P_in)`.
    Chunks are laid out `(I, batch, C, width)` so every product is one batched matmul that
    accumulates in place.
    """
    assert isinstance(target, ResidMLP)
    n_layers, d_mlp, x = target.n_layers, target.d_mlp, run.x
    n_inst, C, n_out = x.shape[1], components.C, target.n_outputs
    w_e: Tensor = target.W_E  # type: ignore[assignment]
    # batch-independent folds, per layer k; `(I, C, p, n) -> (I, p, C n)` so chunks need one matmul
    in_folds: list[tuple[Tensor, list[Tensor]] | None] = []
    wr, out_folds = [], []
    for k in range(n_layers):
        lout = target.layer_by_name(f"mlp_out_{k}")
        folds = None if run.inners else _resid_in_folds(target, weights, components, k, x.shape[0])
        in_folds.append(None if folds is None else (_flat(folds[0]), [_flat(f) for f in folds[1]]))
        readout = torch.cat([weights[f"mlp_in_{j}"] for j in range(k + 1, n_layers)] + [w_e.transpose(-1, -2)], dim=-1)
        wr.append(weights[lout.name] @ readout)  # (I, d_mlp, D_k)
        a_out, b_out = components.factors(lout)
        out_folds.append(_flat(a_out @ (b_out.flatten(1, 2) @ readout).unflatten(1, b_out.shape[1:3])))
    parts = []
    for sl in batch_chunks(x.shape[0], n_inst * C * (n_layers * d_mlp + n_out), x.device):
        n = sl.stop - sl.start
        pending: list[Tensor | None] = [None] * n_layers  # tangent contributions to h_in_k, (I, n, C, d_mlp)
        s: Tensor | None = None
        for k in range(n_layers):
            lin, lout = target.layer_by_name(f"mlp_in_{k}"), target.layer_by_name(f"mlp_out_{k}")
            folded = in_folds[k]
            if folded is None:
                inner_in = run.inner(components, lin, sl)
                dh_in = torch.einsum("b i c m, i c m h -> i b c h", inner_in, components.factors(lin)[1])
            else:
                f_x, f_hidden = folded
                dh_in = torch.bmm(x[sl].transpose(0, 1), f_x)
                for j, f in enumerate(f_hidden):
                    dh_in = dh_in.baddbmm_(run.cache[f"mlp_out_{j}"][0][sl].transpose(0, 1), f)
                dh_in = dh_in.view(n_inst, n, C, d_mlp)
            earlier = pending[k]
            if earlier is not None:
                dh_in = dh_in + earlier
            hidden = run.cache[lout.name][0][sl].transpose(0, 1)  # (I, n, d_mlp)
            dhid = dh_in * (hidden > 0).to(dh_in.dtype).unsqueeze(2)  # ReLU' from its output, as autograd
            proj = torch.bmm(hidden, out_folds[k])  # (I, n, C D)
            width = proj.shape[-1] // C
            proj = proj.view(n_inst, n * C, width).baddbmm_(dhid.reshape(n_inst, n * C, d_mlp), wr[k])
            proj = proj.view(n_inst, n, C, width)
            for j, part in zip(range(k + 1, n_layers), proj.split(d_mlp, dim=-1), strict=False):
                pending[j] = part if pending[j] is None else pending[j] + part
            out_part = proj[..., (n_layers - k - 1) * d_mlp :]
            s = out_part if s is None else s + out_part
        assert s is not None
        parts.append(_squared_norm(s).transpose(0, 1))
    return torch.cat(parts)


def _flat(fold: Tensor) -> Tensor:
    """`(I, C, p, n) -> (I, p, C n)`."""
    return fold.permute(0, 2, 1, 3).flatten(2)


def _left_matmul(w: Tensor, a: Tensor) -> Tensor:
    """`w_i @ a_{i,c}` for every component: `(I, p, d) x (I, C, d, m) -> (I, C, p, m)` without copying `a`."""
    return torch.stack([torch.matmul(w[i], a[i]) for i in range(w.shape[0])])


def _resid_in_folds(
    target: ResidMLP, weights: Weights, components: Components, k: int, batch: int
) -> tuple[Tensor, list[Tensor]] | None:
    """`W_E P_in_k` and `W_out_j P_in_k` (j < k), so `r_k P_in_k = x (W_E P) + sum_j hidden_j (W_out_j P)`;
    None when computing `r_k A_in_k` directly costs fewer MACs."""
    narrow = target.n_features + k * target.d_mlp  # width of x and the earlier hidden layers
    if narrow * (target.d_embed + batch) >= batch * target.d_embed:
        return None
    a, b = components.factors(target.layer_by_name(f"mlp_in_{k}"))
    f_x = _left_matmul(target.W_E, a) @ b  # type: ignore[arg-type]
    f_hidden = [_left_matmul(weights[f"mlp_out_{j}"], a) @ b for j in range(k)]
    return f_x, f_hidden


AttrRule = Callable[[Target, Weights, ModelPass, Components], Tensor]
GRADIENT_RULES: dict[type[Target], AttrRule] = {TMS: _tms_attr, ResidMLP: _resid_attr}
"""Closed-form gradient attributions by target class (exact class: a subclass may change `forward`)."""
INNER_RULES: frozenset[type[Target]] = frozenset({ResidMLP})
"""Closed forms that read the APD pass's `a_l A` (`ModelPass.inners`); the others take a pass at the summed weights."""
PASS_FREE_RULES: frozenset[type[Target]] = frozenset({TMS})
"""Closed forms that need only the input and the weights, no forward pass."""


def _autograd_attr(target: Target, run: ModelPass, components: Components) -> Tensor:
    """Any target: all output gradients `g_{o,l}` in batched backwards, then `sum_o (sum_l u_l . g_l)^2`.

    Outputs go in chunks that bound the gradients' memory; `run` must hold the graph from the
    layer outputs to the output (`target_pass(graph=True)`). `u_l = (a_l A) B` first, then
    `u_l . g_l`: (m + d_L) C d_l MACs per sample, against m d_L C d_l for contracting `g_l B^T`
    with `a_l A` first (which pays only when g does not depend on the sample: the closed forms).
    """
    layers = target.layers
    hs = [run.cache[layer.name][1] for layer in layers]
    inputs = [run.cache[layer.name][0].detach() for layer in layers]
    out = run.out
    assert out is not None
    batch, n_inst, n_out = out.shape
    width = batch * n_inst * sum(h.shape[-1] for h in hs)
    chunk = max(1, min(n_out, CHUNK_ELEMENTS // max(width, 1)))
    eye = torch.eye(n_out, device=out.device, dtype=out.dtype)
    attr: Tensor | None = None
    for start in range(0, n_out, chunk):
        rows = eye[start : start + chunk]
        cotangents = rows[:, None, None, :].expand(rows.shape[0], batch, n_inst, n_out)
        with torch.enable_grad():
            grads = torch.autograd.grad(
                out, hs, cotangents, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        per_sample = n_inst * components.C * (max(h.shape[-1] for h in hs) + rows.shape[0])
        parts = []
        for sl in batch_chunks(batch, per_sample, out.device):
            s = torch.zeros(sl.stop - sl.start, n_inst, components.C, rows.shape[0], device=out.device, dtype=out.dtype)
            for layer, a, g in zip(layers, inputs, grads, strict=True):
                if g is not None:
                    u = components.component_acts(layer, a[sl])
                    s = s + torch.einsum("b i c e, o b i e -> b i c o", u, g[:, sl])
            parts.append(_squared_norm(s))
        part = torch.cat(parts)
        attr = part if attr is None else attr + part
    assert attr is not None
    return attr


ZERO_INPUT_SKIP = 0.75
"""On the CPU, closed forms run on the nonzero samples alone when at most this share of the batch is nonzero."""


def gradient_attr(target: Target, weights: Weights, run: ModelPass, components: Components) -> Tensor:
    """`sum_o (sum_l g_{o,l} . u_{c,l})^2 (batch, I, C)` at the model `weights` whose pass is `run`."""
    rule = GRADIENT_RULES.get(type(target))
    if rule is None:
        return _autograd_attr(target, run, components)
    run = run.detached()
    batch = run.x.shape[0]
    # on the CPU (finding them reads their number on the host), with one instance (with several, a
    # sample is rarely zero in all): TMS and residual MLPs have no biases before the output, so an
    # all-zero input has zero tangents
    if run.x.device.type == "cpu" and run.x.shape[1] == 1:
        idx = run.x.reshape(batch, -1).any(-1).nonzero().squeeze(1)
        if idx.numel() <= ZERO_INPUT_SKIP * batch:
            if idx.numel() == 0:
                return run.x.new_zeros(batch, run.x.shape[1], components.C)
            attr = rule(target, weights, run.rows(idx), components)
            return attr.new_zeros(batch, *attr.shape[1:]).index_copy(0, idx, attr)
    return rule(target, weights, run, components)


# ---------------------------------------------------------------------------------------------
# The full APD model (for gradient_apd, activation and ablation attributions)


def apd_layer_fns(
    components: Components, layers: tuple[Layer, ...], *, detach: bool, record: dict[str, Tensor] | None = None
) -> dict[str, LayerFn]:
    """The full APD model's layers, computed as `Components.layer_fn` does.

    `detach` cuts the graph to A, B; `record` collects each layer's `a_l A`.
    """
    if not detach and record is None:
        return components.layer_fns(layers)

    def make(layer: Layer) -> LayerFn:
        a, b = components.factors(layer)
        if detach:
            a, b = a.detach(), b.detach()

        def fn(x: Tensor) -> Tensor:
            inner = torch.einsum("b i d, i c d m -> b i c m", x, a)
            if record is not None:
                record[layer.name] = inner
            return torch.einsum("b i c m, i c m e -> b i e", inner, b)

        return fn

    return {layer.name: make(layer) for layer in layers}


def apd_weights(components: Components, layers: tuple[Layer, ...]) -> dict[str, Tensor]:
    """Detached `sum_c P_c` of every layer (transposed for tied layers)."""
    totals = {layer.param: components.total_weight(layer.param).detach() for layer in layers}
    return {
        layer.name: totals[layer.param].transpose(-1, -2) if layer.transposed else totals[layer.param]
        for layer in layers
    }


# ---------------------------------------------------------------------------------------------
# Attributions


def _gradient(target: Target, components: Components, x: Tensor, run: ModelPass | None) -> Tensor:
    if run is None:
        run = target_pass(target, x, graph=needs_graph("gradient", target))
    weights = {layer.name: target.layer_weight(layer).detach() for layer in target.layers}
    return gradient_attr(target, weights, run, components)


def _gradient_apd(target: Target, components: Components, x: Tensor) -> Tensor:
    layers = target.layers
    if type(target) not in GRADIENT_RULES:
        with torch.enable_grad():
            fns = apd_layer_fns(components, layers, detach=True)
            out, cache = run_with_cache(target, x, fns, grad_outputs=True)
        return gradient_attr(target, {}, ModelPass(x, out, cache), components)
    weights = apd_weights(components, layers)
    if type(target) in PASS_FREE_RULES:
        return gradient_attr(target, weights, ModelPass(x, None, {}), components)
    # the pass's `a_l A` serve the closed form too, unless the attributions must carry gradients
    record = type(target) in INNER_RULES and not torch.is_grad_enabled()
    inners: dict[str, Tensor] | None = {} if record else None
    with torch.no_grad():
        fns = (
            apd_layer_fns(components, layers, detach=True, record=inners)
            if record
            else {name: _linear_fn(w, batch_last=batch_last(target)) for name, w in weights.items()}
        )
        out, cache = run_with_cache(target, x, fns)
    return gradient_attr(target, weights, ModelPass(x, out, cache, inners), components)


def _activation(target: Target, components: Components, x: Tensor) -> Tensor:
    """`sum_l |inner_l B|^2` on the full APD pass, via the Gram matrix `B B^T` when m < d_out."""
    inners: dict[str, Tensor] = {}
    target(x, apd_layer_fns(components, target.layers, detach=False, record=inners))
    total: Tensor | None = None
    for layer in target.layers:
        inner = inners[layer.name]
        _, b = components.factors(layer)
        if b.shape[-2] < b.shape[-1]:
            gram = b @ b.transpose(-1, -2)  # (I, C, m, m)
            sq = torch.einsum("b i c m, i c m n, b i c n -> b i c", inner, gram, inner)
        else:
            sq = torch.einsum("b i c m, i c m e -> b i c e", inner, b).pow(2).sum(-1)
        total = sq if total is None else total + sq
    assert total is not None
    return total


@torch.no_grad()
def _ablation(target: Target, components: Components, x: Tensor) -> Tensor:
    """`mean_o (f(full) - f(full without c))^2`, the C ablated models in batched forwards."""
    layers = target.layers
    weights = apd_weights(components, layers)
    factors = {layer.name: tuple(t.detach() for t in components.factors(layer)) for layer in layers}
    full = target(x, {name: _linear_fn(w) for name, w in weights.items()})
    batch, n_inst = x.shape[:2]
    width = batch * n_inst * max(max(w.shape[-2:]) for w in weights.values())
    chunk = max(1, min(components.C, CHUNK_ELEMENTS // max(width, 1)))
    attr = []
    for start in range(0, components.C, chunk):
        cs = slice(start, min(start + chunk, components.C))
        n = cs.stop - cs.start

        def make(name: str, cs: slice = cs, n: int = n) -> LayerFn:
            w, (a_c, b_c) = weights[name], factors[name]

            def fn(a: Tensor) -> Tensor:
                a = a.reshape(n, batch, *a.shape[1:])
                inner = torch.einsum("k b i d, i k d m -> k b i m", a, a_c[:, cs])
                h = torch.einsum("k b i d, i d e -> k b i e", a, w)
                h = h - torch.einsum("k b i m, i k m e -> k b i e", inner, b_c[:, cs])
                return h.reshape(n * batch, *h.shape[2:])

            return fn

        ablated = target(x.repeat(n, 1, 1), {name: make(name) for name in weights})
        ablated = ablated.reshape(n, batch, n_inst, -1)
        attr.append((full - ablated).pow(2).mean(-1).permute(1, 2, 0))
    return torch.cat(attr, dim=-1)


def _linear_fn(w: Tensor, *, batch_last: bool = False) -> LayerFn:
    """`a @ w` per instance; `batch_last`: computed and returned with the batch innermost (see `batch_last`)."""
    if batch_last:
        return lambda a: torch.bmm(w.transpose(-1, -2), a.permute(1, 2, 0)).permute(2, 0, 1)
    return lambda a: torch.einsum("b i d, i d e -> b i e", a, w)


def fast_attributions(
    kind: str, target: Target, components: Components, x: Tensor, *, run: ModelPass | None = None
) -> Tensor:
    """Same values as `apd.methods.apd.attributions.attributions(kind, ...)`, for all outputs at once.

    Differentiable w.r.t. the components where the reference is (Lp APD) when called with grad
    enabled; call it under `torch.no_grad()` when only the top-k mask uses it. `run` reuses the
    step's target pass (`target_pass(graph=needs_graph(kind, target))`) for gradient attributions.
    """
    if kind == "gradient":
        return _gradient(target, components, x, run)
    if kind == "gradient_apd":
        return _gradient_apd(target, components, x)
    if kind == "activation":
        return _activation(target, components, x)
    if kind == "ablation":
        return _ablation(target, components, x)
    raise ValueError(f"unknown attribution type {kind!r}")


@functools.cache
def compiled_attributions() -> Callable[..., Tensor]:
    """`fast_attributions` through `torch.compile` (`compile`), built on first use.

    It fuses the elementwise work after each matmul; each new target, batch shape or attribution
    type compiles again (10-20 s on a CPU).
    """
    return torch.compile(fast_attributions, dynamic=False)


AUTO_COMPILE_STEPS = 2000
"""`compile: auto` never compiles shorter runs: TMS 40-10 pays its ~16 s back after ~600 steps."""
AUTO_COMPILE_ELEMENTS = 2**23
"""`compile: auto` compiles the TMS closed form when its tangent tensor `(batch, I, C, d_L)` has this many
elements: eager's square, mask and sum then each stream it through memory, the compiled kernel once."""


def use_compile(setting: bool | str, *, steps: int, kind: str, target: Target, C: int, x: Tensor) -> bool:
    """Whether the step attributes through `compiled_attributions` (the `compile` setting; `auto`: see above).

    Measured on the CPU (bench/RESULTS.md): 1.25x the steps/s on TMS 40-10 (tangent 12M elements), no
    change on TMS 5-2 (0.6M), 0.84x on resid-mlp-1 (its attributions are large matmuls already).
    """
    if setting != "auto":
        return bool(setting)
    if x.device.type != "cpu" or steps < AUTO_COMPILE_STEPS:
        return False
    if kind not in ("gradient", "gradient_apd") or type(target) not in PASS_FREE_RULES:
        return False
    return x.shape[0] * x.shape[1] * C * target.n_outputs >= AUTO_COMPILE_ELEMENTS


# ---------------------------------------------------------------------------------------------
# Sparse masked forward


GATHER_COST = 16
"""Cost of gathering one block's `A_c`, `B_c` (and scattering their gradients), in padded rows."""


@dataclass
class ActivePairs:
    """The mask's active (sample, component) pairs in blocks of `size` pairs that share a component.

    Either one block per (instance, component) group, padded to the largest group, or, when the
    groups are very uneven, blocks of `max(8, pairs / groups)` pairs with their factors gathered
    per block (at most `pairs + groups * size` padded rows); whichever costs less.
    `rows (blocks, size)`: row `b I + i` of `a.reshape(batch I, d)`; `group (blocks,)`: `i C + c`,
    or None for one block per group; `valid (blocks, size, 1)` zeroes the padding.
    """

    rows: Tensor
    group: Tensor | None
    valid: Tensor
    batch: int
    n_instances: int
    C: int

    @classmethod
    def from_mask(cls, mask: Tensor) -> ActivePairs:
        batch, n_inst, C = mask.shape
        groups = n_inst * C
        nz = mask.reshape(batch, groups).nonzero()  # ordered by sample, then group
        n_pairs = nz.shape[0]
        order = torch.argsort(nz[:, 1], stable=True)
        sample, group = nz[order, 0], nz[order, 1]
        counts = torch.bincount(group, minlength=groups)
        pos = torch.arange(n_pairs, device=mask.device) - (counts.cumsum(0) - counts)[group]
        size = max(8, -(-n_pairs // groups))
        n_blocks = -(-counts // size)
        # the sparse path's one host read: the padded shapes
        n_max, total = (int(v) for v in torch.stack([counts.max(), n_blocks.sum()]).tolist())
        if groups * n_max <= total * (size + GATHER_COST):
            size, block, block_group = max(n_max, 1), group, None
            total = groups
        else:
            block = (n_blocks.cumsum(0) - n_blocks)[group] + pos // size
            block_group = torch.repeat_interleave(torch.arange(groups, device=mask.device), n_blocks, output_size=total)
            pos = pos % size
        # padding reads and writes sample 0 of its block's own instance: a NaN there (a diverged
        # member of a pack, apd.pack) stays in that instance
        owner = torch.arange(groups, device=mask.device) if block_group is None else block_group
        rows = (owner // C)[:, None].repeat(1, size)
        rows[block, pos] = sample * n_inst + group // C
        valid = torch.zeros(total, size, 1, device=mask.device)
        valid[block, pos] = 1.0
        return cls(rows, block_group, valid, batch, n_inst, C)

    @property
    def cost(self) -> int:
        """Padded rows, plus the gathers in row equivalents."""
        return self.rows.numel() + (0 if self.group is None else GATHER_COST * self.rows.shape[0])

    def layer_fn(self, components: Components, layer: Layer, factors: Factors | None = None) -> LayerFn:
        """`sum_{c active} (a A_c) B_c`, computed for the active pairs only."""
        a_f, b_f = _factors(components, layer, factors)
        groups = self.n_instances * self.C

        def fn(a: Tensor) -> Tensor:
            d_in, d_out = a.shape[-1], b_f.shape[-1]
            a_blocks, b_blocks = a_f.reshape(groups, d_in, -1), b_f.reshape(groups, -1, d_out)
            if self.group is not None:
                a_blocks, b_blocks = a_blocks[self.group], b_blocks[self.group]
            picked = a.reshape(self.batch * self.n_instances, d_in)[self.rows]  # (blocks, size, d_in)
            inner = torch.bmm(picked, a_blocks) * self.valid.to(a.dtype)
            y = torch.bmm(inner, b_blocks)  # (blocks, size, d_out)
            out = y.new_zeros(self.batch * self.n_instances, d_out).index_add(
                0, self.rows.flatten(), y.flatten(0, 1)
            )  # y's dtype: bf16 under autocast
            return out.view(self.batch, self.n_instances, d_out)

        return fn


def dense_masked_fns(
    components: Components, layers: tuple[Layer, ...], mask: Tensor, factors: Factors | None = None
) -> dict[str, LayerFn]:
    """`sum_c mask_c (a A_c) B_c` for every (sample, component), as `Components.layer_fns(layers, mask)`.

    Laid out `(I, C ., batch)`: the mask multiplies contiguous batch rows and each layer is two
    batched matmuls with the batch as their long axis. Where `d_in d_out <= m (d_in + d_out)` (TMS)
    each component is applied as its product `P_c = A_c B_c` instead, one matmul with the mask
    on its narrower side: `sum_c s_c (h P_c)` or `[s_c h]_c @ [P_c]_c`.
    """
    dtype = components.A[layers[0].param].dtype
    mask_t = mask.permute(1, 2, 0).contiguous().to(dtype).unsqueeze(2)  # (I, C, 1, batch), contiguous first

    products: dict[str, Tensor] = {}  # P_c = A_c B_c per parameter, shared by its tied layers

    def product(layer: Layer) -> Tensor:
        if layer.param not in products:
            a, b = factors[layer.param] if factors is not None else components.factors(Layer(layer.param, layer.param))
            products[layer.param] = a @ b
        return products[layer.param].transpose(-1, -2) if layer.transposed else products[layer.param]

    def make(layer: Layer) -> LayerFn:
        a, b = _factors(components, layer, factors)
        n_inst, C, d_in, m = a.shape
        d_out = b.shape[-1]
        if _by_product(components, layer) and d_out <= d_in:
            p_rows = product(layer).transpose(-1, -2).reshape(n_inst, C * d_out, d_in)

            def mask_after(h: Tensor) -> Tensor:
                y = torch.bmm(p_rows, _rows(h)).view(n_inst, C, d_out, -1)
                return (y * mask_t.to(y.dtype)).sum(1).permute(2, 0, 1)  # a no-op cast unless autocast

            return mask_after
        if _by_product(components, layer):
            p_cols = product(layer).permute(0, 3, 1, 2).reshape(n_inst, d_out, C * d_in)

            def mask_before(h: Tensor) -> Tensor:
                masked = (mask_t.to(h.dtype) * _rows(h).unsqueeze(1)).view(n_inst, C * d_in, -1)
                return torch.bmm(p_cols, masked).permute(2, 0, 1)

            return mask_before
        a_rows = a.transpose(-1, -2).reshape(n_inst, C * m, d_in)
        b_cols = b.reshape(n_inst, C * m, d_out).transpose(1, 2)

        def by_factors(h: Tensor) -> Tensor:
            inner = torch.bmm(a_rows, _rows(h)).view(n_inst, C, m, -1)
            inner = inner * mask_t.to(inner.dtype)
            return torch.bmm(b_cols, inner.view(n_inst, C * m, -1)).permute(2, 0, 1)

        return by_factors

    return {layer.name: make(layer) for layer in layers}


def _rows(h: Tensor) -> Tensor:
    """`h (batch, I, d)` as `(I, d, batch)`, contiguous: a copy only for the step's input x.

    The backward's `grad @ h^T` reads it again, 4x faster contiguous than along x's strided rows.
    """
    return h.permute(1, 2, 0).contiguous()


def _by_product(components: Components, layer: Layer) -> bool:
    """Whether the dense pass applies `P_c = A_c B_c` (fewer MACs than `A_c` then `B_c`)."""
    d_in, d_out = components.A[layer.param].shape[-2], components.B[layer.param].shape[-1]
    return d_in * d_out <= components.m * (d_in + d_out)


def _dense_width(components: Components, layer: Layer) -> int:
    """Rows per (instance, sample) of the dense pass's widest masked intermediate in this layer."""
    d_in, d_out = components.A[layer.param].shape[-2], components.B[layer.param].shape[-1]
    return components.C * (min(d_in, d_out) if _by_product(components, layer) else components.m)


SMALL_DENSE = 2**20
"""Elements of a dense pass's masked intermediate below which `auto` stays dense: cheaper than building blocks."""


def masked_layer_fns(
    components: Components,
    layers: tuple[Layer, ...],
    mask: Tensor,
    *,
    mode: str = "auto",
    factors: Factors | None = None,
) -> dict[str, LayerFn]:
    """The top-k APD model's layers: dense (`dense_masked_fns`) or over the active pairs only.

    `auto` goes sparse on the CPU when the dense pass's intermediates are large (`SMALL_DENSE`) and
    the sparse pass's padded rows (`ActivePairs.cost`) are at most a quarter of its (sample,
    component) pairs; on other devices it stays dense, since building the blocks reads their shape
    on the host.
    """
    if mode == "dense" or (mode == "auto" and mask.device.type != "cpu"):
        return dense_masked_fns(components, layers, mask, factors)
    dense_elements = mask.shape[0] * mask.shape[1] * max(_dense_width(components, layer) for layer in layers)
    if mode == "auto" and dense_elements < SMALL_DENSE:
        return dense_masked_fns(components, layers, mask, factors)
    pairs = ActivePairs.from_mask(mask)
    if mode == "auto" and 4 * pairs.cost > mask.numel():
        return dense_masked_fns(components, layers, mask, factors)
    return {layer.name: pairs.layer_fn(components, layer, factors) for layer in layers}
