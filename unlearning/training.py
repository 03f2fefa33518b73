"""Plain supervised training: the demo model, and the Retrain / Fine-tune baselines."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSet


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    """"sgd" (with momentum) or "adamw" (decoupled weight decay; fits a small set in far fewer steps)."""
    seed: int = 0


def train_classifier(model: nn.Module, data: ImageSet, cfg: TrainConfig, device: str = "cpu") -> nn.Module:
    """SGD with momentum (or AdamW, `cfg.optimizer`) and a cosine schedule on cross-entropy; returns the model in
    eval mode."""
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(data) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            x, y = data.x[index].to(device), data.y[index].to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()
