"""Zero-shot unlearning by local Lipschitz smoothing (JiT; Foster et al., "An Information Theoretic
Approach to Machine Unlearning", Algorithm 1).

Only the forget inputs are used: no labels, no retain data. For each forget batch the loss is

    ℓ = mean_i mean_j ‖f(x_i) − sg[f(x̃_ij)]‖₂ / ‖x̃_ij − x_i‖₂,   x̃_ij = clip(x_i + ξ_ij, 0, 1),  ξ ~ N(0, σ²I)

and one SGD step is taken on the weights. Differences from the official code, on purpose: gradients are
reset every step (the code accumulates them across batches), the model runs in eval mode (dropout off,
BatchNorm running statistics untouched), the loss is a mean over the batch (the code sums, so its step
size grows with the batch), noise is clipped per image to the valid pixel range (the code clamps to the
batch's global min/max) and the ratio divides by the clipped difference, and σ is in raw [0, 1] pixel units
because normalisation is inside the model. The code's single pass is replaced by up to `epochs` passes ended by
a caller-supplied stopping rule (`accuracy_at_most`), since a fixed pass count over- or under-forgets.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

ProgressFn = Callable[[float, dict], None]


@dataclass(frozen=True)
class SmoothingConfig:
    """Hyperparameters of JiT (Algorithm 1). σ and lr are absolute here; the service derives both from the model
    and data at hand with `calibrated_smoothing` (the paper's σ values are in normalised units and do not
    transfer)."""

    sigma: float = 0.1
    """Noise std in raw [0, 1] pixel units (the model's Normalize layer sits inside the model)."""
    lr: float = 0.003
    """SGD learning rate on the weights (no momentum, no weight decay, as in the official code)."""
    n_samples: int = 25
    """Perturbations per forget input (N; 25 in every experiment of the official code)."""
    batch_size: int = 64
    epochs: int = 40
    """Most passes over the forget inputs; the caller's `stop` rule usually ends smoothing earlier."""
    check_every: int = 2
    """Steps between checks of the caller's `acceptable` and `stop` rules (and always after an epoch's last step):
    often enough that one step cannot cross from "not forgotten" to "damaged" unseen."""
    clip_noise: bool = True
    """Clip each perturbed image to [0, 1] and divide by the clipped difference ‖x̃ − x‖ (the served input is
    always a valid image); False divides by ‖ξ‖ of the unclipped noise."""
    salient_fraction: float | None = None
    """JiT bounded: update only this share of the weights, those with the largest |∂ℓ/∂θ| of the JiT loss summed
    over the forget inputs at the start (label-free, like SalUn's mask but from JiT's own loss); None: all."""
    seed: int = 0


@dataclass(frozen=True)
class SmoothingResult:
    state_dict: dict[str, torch.Tensor]
    steps: int
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    stop_reason: str = "max_epochs"


def lipschitz_ratio(out: torch.Tensor, out_noisy: torch.Tensor, x: torch.Tensor, x_noisy: torch.Tensor) -> torch.Tensor:
    """‖f(x) − f(x̃)‖₂ / ‖x − x̃‖₂ per sample (Algorithm 1, line 7). out: (B, K); x: (B, C, H, W) -> (B,)."""
    in_norm = (x_noisy - x).flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
    return (out - out_noisy).norm(dim=1) / in_norm


def lipschitz_loss(model: nn.Module, x: torch.Tensor, cfg: SmoothingConfig, generator: torch.Generator) -> torch.Tensor:
    """The Monte-Carlo local Lipschitz estimate: mean over the batch and N draws of `lipschitz_ratio`, with
    the perturbed outputs held constant. x: (B, C, H, W) -> scalar."""
    out = model(x)  # (B, K), with gradient
    total = out.new_zeros(())
    for _ in range(cfg.n_samples):
        noise = torch.randn(x.shape, generator=generator).to(x.device) * cfg.sigma  # ξ ~ N(0, σ²I)
        x_noisy = (x + noise).clamp(0.0, 1.0) if cfg.clip_noise else x + noise
        with torch.no_grad():
            out_noisy = model(x_noisy)  # sg[f(x̃)]: a fixed target
        total = total + lipschitz_ratio(out, out_noisy, x, x_noisy).mean()
    return total / cfg.n_samples


def lipschitz_smoothing(
    model: nn.Module, forget_x: torch.Tensor, cfg: SmoothingConfig, progress: ProgressFn | None = None,
    stop: Callable[[nn.Module], bool] | None = None, acceptable: Callable[[nn.Module], bool] | None = None,
) -> SmoothingResult:
    """Smooth a copy of `model` around forget_x (N, C, H, W) in [0, 1]; the given model is not changed.

    Checked every `check_every` steps and after each epoch: `acceptable(smoothed_model)` false ends smoothing and
    returns the last weights that were acceptable (the given model's, if none since: stop reason
    "utility_floor"); else `stop(smoothed_model)` true ends it with the current weights (the service stops once
    the forget set's accuracy reaches its target, so the model is not smoothed further).
    """
    smoothed = copy.deepcopy(model).eval()
    for p in smoothed.parameters():
        p.requires_grad_(True)
    device = next(smoothed.parameters()).device
    params = [p for p in smoothed.parameters() if p.is_floating_point()]
    optimizer = torch.optim.SGD(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    masks = None if cfg.salient_fraction is None else salient_masks(smoothed, forget_x, cfg)
    steps_per_epoch = -(-len(forget_x) // cfg.batch_size)
    total, step, history, stopped = cfg.epochs * steps_per_epoch, 0, [], False
    last_good = _copy_state(smoothed)  # what `acceptable` last approved (the given model's weights at first)
    stop_reason = "max_epochs"
    for epoch in range(cfg.epochs):
        if stopped:
            break
        order = torch.randperm(len(forget_x), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            x = forget_x[order[start : start + cfg.batch_size]].to(device)
            loss = lipschitz_loss(smoothed, x, cfg, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if masks is not None:
                for p, mask in zip(params, masks, strict=True):
                    if p.grad is not None:
                        p.grad.mul_(mask)
            optimizer.step()
            step += 1
            record = {"step": step, "epoch": epoch + 1, "loss": float(loss.detach())}
            history.append(record)
            if progress is not None:
                progress(step / total, record)
            last_of_epoch = start + cfg.batch_size >= len(order)
            if not (step % cfg.check_every == 0 or last_of_epoch):
                continue
            if acceptable is not None:
                if not acceptable(smoothed):
                    smoothed.load_state_dict(last_good)
                    stopped, stop_reason = True, "utility_floor"
                    break
                last_good = _copy_state(smoothed)
            if stop is not None and stop(smoothed):
                stopped, stop_reason = True, "target_met"
                break
    return SmoothingResult(state_dict=_copy_state(smoothed, "cpu"), steps=step, history=history,
                           config=asdict(cfg), stop_reason=stop_reason)


def salient_masks(model: nn.Module, forget_x: torch.Tensor, cfg: SmoothingConfig) -> list[torch.Tensor]:
    """One 0/1 mask per floating-point parameter of `model`: 1 for the `cfg.salient_fraction` share of all weights
    with the largest |gradient| of the JiT loss accumulated over one pass of forget_x (N, C, H, W)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    device = params[0].device
    grads = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    for start in range(0, len(forget_x), cfg.batch_size):
        loss = lipschitz_loss(model, forget_x[start : start + cfg.batch_size].to(device), cfg, generator)
        for g, d in zip(grads, torch.autograd.grad(loss, params, allow_unused=True), strict=True):
            if d is not None:
                g.add_(d.abs())
    flat = torch.cat([g.flatten() for g in grads])
    keep = max(1, round(float(cfg.salient_fraction or 0.0) * len(flat)))
    threshold = flat.topk(keep).values.min()
    return [(g >= threshold).to(g.dtype) for g in grads]


def _copy_state(model: nn.Module, device: str | None = None) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().to(device or v.device) for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class SmoothingScale:
    """Scale-free settings from which `calibrated_smoothing` derives σ and the learning rate for a given model
    and forget set, so that no absolute value is tuned to one data set."""

    sigma_per_spread: float = 0.25
    """σ = this × the pixel standard deviation of the forget inputs (0.1 on 8×8 digits, whose spread is 0.38)."""
    step_fraction: float = 0.005
    """lr = this × ‖θ‖ / ‖∇ℓ(θ)‖ on the first batch: the first step moves the weights by 0.5 % of their norm."""


def calibrated_smoothing(
    model: nn.Module, forget_x: torch.Tensor, base: SmoothingConfig, scale: SmoothingScale,
) -> SmoothingConfig:
    """`base` with σ relative to the inputs' spread and the step size from the first batch's gradient norm."""
    sigma = scale.sigma_per_spread * float(forget_x.std()) if len(forget_x) > 1 else base.sigma
    cfg = replace(base, sigma=max(sigma, 1e-3))
    probe = copy.deepcopy(model).eval()
    params = [p.requires_grad_(True) for p in probe.parameters() if p.is_floating_point()]
    device = params[0].device
    x = forget_x[torch.randperm(len(forget_x), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.batch_size]]
    loss = lipschitz_loss(probe, x.to(device), cfg, torch.Generator().manual_seed(cfg.seed))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grad_norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None))
    weight_norm = math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in params))
    if grad_norm == 0.0:
        return cfg
    return replace(cfg, lr=scale.step_fraction * weight_norm / grad_norm)


CLASS_FORGET_TARGET = 0.10
"""Zero-shot class forgetting stops once the forget set's accuracy is at most this (UA >= 90)."""


def accuracy_at_most(
    x: torch.Tensor, y: torch.Tensor, target: float, max_samples: int | None = 512, seed: int = 0,
) -> Callable[[nn.Module], bool]:
    """A `stop` rule: the smoothed model's accuracy on (x, y) has fallen to `target` or below.

    With more than `max_samples` forget samples, a fixed seeded subsample of that size is checked, so the rule
    costs at most `max_samples` forward passes per step whatever the size of the forget set.
    """
    if max_samples is not None and len(y) > max_samples:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:max_samples]
        x, y = x[keep], y[keep]

    def reached(model: nn.Module) -> bool:
        with torch.no_grad():
            device = next(model.parameters()).device
            predictions = model(x.to(device)).argmax(1).cpu()
        return (predictions == y).float().mean().item() <= target

    return reached
