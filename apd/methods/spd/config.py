"""SPD's settings (docs/spd.md §1, §8.1). Keys are named as in the SPD paper branch's `Config` (`C`,
`n_ci_mlp_neurons`, `faithfulness_coeff`, `stochastic_recon_coeff`, ...), so the paper's tables
read straight into a YAML file. Each default names the variant it follows (docs/spd.md §6):

* item 4, faithfulness N: the code's (decomposed matrices only, the tied one twice);
* item 5, layerwise masks: the code's fresh draws (`apd.methods.spd.masks`);
* item 6, cosine: the shared `lr_schedule: cosine` is the paper branch's quarter cosine (main's half
  cosine to a final fraction is not offered: it would be a shared-schedule change);
* item 7, mask sigmoid: `lower_sigmoid` (paper default, main's as an option);
* item 8, CI input: not detached, as the code (A also learns from the CI side);
* item 9, tied TMS: `tied_mode` (the code's aliasing by default, `shared` as an option);
* item 12, init: `init` (the code's projection by default, main's normal + warm-up as an option);
* item 15, coefficient 0.0: the term is skipped (exact);
* item 20, randomness: masks draw from the loop's own sampling generator, apart from data and init.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from apd.config import MethodConfig, NonNegativeFloat, PositiveFloat, PositiveInt

NonNegativeInt = Annotated[int, Field(ge=0)]

LOSS_COEFFS = (
    "faithfulness_coeff",
    "stochastic_recon_coeff",
    "stochastic_recon_layerwise_coeff",
    "importance_minimality_coeff",
    "recon_coeff",
    "recon_layerwise_coeff",
    "out_recon_coeff",
)
"""Every loss coefficient; a term whose coefficient is null or 0 is never computed (docs/spd.md §6 item 15)."""


class SPDConfig(MethodConfig):
    """One SPD run: subcomponents, causal-importance functions, stochastic masks, losses, fast-step switches."""

    method: Literal["spd"] = "spd"
    # subcomponents and causal-importance functions
    C: PositiveInt
    """Rank-one subcomponents per decomposed matrix (one global C, as on the paper branch)."""
    n_ci_mlp_neurons: NonNegativeInt = 16
    """Hidden width of each subcomponent's scalar GELU MLP (`GateMLP`); 0 = an affine gate per subcomponent."""
    init: Literal["projection", "normal"] = "projection"
    """`projection`: the paper code's `init_As_and_Bs_` (unit-norm random factors, B rescaled so each
    subcomponent is W projected on its direction; docs/spd.md §1.1, §6 item 12). `normal`: main's
    `A ~ N(0, 1/d_in)`, `B ~ N(0, 1/C)`, normally with `faithfulness_warmup_steps: 200`."""
    faithfulness_warmup_steps: NonNegativeInt = 0
    """Main's warm-up: AdamW steps on the faithfulness loss alone before training (0 = none, paper)."""
    faithfulness_warmup_lr: PositiveFloat = 1e-2
    faithfulness_warmup_weight_decay: NonNegativeFloat = 0.1
    tied_mode: Literal["aliased", "shared"] = "aliased"
    """TMS's tied `linear2` (docs/spd.md §6 item 9). `aliased` emulates the code: linear2 has its own
    factors, CI function and Adam state, tied to linear1's numbers, so each step applies both Adam
    updates to the shared values. `shared`: linear2 uses linear1's factors transposed (summed
    gradients, one Adam state; may need up to 2x the LR to match)."""
    lower_sigmoid: Literal["paper", "main"] = "paper"
    """Mask-side hard sigmoid (docs/spd.md §1.2, §6 item 7): `paper` leaks alpha x below 0 (masks may dip
    slightly below 0); `main` clamps to [0, 1] and leaks the gradient below 0 only upwards."""
    # stochastic masks and losses
    n_mask_samples: PositiveInt = 1
    """S: mask samples per step; the reconstruction losses average over them."""
    output_loss_type: Literal["mse", "kl"] = "mse"
    """Divergence D(target, masked): `mse` (toys) or `kl` of softmaxed outputs (language models)."""
    faithfulness_coeff: NonNegativeFloat | None = 1.0
    stochastic_recon_coeff: NonNegativeFloat | None = 1.0
    stochastic_recon_layerwise_coeff: NonNegativeFloat | None = 1.0
    importance_minimality_coeff: NonNegativeFloat | None
    """beta_3, the weight of the importance-minimality loss (required: it is the setting that matters)."""
    pnorm: PositiveFloat | None = None
    """p of the importance-minimality loss `sum_l sum_c (g+)^p` (needed with importance_minimality_coeff)."""
    recon_coeff: NonNegativeFloat | None = None
    """Masks = the causal importances themselves, all matrices at once (off in every paper run)."""
    recon_layerwise_coeff: NonNegativeFloat | None = None
    """As `recon_coeff`, one matrix at a time (off in every paper run)."""
    out_recon_coeff: NonNegativeFloat | None = None
    """All subcomponents unmasked (the resid yaml's 0.0 costs a forward for nothing; skipped here)."""
    # implementation
    implementation: Literal["fast", "naive"] = "fast"
    """`naive` follows the paper code's step pass for pass (the test oracle); `fast` batches the CI
    functions and the masked passes (`apd.methods.spd.fast`) with the same numbers up to float rounding."""
    compile: bool = False
    """Fast step: run the CI MLPs through `torch.compile` (one compilation, any batch size; worth it for
    long runs, bench/RESULTS.md)."""
    zero_rows: Literal["auto", "skip", "keep"] = "auto"
    """Fast step: a sample whose decomposed layers all see a zero input adds exactly 0 to the
    reconstruction losses and the CI at 0 to the importance loss, so `skip` computes such samples once
    (most sparse-feature samples). It reads a row count on the host, so `auto` skips on the CPU only."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not any(getattr(self, name) for name in LOSS_COEFFS):
            raise ValueError(f"{' '.join(LOSS_COEFFS)}: all null or 0; set at least one")
        if self.implementation == "naive" and self.zero_rows == "skip":
            raise ValueError("zero_rows: skip needs implementation: fast (the naive step computes every sample)")
        if self.implementation == "naive" and self.compile:
            raise ValueError("compile needs implementation: fast")
        if self.importance_minimality_coeff and self.pnorm is None:
            raise ValueError("importance_minimality_coeff needs pnorm")
        return self

    def coeff(self, name: str) -> float:
        """The coefficient of a term, 0.0 when it is null (the term is off)."""
        value: float | None = getattr(self, name)
        return value or 0.0
