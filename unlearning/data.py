"""Labelled image sets as tensors in [0, 1], and the forget/retain split of a deletion request."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearning.errors import InvalidForgetSetError


@dataclass(frozen=True)
class ImageSet:
    """Images x: (N, C, H, W) float32 in [0, 1]; labels y: (N,) int64; ids: N stable sample ids."""

    x: torch.Tensor
    y: torch.Tensor
    ids: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y) != len(self.ids):
            raise ValueError(f"bad ImageSet shapes x={tuple(self.x.shape)} y={tuple(self.y.shape)}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: torch.Tensor) -> ImageSet:
        """The rows where the boolean mask (N,) is true."""
        index = mask.nonzero().flatten()
        return ImageSet(self.x[index], self.y[index], tuple(self.ids[i] for i in index.tolist()))


@dataclass(frozen=True)
class ForgetSplit:
    forget: ImageSet
    retain: ImageSet


def split_by_classes(train: ImageSet, classes: list[int]) -> ForgetSplit:
    """D_f = every training sample of the given classes, D_r = the rest (class-wise forgetting)."""
    forget_mask = torch.isin(train.y, torch.tensor(classes, dtype=train.y.dtype))
    if not forget_mask.any():
        raise InvalidForgetSetError(f"no training samples of classes {classes}")
    if forget_mask.all():
        raise InvalidForgetSetError("the request would forget every class; nothing would remain")
    return ForgetSplit(train.subset(forget_mask), train.subset(~forget_mask))


def split_by_ids(train: ImageSet, sample_ids: list[str]) -> ForgetSplit:
    """D_f = the training samples with these ids, D_r = the rest (sample-wise forgetting)."""
    wanted = set(sample_ids)
    unknown = wanted.difference(train.ids)
    if unknown:
        raise InvalidForgetSetError(f"unknown sample ids: {sorted(unknown)[:10]}")
    forget_mask = torch.tensor([i in wanted for i in train.ids])
    if forget_mask.all():
        raise InvalidForgetSetError("the request would forget every training sample")
    return ForgetSplit(train.subset(forget_mask), train.subset(~forget_mask))


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """scikit-learn's 8×8 digits (1,797 real images, 10 classes) as (train, test), stratified and seeded.

    Pixels 0..16 are scaled to [0, 1]; images are (1, 8, 8); ids are "train-<row>" / "test-<row>".
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        range(len(y)), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    train_idx, test_idx = torch.tensor(train_idx), torch.tensor(test_idx)
    train = ImageSet(x[train_idx], y[train_idx], tuple(f"train-{i}" for i in range(len(train_idx))))
    test = ImageSet(x[test_idx], y[test_idx], tuple(f"test-{i}" for i in range(len(test_idx))))
    return train, test


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images (N, C, H, W), for the model's normalisation layer."""
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean.tolist(), std.tolist()
