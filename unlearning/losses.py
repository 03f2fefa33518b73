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


def retain_kl_loss(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference ‖ softmax(logits)) per sample: keeps the retain outputs (confidences included) where the
    original model had them (SCRUB's retain term). logits: (B, K); reference: (B, K) probabilities. 0 if B = 0."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    return F.kl_div(F.log_softmax(logits, dim=1), reference, reduction="batchmean")


def true_class_log_odds(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y − log(1 − p_y) per sample, computed stably from logits (B, K) -> (B,)."""
    log_p = F.log_softmax(logits, dim=1)
    true = log_p.gather(1, labels[:, None]).squeeze(1)
    others = torch.logsumexp(log_p.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf")), dim=1)
    return true - others


def confidence_match_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean smooth-L1 distance between each sample's true-class log-odds and its `target` (B,): moves forget
    samples to the confidences unseen data gets, instead of pushing every one of them across the boundary.
    0 if B = 0."""
    if len(labels) == 0:
        return logits.sum() * 0.0
    return F.smooth_l1_loss(true_class_log_odds(logits, labels), target)


def forget_vector_objective(
    logits: torch.Tensor,
    labels: torch.Tensor,
    is_forget: torch.Tensor,
    alpha: float,
    beta: float,
    tau: float,
    *,
    reference: torch.Tensor | None = None,
    forget_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """α·CE(retain) + β·max(margin, −τ)(forget) for one mixed batch: the data terms of Sun et al. (2024),
    Eq. 3. The caller adds the norm term λ·‖δ‖₂ (or its own penalty, as vector arithmetic does).

    logits: (B, K); labels: (B,); is_forget: (B,) bool. `reference` (B, K): the original model's probabilities,
    to use KL to them as the retain term instead of CE; `forget_target` (B,): target log-odds, to use
    `confidence_match_loss` as the forget term instead of the margin (rows of the other kind are ignored).
    Returns the loss and its parts.
    """
    if reference is None:
        l_retain = retain_loss(logits[~is_forget], labels[~is_forget])
    else:
        l_retain = retain_kl_loss(logits[~is_forget], reference[~is_forget])
    if forget_target is None:
        l_forget = cw_forget_loss(logits[is_forget], labels[is_forget], tau)
    else:
        l_forget = confidence_match_loss(logits[is_forget], labels[is_forget], forget_target[is_forget])
    total = alpha * l_retain + beta * l_forget
    return total, {"retain": float(l_retain.detach()), "forget": float(l_forget.detach())}
