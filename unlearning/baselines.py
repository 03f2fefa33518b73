"""Model-based baselines, for measurement only (the benchmark compares the service's methods with them).

Retrain: train from scratch on D_r (the gold standard). Fine-tune: continue training the original on D_r.
Gradient ascent: maximise cross-entropy on D_f until its accuracy reaches a target.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ForgetSplit
from unlearning.evaluation import accuracy
from unlearning.training import TrainConfig, train_classifier


def retrain(
    build: Callable[[], nn.Module], split: ForgetSplit, cfg: TrainConfig, device: str = "cpu"
) -> nn.Module:
    """A fresh model from `build()` trained on D_r only."""
    return train_classifier(build(), split.retain, cfg, device)


def fine_tune(model: nn.Module, split: ForgetSplit, cfg: TrainConfig, device: str = "cpu") -> nn.Module:
    """A copy of the model trained further on D_r (catastrophic forgetting of D_f)."""
    tuned = copy.deepcopy(model)
    for p in tuned.parameters():
        p.requires_grad_(True)
    return train_classifier(tuned, split.retain, cfg, device)


@dataclass(frozen=True)
class GradientAscentConfig:
    lr: float = 0.01
    batch_size: int = 64
    max_epochs: int = 5
    target_forget_accuracy: float = 0.0
    seed: int = 0


def gradient_ascent(model: nn.Module, split: ForgetSplit, cfg: GradientAscentConfig) -> nn.Module:
    """A copy of the model after SGD steps on −CE(D_f), stopping once forget accuracy <= the target."""
    ascended = copy.deepcopy(model).train()
    for p in ascended.parameters():
        p.requires_grad_(True)
    device = next(ascended.parameters()).device
    optimizer = torch.optim.SGD(ascended.parameters(), lr=cfg.lr, momentum=0.9)
    generator = torch.Generator().manual_seed(cfg.seed)
    forget = split.forget
    for _ in range(cfg.max_epochs):
        order = torch.randperm(len(forget), generator=generator)
        for start in range(0, len(order), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = -F.cross_entropy(ascended(forget.x[index].to(device)), forget.y[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if accuracy(ascended.eval(), forget.x, forget.y) <= cfg.target_forget_accuracy:
                return ascended.eval()
            ascended.train()
    return ascended.eval()
