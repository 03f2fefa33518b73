"""Side-effect-free loss terms. Each returns a scalar tensor; callers own logging and optimisation."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def true_class_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y − max_{k≠y} z_k per sample. logits: (B, K), labels: (B,) -> (B,). Negative = misclassified."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)  # (B,)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return true_logit - others.max(dim=1).values


def cw_forget_loss(logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean of max(z_y − max_{k≠y} z_k, −τ): the C&W untargeted term of Sun et al. (2024), Eq. 3.

    Normalised by the number of forget samples (the official code divides by the whole batch instead).
    An empty batch contributes 0.
    """
    if len(labels) == 0:
        return logits.sum() * 0.0
    return true_class_margin(logits, labels).clamp_min(-tau).mean()


def retain_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy on the retain samples of the batch (0 if there are none)."""
    if len(labels) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


def forget_vector_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_forget: torch.Tensor,
    alpha: float,
    beta: float,
    tau: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """α·CE(retain) + β·max(margin, −τ)(forget) for one mixed batch: the data terms of Sun et al. (2024),
    Eq. 3. The caller adds the norm term λ·‖δ‖₂ (or its own penalty, as vector arithmetic does).

    logits: (B, K); labels: (B,); is_forget: (B,) bool. Returns the loss and its parts.
    """
    l_retain = retain_loss(logits[~is_forget], labels[~is_forget])
    l_forget = cw_forget_loss(logits[is_forget], labels[is_forget], tau)
    total = alpha * l_retain + beta * l_forget
    return total, {"retain": float(l_retain.detach()), "forget": float(l_forget.detach())}
