"""APD's settings (docs/method.md, APD). Keys are named as in the APD reference code (`C`, `m`,
`topk`, `topk_recon_coeff`, ...), so a paper appendix table reads straight into a YAML file."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import model_validator

from apd.config import MethodConfig, NonNegativeFloat, PositiveFloat, PositiveInt

AttributionType = Literal["gradient", "gradient_apd", "activation", "ablation"]


class APDConfig(MethodConfig):
    """One APD run: components, attributions, top-k or Lp sparsity, losses and fast-step switches."""

    method: Literal["apd"] = "apd"
    # components
    C: PositiveInt
    m: PositiveInt | None = None
    """Inner rank; None = the target's default (full rank for resid MLPs, min(n_f, n_h)+1 TMS)."""
    init_scale: PositiveFloat = 1.0
    unit_norm_matrices: bool = False
    # attributions and sparsity
    attribution_type: AttributionType = "gradient"
    topk: PositiveFloat | None = None
    batch_topk: bool = True
    exact_topk: bool = False
    distil_from_target: bool = False
    lp_sparsity_coeff: NonNegativeFloat | None = None
    pnorm: PositiveFloat | None = None
    lp_schatten_form: Literal["paper", "code"] = "paper"
    """Lp APD's simplicity weighting: `paper` weights each component's Schatten term by its Lp weight
    w; `code` puts w inside the power, `(w S)^(p/2)`, as the reference code does (docs/method.md)."""
    # losses
    param_match_coeff: NonNegativeFloat | None = 1.0
    faithfulness_norm: Literal["mean", "sum"] = "mean"
    """`mean` divides by the decomposed element count (paper main text, code); `sum` does not (appendix)."""
    topk_recon_coeff: NonNegativeFloat | None = None
    act_recon_coeff: NonNegativeFloat | None = None
    schatten_coeff: NonNegativeFloat | None = None
    schatten_pnorm: PositiveFloat = 1.0
    out_recon_coeff: NonNegativeFloat | None = None
    implementation: Literal["fast", "naive"] = "fast"
    """`naive` follows the reference code's step pass for pass (one autograd call per output), kept as
    the test oracle for `fast`."""
    masked_forward: Literal["auto", "dense", "sparse"] = "auto"
    """Fast step's top-k pass: all components masked (`dense`) or the active ones only (`sparse`);
    `auto` = sparse on the CPU when that computes at most a quarter of the pairs (`apd.methods.apd.fast`)."""
    compile: bool | Literal["auto"] = "auto"
    """Fast step: `torch.compile` the attribution pass (compiles once per target and batch shape, 10-20 s on
    the CPU). `auto` compiles only where that measurably pays back (bench/RESULTS.md): on the CPU, in runs
    of at least 2000 steps, for the TMS closed form with a large tangent tensor (TMS 40-10: 1.25x the
    steps/s); it did not speed up TMS 5-2 and slowed the residual MLPs (`apd.methods.apd.fast.use_compile`)."""
    autocast_dtype: Literal["bfloat16"] | None = None
    """Fast step: the top-k APD pass under `torch.autocast` (CUDA only: it slowed the CPU step 0.4-0.8x;
    attributions and losses stay float32)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.topk is None) == (self.lp_sparsity_coeff is None):
            raise ValueError("set exactly one of topk (top-k APD) and lp_sparsity_coeff (Lp APD)")
        if self.topk is not None:
            if self.topk_recon_coeff is None:
                raise ValueError("topk needs topk_recon_coeff")
            if self.batch_topk and int(self.topk * self.batch_size) < 1:
                raise ValueError(f"topk * batch_size must be >= 1 (got {self.topk} * {self.batch_size})")
            if not self.batch_topk and not self.exact_topk and int(self.topk) < 1:
                raise ValueError(f"per-sample top-k needs topk >= 1 (got {self.topk})")
            # topk.py would clamp a larger k to what exists: refuse it instead of running another setting
            selectable, which = (self.C - 1, "C - 1") if self.distil_from_target else (self.C, "C")
            if not self.exact_topk and self.batch_topk and self.topk > selectable:
                raise ValueError(
                    f"topk: must be <= {which} ({selectable}): batch top-k keeps int(topk * batch_size) of "
                    f"batch_size * {which} attributions (got {self.topk:g})"
                )
            if not self.exact_topk and not self.batch_topk and int(self.topk) > selectable:
                raise ValueError(
                    f"topk: must be <= {which} ({selectable}): per-sample top-k keeps int(topk) of {which} "
                    f"components (got {self.topk:g})"
                )
        else:
            if self.pnorm is None:
                raise ValueError("lp_sparsity_coeff needs pnorm")
            if self.topk_recon_coeff is not None or self.act_recon_coeff is not None:
                raise ValueError("topk_recon_coeff/act_recon_coeff need topk (Lp APD has no top-k pass)")
            if self.exact_topk or self.distil_from_target:
                raise ValueError("exact_topk and distil_from_target need topk")
        if self.implementation == "naive" and (self.compile is True or self.autocast_dtype is not None):
            raise ValueError("compile and autocast_dtype need implementation: fast")
        return self

    @property
    def k(self) -> int:
        """Components kept per instance and batch (batch top-k) or per sample."""
        assert self.topk is not None
        return int(self.topk * self.batch_size) if self.batch_topk else int(self.topk)
