"""The user-file family: a network read from your own file, judged by its identity pattern and, when
the file ships them, its true mechanisms.

File format: a `.pt` file holding a dict (`torch.save`; values are tensors, Python numbers and
lists, or a dict for `ground_truth`; read with `weights_only=True`), or an `.npz` file
(`numpy.savez`). The optional entry `kind` names the network's format: absent (or `"file"`) for
a linear stack, `"tms"` for a toy model of superposition (then the TMS family judges it: MMCS,
ML2R, splits, its known mechanisms; format in `apd.targets.tms`).

Linear stack entries:

* `W0, W1, ..., W{L-1}` (required): layer weights in the toolkit's `y = x @ W` convention, shape
  `(d_in, d_out)`, or `(instances, d_in, d_out)` for several models. `W{l}`'s `d_out` must equal
  `W{l+1}`'s `d_in`. (A `torch.nn.Linear` weight is `(d_out, d_in)`: store `linear.weight.T`.)
* `b0, ..., b{L-1}` (optional, any subset): biases `(d_out,)` or `(instances, d_out)`. They are
  kept frozen and are not decomposed.
* `feature_probability` (optional scalar, default 0.05) and `value_range` (optional pair, default
  `(0, 1)`): the sparse-feature input distribution (docs/method.md) used while decomposing.
* `ground_truth` (optional): the true mechanisms, one per feature (or any number K >= 1): for some
  or all layers `W{l}`, an array `(K, d_in, d_out)` (or `(instances, K, d_in, d_out)`) whose k-th
  slice is mechanism k's part of `W{l}`. In a `.pt` file a dict `{"W0": ..., "W1": ...}`; in an
  `.npz` (no nesting) entries named `ground_truth.W0`, `ground_truth.W1`, ... Every given layer
  needs the same K, and every mechanism nonzero weights in some layer. With it, the verdict also
  matches component weights to the mechanisms (`apd.metrics.mechanisms`: cosine, norm ratio,
  split); the layers left out are not compared.

The network is `h_0 = x`, `h_{l+1} = ReLU(h_l @ W_l + b_l)`, with no ReLU after the last layer.
Every `W_l` is decomposed as layer `layer_{l}`. Example, used as `target: {path: net.pt}`:

    torch.save({"W0": w0, "b0": b0, "W1": w1, "feature_probability": 0.02}, "net.pt")

A TMS (tied weights, final ReLU) saved as `W0, W1 = W0.T` would load as a different network, so
such a file is refused: save it with `kind: "tms"`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from apd.config import Probability
from apd.errors import ConfigError
from apd.targets.base import Layer, LayerFn, Target
from apd.targets.family import (
    IDENTITY_CHECK,
    MECHANISM_CHECKS,
    MECHANISM_COLUMNS,
    MECHANISM_KEYS,
    Check,
    Column,
    EvalContext,
    Family,
    TargetSpec,
    ValueRange,
    mechanism_metrics,
)

DEFAULT_FEATURE_PROBABILITY = 0.05
DEFAULT_VALUE_RANGE = (0.0, 1.0)
DATA_ENTRIES = ("kind", "feature_probability", "value_range")
"""Entries every file format may hold besides its weights."""


class LinearStack(Target):
    """Linear layers with ReLU between them; weights `(instances, d_in, d_out)`, frozen biases."""

    kind = "file"
    act_recon_relu = False
    """Layer outputs exclude the bias, so the loss compares pre-activations, not ReLU(.)."""

    def __init__(
        self, weights: list[Tensor], biases: list[Tensor | None], ground_truth: Mapping[str, Tensor] | None = None
    ) -> None:
        super().__init__()
        self.W = nn.ParameterList([nn.Parameter(w.detach().clone().float()) for w in weights])
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            bias = torch.zeros(w.shape[0], w.shape[-1]) if b is None else b.detach().clone().float()
            self.register_buffer(f"b{i}", bias)
        self.n_instances, self.n_inputs, self.n_outputs = weights[0].shape[0], weights[0].shape[1], weights[-1].shape[2]
        self.layers = tuple(Layer(f"layer_{i}", f"layer_{i}") for i in range(len(weights)))
        self.act_recon_layers = tuple(layer.name for layer in self.layers[:-1])
        self.gt_params: tuple[str, ...] = ()
        """Parameters with true mechanisms (buffers `gt_<param>`, `(I, K, d_in, d_out)`)."""
        for param, mech in (ground_truth or {}).items():
            self.register_buffer(f"gt_{param}", mech.detach().clone().float(), persistent=False)
            self.gt_params += (param,)

    def weights(self) -> dict[str, Tensor]:
        return {f"layer_{i}": w for i, w in enumerate(self.W)}

    def ground_truth(self) -> dict[str, Tensor] | None:
        """The true mechanisms the file shipped, per parameter; None if it shipped none."""
        return {p: self.get_buffer(f"gt_{p}") for p in self.gt_params} or None

    def default_m(self) -> int:
        return max(min(w.shape[-2], w.shape[-1]) for w in self.W)

    def forward(self, x: Tensor, layer_fns: Mapping[str, LayerFn] | None = None) -> Tensor:
        for i in range(len(self.W)):
            x = self.apply_layer(f"layer_{i}", x, layer_fns) + getattr(self, f"b{i}")
            if i < len(self.W) - 1:
                x = F.relu(x)
        return x


class FileSpec(TargetSpec):
    """A user-supplied network file (format above); set values override the file's own data defaults."""

    kind: Literal["file"] = "file"
    path: str
    feature_probability: Probability | None = None
    value_range: ValueRange | None = None


# ---------------------------------------------------------------------------------------------
# Reading files (shared by every family's file format)


def read_arrays(path: Path) -> dict[str, Any]:
    """The raw entries of a `.pt` (dict) or `.npz` file; ConfigError naming the file otherwise."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a target file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: _from_numpy(data[k]) for k in data.files}
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/numpy raise many types for truncated or foreign files
        raise ConfigError(f"{path}: not a readable target file ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a dict of arrays (got {type(data).__name__})")
    return data


def _from_numpy(a: np.ndarray) -> Any:
    if a.dtype.kind in "US":  # a string entry such as `kind`
        return str(a.item()) if a.ndim == 0 else a.tolist()
    return torch.from_numpy(a.copy())


def file_tensor(value: Any, key: str, path: Path, ndims: tuple[int, ...]) -> Tensor:
    """Entry `key` as a float tensor with one of `ndims` dimensions, every size > 0, all finite."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{path}: {key}: expected an array of numbers (got {type(value).__name__})") from None
    if t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"{path}: {key}: expected real numbers (got {t.dtype})")
    if t.dim() not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ConfigError(f"{path}: {key}: expected {want} dimensions (got shape {tuple(t.shape)})")
    if t.numel() == 0:
        raise ConfigError(f"{path}: {key}: every dimension must be > 0 (got shape {tuple(t.shape)})")
    t = t.float()
    bad = ~torch.isfinite(t)
    if bad.any():
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        what = ", ".join(f"{n} {name}" for n, name in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
        raise ConfigError(f"{path}: {key}: expected finite numbers (got {what} of {t.numel()} values)")
    return t


def with_instances(t: Tensor, ndim: int) -> Tensor:
    """Prepend the instances axis (size 1) to an entry given without it."""
    return t.unsqueeze(0) if t.dim() == ndim - 1 else t


def check_instances(entries: Mapping[str, Tensor], path: Path) -> int:
    """The common instance count of entries with an instances axis; ConfigError naming the odd one."""
    first_key, first = next(iter(entries.items()))
    for key, t in entries.items():
        if t.shape[0] not in (1, first.shape[0]):
            raise ConfigError(
                f"{path}: {key}: {t.shape[0]} instances, but {first_key} has {first.shape[0]} "
                "(every entry needs the same instance count, or none)"
            )
    return max(t.shape[0] for t in entries.values())


def data_defaults(data: Mapping[str, Any], path: Path) -> tuple[float, tuple[float, float]]:
    """`feature_probability` and `value_range` of a file (or the defaults)."""
    try:
        p = float(data.get("feature_probability", DEFAULT_FEATURE_PROBABILITY))
        vr = [float(v) for v in torch.as_tensor(data.get("value_range", DEFAULT_VALUE_RANGE)).flatten()]
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{path}: feature_probability must be a number and value_range a pair") from None
    if not 0.0 <= p <= 1.0 or len(vr) != 2 or not vr[0] <= vr[1]:
        raise ConfigError(f"{path}: feature_probability must be in [0, 1] and value_range a pair lo <= hi")
    return p, (vr[0], vr[1])


def user_target(
    path: Path, spec: FileSpec | None = None, data: Mapping[str, Any] | None = None
) -> tuple[FileSpec, Target]:
    """The network of a user file (by its `kind` entry), and its spec with the file's data defaults
    filled in where `spec` leaves them unset. `data`: the file's entries, if already read."""
    model, p, vr = _from_file(path, read_arrays(path) if data is None else data)
    spec = spec or FileSpec(path=str(path))
    resolved = spec.model_copy(
        update={
            "feature_probability": p if spec.feature_probability is None else spec.feature_probability,
            "value_range": vr if spec.value_range is None else spec.value_range,
        }
    )
    return resolved, model


def _from_file(path: Path, data: Mapping[str, Any]) -> tuple[Target, float, tuple[float, float]]:
    from apd.targets.registry import FAMILIES, get_family

    kind = data.get("kind", FileFamily.kind)
    if not isinstance(kind, str) or kind not in FAMILIES:
        formats = [FileFamily.kind, *(k for k, f in FAMILIES.items() if type(f).from_arrays is not Family.from_arrays)]
        raise ConfigError(f"{path}: kind: unknown format {kind!r}; one of {', '.join(dict.fromkeys(formats))}")
    family = get_family(kind)
    model = family.from_arrays(data, path)
    p, vr = data_defaults(data, path)
    return model, p, vr


# ---------------------------------------------------------------------------------------------
# The linear-stack format


def linear_stack_from_arrays(data: Mapping[str, Any], path: Path) -> LinearStack:
    """The linear stack of a file's entries (format above); one-line ConfigErrors naming file and entry."""
    gt_flat = {k: v for k, v in data.items() if k.startswith("ground_truth.")}
    unknown = [
        k for k in data if k not in DATA_ENTRIES and k != "ground_truth" and k not in gt_flat and not _stack_key(k)
    ]
    if unknown:
        raise ConfigError(
            f"{path}: unknown entry {unknown[0]!r} (expected W0.., b0.., feature_probability, value_range, "
            "ground_truth, kind)"
        )
    ws = sorted(int(k[1:]) for k in data if k.startswith("W"))
    if not ws:
        raise ConfigError(f"{path}: expected weights W0, W1, ... (got {', '.join(sorted(data)) or 'no entries'})")
    missing = [f"W{i}" for i in range(max(ws) + 1) if i not in ws]
    if missing:
        raise ConfigError(f"{path}: expected weights W0..W{max(ws)} (missing {', '.join(missing)})")
    n = len(ws)
    for k in data:
        if k.startswith("b") and _stack_key(k) and int(k[1:]) >= n:
            names = "W0" if n == 1 else f"W0..W{n - 1}"
            raise ConfigError(f"{path}: {k}: a bias without a weight W{k[1:]} (the weights are {names})")
    weights = {f"W{i}": with_instances(file_tensor(data[f"W{i}"], f"W{i}", path, (2, 3)), 3) for i in range(n)}
    n_inst = check_instances(weights, path)
    for i in range(n):
        w = weights[f"W{i}"]
        if i and w.shape[1] != weights[f"W{i - 1}"].shape[2]:
            raise ConfigError(
                f"{path}: W{i}: d_in {w.shape[1]} != d_out {weights[f'W{i - 1}'].shape[2]} of W{i - 1} "
                f"(W{i} has shape {tuple(w.shape[1:])})"
            )
    weights = {k: w.expand(n_inst, -1, -1) for k, w in weights.items()}
    if "kind" not in data:  # an explicit `kind: file` says the stack is meant
        _refuse_tms_shape(list(weights.values()), path)
    biases: list[Tensor | None] = []
    for i, w in enumerate(weights.values()):
        key = f"b{i}"
        if key not in data:
            biases.append(None)
            continue
        b = with_instances(file_tensor(data[key], key, path, (1, 2)), 2)
        if b.shape[-1] != w.shape[2]:
            raise ConfigError(f"{path}: {key}: expected ({w.shape[2]},) to match W{i}'s d_out (got {tuple(b.shape)})")
        check_instances({f"W{i}": w, key: b}, path)
        biases.append(b.expand(n_inst, -1))
    gt = _ground_truth(data.get("ground_truth"), gt_flat, weights, path)
    return LinearStack(list(weights.values()), biases, gt)


def _stack_key(key: str) -> bool:
    return re.fullmatch(r"[Wb]\d+", key) is not None


def _refuse_tms_shape(weights: list[Tensor], path: Path) -> None:
    """A TMS saved as a stack (`W_last = W0^T`) would load with ReLU in the middle and none at the end."""
    first, last = weights[0], weights[-1]
    tied = last.shape == first.transpose(-1, -2).shape and torch.allclose(
        last, first.transpose(-1, -2), rtol=1e-5, atol=1e-7
    )
    if len(weights) >= 2 and tied:
        raise ConfigError(
            f"{path}: W{len(weights) - 1} is W0 transposed: this looks like a TMS (tied weights), which a linear "
            "stack would run as a different network (ReLU between layers, none at the end); save it with "
            "kind: 'tms' (format in apd/targets/tms.py)"
        )


def _ground_truth(
    nested: Any, flat: Mapping[str, Any], weights: Mapping[str, Tensor], path: Path
) -> dict[str, Tensor] | None:
    """`ground_truth` as `{layer_l: (I, K, d_in, d_out)}`; None when the file has none."""
    if nested is not None and flat:
        raise ConfigError(f"{path}: ground_truth: give it as one dict or as ground_truth.W<l> entries, not both")
    if nested is None and not flat:
        return None
    if nested is not None and not isinstance(nested, Mapping):
        raise ConfigError(f"{path}: ground_truth: expected a dict of W<l> arrays (got {type(nested).__name__})")
    entries = dict(nested) if nested is not None else {k.removeprefix("ground_truth."): v for k, v in flat.items()}
    if not entries:
        raise ConfigError(f"{path}: ground_truth: empty (give at least one layer's mechanisms)")
    out: dict[str, Tensor] = {}
    count: tuple[str, int] | None = None
    n_inst = next(iter(weights.values())).shape[0]
    for layer, value in entries.items():
        key = f"ground_truth.{layer}"
        if layer not in weights:
            raise ConfigError(f"{path}: {key}: no weight {layer} (the weights are {', '.join(weights)})")
        w = weights[layer]
        mech = with_instances(file_tensor(value, key, path, (3, 4)), 4)
        if mech.shape[0] not in (1, n_inst):
            raise ConfigError(f"{path}: {key}: {mech.shape[0]} instances, but {layer} has {n_inst}")
        if mech.shape[2:] != w.shape[1:]:
            raise ConfigError(
                f"{path}: {key}: each mechanism must have {layer}'s shape {tuple(w.shape[1:])} "
                f"(got {tuple(mech.shape[2:])})"
            )
        if count is not None and mech.shape[1] != count[1]:
            raise ConfigError(f"{path}: {key}: {mech.shape[1]} mechanisms, but {count[0]} has {count[1]}")
        count = count or (key, mech.shape[1])
        out[f"layer_{layer[1:]}"] = mech.expand(n_inst, -1, -1, -1)
    norms = torch.stack([m.flatten(2).norm(dim=-1) for m in out.values()]).sum(0)  # (I, K)
    if (norms == 0).any():
        k = int((norms == 0).any(0).nonzero()[0])
        raise ConfigError(f"{path}: ground_truth: mechanism {k} is zero in every given layer")
    return out


# ---------------------------------------------------------------------------------------------
# The family


def _has_ground_truth(metrics: Mapping[str, Any], ev: Any) -> bool:
    return bool(metrics.get("ground_truth"))


class FileFamily(Family):
    """A user-supplied network: identity pattern always; weights vs shipped true mechanisms if any."""

    kind = "file"
    label = "user network"
    spec_type = FileSpec
    metric_keys = ("ground_truth", *MECHANISM_KEYS)
    checks: ClassVar[tuple[Check, ...]] = (
        IDENTITY_CHECK,
        *(Check(c.name, c.failure, c.reads, c.passes, c.rule, _has_ground_truth) for c in MECHANISM_CHECKS),
    )
    columns = (Column("identity_error", "identity-pattern errors (count)", lambda ev: 0.0, "low"), *MECHANISM_COLUMNS)
    summary_keys = ("ground_truth", "mechanism_cos", "split_share")
    cacheable = False

    def build(self, spec: Any, seed: int = 0) -> Target:
        return self.materialize(spec, seed)[1]

    def materialize(self, spec: Any, seed: int) -> tuple[TargetSpec, Target]:
        return user_target(Path(spec.path).expanduser(), spec)

    def from_arrays(self, data: Mapping[str, Any], path: Path) -> Target:
        return linear_stack_from_arrays(data, path)

    def describe(self, spec: Mapping[str, Any]) -> str:
        path = spec.get("path")
        return f"user network {Path(path).name}" if isinstance(path, str) else self.label

    def n_instances(self, spec: Mapping[str, Any]) -> int | None:
        return None

    def mechanisms(self, model: Target) -> dict[str, Tensor] | None:
        assert isinstance(model, LinearStack)
        return model.ground_truth()

    def evaluate(self, ctx: EvalContext) -> tuple[dict[str, Any], Any]:
        truth = self.mechanisms(ctx.target)
        if truth is None:
            return {"ground_truth": False}, None
        metrics, _ = mechanism_metrics(ctx.target, ctx.components, truth)
        return {"ground_truth": True, **metrics}, None
