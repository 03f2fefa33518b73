"""How a model is evaluated with a forget vector in force, exactly as the service serves it: shared by the
methods, the utility guard, the metrics and the baselines."""

from __future__ import annotations

import torch
from torch import nn


def apply_delta(x: torch.Tensor, delta: torch.Tensor | None, clip: bool = True) -> torch.Tensor:
    """x + δ for x: (B, C, H, W) and δ: (C, H, W), clipped to [0, 1] when `clip`."""
    if delta is None:
        return x
    x = x + delta.to(x.device)
    return x.clamp(0.0, 1.0) if clip else x


def perturbed_logits(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor | None, gate_classes: list[int] | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Logits (B, K) of model(x + δ) for x: (B, C, H, W) on the model's device.

    Gated forget vector (`gate_classes` given): δ is applied only to the inputs that the unperturbed model
    assigns to one of `gate_classes`; every other input keeps its unperturbed logits. That costs one extra
    forward pass, and only for the gated inputs.
    """
    if delta is None:
        return model(x)
    if not gate_classes:
        return model(apply_delta(x, delta, clip))
    logits = model(x)  # (B, K)
    gated = torch.isin(logits.argmax(1), torch.tensor(gate_classes, device=logits.device))  # (B,)
    if gated.any():
        logits = logits.clone()
        logits[gated] = model(apply_delta(x[gated], delta, clip))
    return logits


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor | None = None,
    clip: bool = True, batch_size: int = 1024, gate_classes: list[int] | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of model(x + δ) (gated by `gate_classes` when given).

    x: (N, C, H, W), y: (N,)."""
    if len(y) == 0:
        return float("nan")
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = perturbed_logits(model, x[start : start + batch_size].to(device), delta, gate_classes, clip)
        correct += int((logits.argmax(1).cpu() == y[start : start + batch_size]).sum().item())
    return correct / len(y)
