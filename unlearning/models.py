"""Classifiers the core can build by name, and the wrapper that puts normalisation inside the model.

Every method works in raw [0, 1] pixel space: δ is added before the model's own normalisation
(Sun et al. 2024, §3), so the normalisation lives inside `NormalizedClassifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from unlearning.errors import UnknownMethodError


class NormalizedClassifier(nn.Module):
    """`net((x - mean) / std)` for x in [0, 1] pixel space. x: (B, C, H, W) -> logits (B, K)."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks and a two-layer head; sized for 8×8 to 32×32 inputs."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),  # (B, 2w, 4, 4) whatever the input size
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _small_resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision ResNet-18 adapted to small inputs: 3×3 stem, stride 1, no max-pool (the CIFAR variant)."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(in_channels: int, num_classes: int) -> nn.Module:
        from torchvision import models

        if in_channels != 3:
            raise UnknownMethodError(f"torchvision architecture {name!r} expects 3 input channels")
        return models.get_model(name, weights=None, num_classes=num_classes)

    return build


ARCHITECTURES: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": lambda c, k: SmallCNN(c, k),
    "resnet18_small": _small_resnet18,
}


def build_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """Build an untrained network by name: a core architecture or any torchvision classification model."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch](in_channels, num_classes)
    if arch.startswith("torchvision:"):
        from torchvision import models

        name = arch.removeprefix("torchvision:")
        if name not in models.list_models(module=models):
            raise UnknownMethodError(f"unknown torchvision classification architecture {name!r}")
        return _torchvision(name)(in_channels, num_classes)
    known = ", ".join([*ARCHITECTURES, "torchvision:<name>"])
    raise UnknownMethodError(f"unknown architecture {arch!r}; known: {known}")
