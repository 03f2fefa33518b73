"""Forget-vector arithmetic: forget several classes with δ = Σ_k w_k δ_k over stored class vectors,
learning only the coefficients w (Sun et al. 2024, compositional unlearning)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from unlearning.data import ForgetSplit
from unlearning.forget_vector import ForgetVectorConfig, ProgressFn, optimise_perturbation


@dataclass(frozen=True)
class CoefficientConfig(ForgetVectorConfig):
    """Same objective and stopping rule as a forget vector; λ now weighs ‖w‖₂ and only w is optimised."""

    lr: float = 0.05
    max_epochs: int = 30
    lam: float = 0.01
    max_train_samples: int | None = 1024
    """K coefficients need few samples: a fixed budget keeps the cost independent of the data set's size."""
    init: float = 1.0
    """Initial value of every coefficient (1 = start from the plain sum of the class vectors)."""


OFFICIAL = CoefficientConfig(init=0.0, optimizer="adam", lr_decay=1.0)
"""As the official code: every coefficient starts at 0 (δ = 0), signed, over every vector of the bank the caller
passes (not only the requested classes'), here with Adam so the step (0.05 per coefficient) does not depend on
the gradient's scale."""


@dataclass(frozen=True)
class CoefficientResult:
    delta: torch.Tensor  # (C, H, W) = Σ w_k δ_k
    weights: dict[int, float]
    epochs: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def learn_coefficients(
    model: nn.Module,
    split: ForgetSplit,
    bank: dict[int, torch.Tensor],
    cfg: CoefficientConfig,
    progress: ProgressFn | None = None,
) -> CoefficientResult:
    """Learn w ∈ ℝ^K for the K bank vectors given, so that δ = Σ w_k δ_k forgets D_f and keeps D_r."""
    device = next(model.parameters()).device
    keys = sorted(bank)
    basis = torch.stack([bank[k].to(device) for k in keys])  # (K, C, H, W)
    weights = torch.full((len(keys),), cfg.init, device=device, requires_grad=True)  # (K,)

    def build_delta() -> torch.Tensor:
        return torch.einsum("k,kchw->chw", weights, basis)

    best, epochs, stop_reason, history = optimise_perturbation(
        model, split, [weights], build_delta, lambda: weights.norm(p=2), cfg, progress)
    # Recover the coefficients of the best δ by least squares over the basis (exact: δ lies in its span).
    solution = torch.linalg.lstsq(basis.flatten(1).T.cpu(), best.flatten().cpu()[:, None]).solution
    return CoefficientResult(
        delta=best.cpu(),
        weights={k: round(float(w), 6) for k, w in zip(keys, solution.flatten(), strict=True)},
        epochs=epochs, stop_reason=stop_reason, history=history, config=asdict(cfg))
