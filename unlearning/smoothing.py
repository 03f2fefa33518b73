"""Zero-shot unlearning by local Lipschitz smoothing (JiT; Foster et al., "An Information Theoretic
Approach to Machine Unlearning", Algorithm 1).

Only the forget inputs are used: no labels, no retain data. For each forget batch the loss is

    ℓ = mean_i mean_j ‖f(x_i) − sg[f(x̃_ij)]‖₂ / ‖x̃_ij − x_i‖₂,   x̃_ij = clip(x_i + ξ_ij, 0, 1),  ξ ~ N(0, σ²I)

and one SGD step is taken on the weights. Differences from the official code, on purpose: gradients are
reset every step (the code accumulates them across batches), the model runs in eval mode (dropout off,
BatchNorm running statistics untouched), the loss is a mean over the batch (the code sums, so its step
size grows with the batch), noise is clipped per image to the valid pixel range (the code clamps to the
batch's global min/max), and σ is in raw [0, 1] pixel units because normalisation is inside the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

ProgressFn = Callable[[float, dict], None]


@dataclass(frozen=True)
class SmoothingConfig:
    sigma: float = 0.1
    """Noise std in [0, 1] pixel units."""
    lr: float = 0.005
    """SGD learning rate on the weights."""
    n_samples: int = 25
    """Perturbations per forget input (N)."""
    batch_size: int = 64
    epochs: int = 10
    """Most passes over the forget inputs (fewer when `stop` says so)."""
    seed: int = 0


@dataclass(frozen=True)
class SmoothingResult:
    state_dict: dict[str, torch.Tensor]
    steps: int
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    stop_reason: str = "max_epochs"


def lipschitz_loss(model: nn.Module, x: torch.Tensor, cfg: SmoothingConfig, generator: torch.Generator) -> torch.Tensor:
    """The Monte-Carlo local Lipschitz estimate above for a batch x: (B, C, H, W) -> scalar."""
    out = model(x)  # (B, K), with gradient
    ratios = []
    for _ in range(cfg.n_samples):
        noise = torch.randn(x.shape, generator=generator).to(x.device) * cfg.sigma
        x_noisy = (x + noise).clamp(0.0, 1.0)
        with torch.no_grad():
            out_noisy = model(x_noisy)  # a fixed target
        in_norm = (x_noisy - x).flatten(1).norm(dim=1).clamp_min(1e-8)  # (B,)
        ratios.append((out - out_noisy).norm(dim=1) / in_norm)
    return torch.stack(ratios).mean()


def lipschitz_smoothing(
    model: nn.Module, forget_x: torch.Tensor, cfg: SmoothingConfig, progress: ProgressFn | None = None,
    stop: Callable[[nn.Module], bool] | None = None,
) -> SmoothingResult:
    """Smooth a copy of `model` around forget_x (N, C, H, W) in [0, 1]; the given model is not changed.

    `stop(smoothed_model)`, checked after every step, ends smoothing early (the service stops once the
    forget set's accuracy reaches its target, so the model is not smoothed further than needed).
    """
    smoothed = copy.deepcopy(model).eval()
    for p in smoothed.parameters():
        p.requires_grad_(True)
    device = next(smoothed.parameters()).device
    params = [p for p in smoothed.parameters() if p.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = -(-len(forget_x) // cfg.batch_size)
    total, step, history, stopped = cfg.epochs * steps_per_epoch, 0, [], False
    for epoch in range(cfg.epochs):
        if stopped:
            break
        order = torch.randperm(len(forget_x), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            x = forget_x[order[start : start + cfg.batch_size]].to(device)
            loss = lipschitz_loss(smoothed, x, cfg, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            record = {"step": step, "epoch": epoch + 1, "loss": float(loss.detach())}
            history.append(record)
            if progress is not None:
                progress(step / total, record)
            if stop is not None and stop(smoothed):
                stopped = True
                break
    state = {k: v.detach().cpu().clone() for k, v in smoothed.state_dict().items()}
    return SmoothingResult(state_dict=state, steps=step, history=history, config=asdict(cfg),
                           stop_reason="target_met" if stopped else "max_epochs")


def accuracy_at_most(x: torch.Tensor, y: torch.Tensor, target: float) -> Callable[[nn.Module], bool]:
    """A `stop` rule: the smoothed model's accuracy on (x, y) has fallen to `target` or below."""

    def reached(model: nn.Module) -> bool:
        with torch.no_grad():
            device = next(model.parameters()).device
            predictions = model(x.to(device)).argmax(1).cpu()
        return (predictions == y).float().mean().item() <= target

    return reached
