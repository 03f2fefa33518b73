"""The benchmark zoo: model/data pairs that differ the way real users' models differ.

Each pair is a frozen `Recipe`: a data recipe (scikit-learn digits, or a class-conditional image generator
with overlap, noise and optional label noise), an architecture and a training config. `recipe.build(seed)`
gives (trained model, train ImageSet, test ImageSet), the same for the same seed. All images are raw
[0, 1] tensors (N, C, H, W); every model takes raw input and normalises inside itself.

The generated families are deliberately hard for their small training sets (class prototypes that overlap,
nuisance variation, pixel noise), and models are trained to ≈ 100 % training accuracy, so a model
retrained without a random 10 % of the training set gets a real share of it wrong (Retrain UA well above 0),
as on natural data. No downloads: numpy and torch only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unlearning.data import ImageSet, channel_stats, load_digits_split
from unlearning.models import NormalizedClassifier, build_model
from unlearning.training import TrainConfig, train_classifier

NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------------------------
# Image families. Each draws its class prototypes from `rng` first, then one image per label.
# ---------------------------------------------------------------------------------------------------------


def _smooth_fields(rng: np.random.Generator, n: int, channels: int, coarse: int, size: int) -> np.ndarray:
    """n random fields, uniform on a coarse×coarse grid, bilinearly upsampled: (n, channels, size, size)."""
    grid = torch.from_numpy(rng.uniform(0.0, 1.0, (n, channels, coarse, coarse)).astype(np.float32))
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True).numpy()


def _mixing_weights(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Weight of an image's own class prototype, uniform in [low, high): (n, 1, 1, 1)."""
    return rng.uniform(low, high, (n, 1, 1, 1)).astype(np.float32)


def _other_labels(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """A uniformly drawn label different from each y."""
    return (y + rng.integers(1, NUM_CLASSES, len(y))) % NUM_CLASSES


@dataclass(frozen=True)
class ColourFields:
    """Colour images whose class is a smooth colour layout (a 4×4 random colour grid, upsampled), mixed with
    another class's layout, shifted by a few pixels, over a random smooth background, plus pixel noise."""

    size: int = 16
    own_weight: tuple[float, float] = (0.45, 0.8)
    background: float = 0.35
    noise: float = 0.1
    max_shift: int = 2
    channels: int = 3

    def images(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        protos = _smooth_fields(rng, NUM_CLASSES, self.channels, 4, self.size)  # (K, C, S, S)
        n = len(y)
        w = _mixing_weights(rng, n, *self.own_weight)
        x = w * protos[y] + (1 - w) * protos[_other_labels(rng, y)]  # (n, C, S, S)
        x = (1 - self.background) * x + self.background * _smooth_fields(rng, n, self.channels, 3, self.size)
        shifts = rng.integers(-self.max_shift, self.max_shift + 1, (n, 2))
        x = np.stack([np.roll(img, tuple(s), axis=(1, 2)) for img, s in zip(x, shifts, strict=True)])
        return x + self.noise * rng.standard_normal(x.shape).astype(np.float32)


@dataclass(frozen=True)
class ColourGratings:
    """Colour sinusoidal gratings: a class is an orientation (10 steps over 180°) and a colour pair; each image
    jitters the orientation by up to ± `jitter` degrees (into the neighbouring classes), draws frequency and
    phase at random, blends in another class's colours, and adds smooth clutter and pixel noise."""

    size: int = 32
    jitter: float = 8.0
    colour_weight: tuple[float, float] = (0.5, 0.9)
    clutter: float = 0.2
    noise: float = 0.08

    def images(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        colours = rng.uniform(0.1, 0.9, (NUM_CLASSES, 2, 3, 1, 1)).astype(np.float32)  # (K, 2 ends, RGB)
        n = len(y)
        angle = np.deg2rad(18.0 * y + rng.uniform(-self.jitter, self.jitter, n))  # (n,)
        freq = rng.uniform(1.5, 3.5, n) * 2 * math.pi / self.size  # radians per pixel
        phase = rng.uniform(0, 2 * math.pi, n)
        r = np.arange(self.size, dtype=np.float32)
        u = np.cos(angle)[:, None, None] * r[None, None, :] + np.sin(angle)[:, None, None] * r[None, :, None]
        wave = 0.5 + 0.5 * np.sin(freq[:, None, None] * u + phase[:, None, None])  # (n, S, S) in [0, 1]
        w = _mixing_weights(rng, n, *self.colour_weight)
        ends = w[..., None] * colours[y] + (1 - w[..., None]) * colours[_other_labels(rng, y)]  # (n, 2, 3, 1, 1)
        x = ends[:, 0] * wave[:, None] + ends[:, 1] * (1 - wave[:, None])  # (n, 3, S, S)
        x = (1 - self.clutter) * x + self.clutter * _smooth_fields(rng, n, 3, 4, self.size)
        return x + self.noise * rng.standard_normal(x.shape).astype(np.float32)


@dataclass(frozen=True)
class GreyBlobs:
    """Grey-level images of three Gaussian blobs: a class fixes the blobs' mean positions; each image moves
    every blob by ± `jitter` pixels, draws its brightness and width, and adds a gradient background and
    pixel noise. Classes share blob positions by chance, so some overlap."""

    size: int = 20
    blobs: int = 3
    jitter: float = 1.5
    noise: float = 0.12

    def images(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        centres = rng.uniform(3, self.size - 3, (NUM_CLASSES, self.blobs, 2))  # (K, B, 2) pixel coordinates
        n = len(y)
        where = centres[y] + rng.normal(0, self.jitter, (n, self.blobs, 2))  # (n, B, 2)
        width = rng.uniform(1.5, 3.0, (n, self.blobs, 1, 1))
        height = rng.uniform(0.4, 1.0, (n, self.blobs, 1, 1))
        r = np.arange(self.size, dtype=np.float32)
        dist2 = (r[None, None, None, :] - where[..., 0, None, None]) ** 2 + \
                (r[None, None, :, None] - where[..., 1, None, None]) ** 2  # (n, B, S, S)
        x = (height * np.exp(-dist2 / (2 * width**2))).sum(1, keepdims=True)  # (n, 1, S, S)
        tilt = rng.uniform(-0.2, 0.2, (n, 2, 1, 1))
        background = (0.2 + tilt[:, :1] * r[None, None, :, None] / self.size
                      + tilt[:, 1:] * r[None, None, None, :] / self.size)
        x = x + background
        return (x + self.noise * rng.standard_normal(x.shape)).astype(np.float32)


@dataclass(frozen=True)
class FourierTextures:
    """Grey-level textures: a class is a pair of 2-D Fourier modes (random per class); each image draws random
    phases and amplitudes for its class's modes, blends in one mode of another class, and adds noise."""

    size: int = 12
    own_weight: tuple[float, float] = (0.5, 0.8)
    noise: float = 0.15

    def images(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        modes = rng.integers(-3, 4, (NUM_CLASSES, 2, 2))  # (K, 2 modes, (kx, ky))
        n = len(y)
        r = np.arange(self.size, dtype=np.float32) * 2 * math.pi / self.size

        def mode(k: np.ndarray) -> np.ndarray:  # k: (n, 2) -> (n, S, S) cosine with a random phase
            phase = rng.uniform(0, 2 * math.pi, (n, 1, 1))
            return np.cos(k[:, 0, None, None] * r[None, None, :] + k[:, 1, None, None] * r[None, :, None] + phase)

        own = sum(rng.uniform(0.5, 1.0, (n, 1, 1)) * mode(modes[y, i]) for i in (0, 1))
        w = rng.uniform(*self.own_weight, (n, 1, 1))
        x = 0.5 + 0.25 * (w * own + (1 - w) * mode(modes[_other_labels(rng, y), rng.integers(0, 2, n)]))
        return (x[:, None] + self.noise * rng.standard_normal((n, 1, self.size, self.size))).astype(np.float32)


FAMILIES = {"colour_fields": ColourFields, "colour_gratings": ColourGratings, "grey_blobs": GreyBlobs,
            "fourier_textures": FourierTextures}


@dataclass(frozen=True)
class Synthetic:
    """A generated data set: `n_train` and `n_test` balanced images of a family, a share `label_noise` of the
    training labels replaced by another class (test labels stay clean). Ids: "train-i" / "test-i"."""

    family: ColourFields | ColourGratings | GreyBlobs | FourierTextures
    n_train: int
    n_test: int
    label_noise: float = 0.0

    def sets(self, seed: int) -> tuple[ImageSet, ImageSet]:
        rng = np.random.default_rng(seed)
        y = np.concatenate([rng.permutation(np.arange(n) % NUM_CLASSES)  # each split balanced, shuffled
                            for n in (self.n_train, self.n_test)])
        x = np.clip(self.family.images(y, rng), 0.0, 1.0).astype(np.float32)  # (n, C, H, W)
        y_train = y[: self.n_train].copy()
        flip = rng.permutation(self.n_train)[: round(self.label_noise * self.n_train)]
        y_train[flip] = _other_labels(rng, y_train[flip])
        train = ImageSet(torch.from_numpy(x[: self.n_train]), torch.from_numpy(y_train).long(),
                         tuple(f"train-{i}" for i in range(self.n_train)))
        test = ImageSet(torch.from_numpy(x[self.n_train :]), torch.from_numpy(y[self.n_train :]).long(),
                        tuple(f"test-{i}" for i in range(self.n_test)))
        return train, test


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8×8 digits, the fixed stratified 80/20 split (the same for every seed)."""

    test_fraction: float = 0.2

    def sets(self, seed: int) -> tuple[ImageSet, ImageSet]:
        return load_digits_split(self.test_fraction, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Architectures beyond `unlearning.models`.
# ---------------------------------------------------------------------------------------------------------


class BNDropoutCNN(nn.Module):
    """Three conv–BatchNorm–ReLU blocks (two max-pools) and a dropout head. x: (B, C, 16, 16) -> (B, K)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()
        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),  # (B, 2w, 4, 4)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width * 16, 128), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PixelStandardisedCNN(nn.Module):
    """A user's model with its normalisation built in: a per-pixel mean image and one std as buffers,
    then two conv–GroupNorm blocks and a linear head on a 4×4 grid (blob positions matter).
    Not a `NormalizedClassifier`. x: (B, C, H, W) raw [0, 1] -> (B, K)."""

    def __init__(self, mean_image: torch.Tensor, std: float, num_classes: int, width: int = 24):
        super().__init__()
        self.register_buffer("mean", mean_image.clone().unsqueeze(0))  # (1, C, H, W)
        self.register_buffer("std", torch.tensor(std))
        c = mean_image.shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=2), nn.GroupNorm(4, width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(4, 2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(2 * width * 16, num_classes),  # (B, 2w·16) -> (B, K)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


class MLP(nn.Module):
    """Flatten and two hidden ReLU layers. x: (B, C, H, W) -> (B, K)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


CHANNELS_LAST = ("bn_dropout_cnn", "pixel_standardised_cnn", "resnet18_small")
"""Architectures whose weights are stored channels-last: the same model, computed faster on a CPU (max-pooling a
contiguous NCHW tensor is about as slow as the convolution before it; channels-last convolutions ~25 % faster on
ResNet-18)."""


def new_model(arch: str, train: ImageSet, seed: int) -> nn.Module:
    """An untrained model of `arch` for data shaped like `train`, its weights drawn from `seed`; normalisation
    statistics come from the training images and sit inside the model."""
    torch.manual_seed(seed)
    c, h, w = train.x.shape[1:]
    mean, std = channel_stats(train.x)
    if arch == "mlp":
        return NormalizedClassifier(MLP(c * h * w, NUM_CLASSES), mean, std)
    if arch == "bn_dropout_cnn":
        model: nn.Module = NormalizedClassifier(BNDropoutCNN(c, NUM_CLASSES), mean, std)
    elif arch == "pixel_standardised_cnn":
        model = PixelStandardisedCNN(train.x.mean(0), float(train.x.std()), NUM_CLASSES)
    else:
        model = NormalizedClassifier(build_model(arch, c, NUM_CLASSES), mean, std)
    if arch in CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


# ---------------------------------------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    name: str
    data: Digits | Synthetic
    arch: str
    train: TrainConfig
    held_out: bool = False
    """True: reported apart and never used to choose any method's settings."""
    description: str = ""
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    def sets(self, seed: int) -> tuple[ImageSet, ImageSet]:
        return self.data.sets(seed)

    def new_model(self, train: ImageSet, seed: int) -> nn.Module:
        return new_model(self.arch, train, seed)

    def fit(self, model: nn.Module, data: ImageSet, seed: int) -> nn.Module:
        """Train `model` on `data` with this recipe's config, seeded (also what Retrain does on D_r)."""
        cfg = replace(self.train, seed=seed)
        return train_classifier(model, data, cfg)

    def build(self, seed: int) -> tuple[nn.Module, ImageSet, ImageSet]:
        """(trained model in eval mode, train, test), deterministic in `seed`."""
        train, test = self.sets(seed)
        return self.fit(self.new_model(train, seed), train, seed), train, test


ZOO: tuple[Recipe, ...] = (
    Recipe("digits", Digits(), "small_cnn", TrainConfig(epochs=15),
           description="scikit-learn digits 1×8×8 (1,437 train / 360 test), the service's small CNN"),
    Recipe("colour-bn", Synthetic(ColourFields(), 500, 500, label_noise=0.04), "bn_dropout_cnn",
           TrainConfig(epochs=40, batch_size=32, lr=0.05),
           description="colour fields 3×16×16, 4 % label noise (500 / 500), CNN with BatchNorm and dropout"),
    Recipe("resnet18", Synthetic(ColourGratings(), 60, 100), "resnet18_small",
           TrainConfig(epochs=10, batch_size=10, lr=0.002, optimizer="adamw"),
           description="colour gratings 3×32×32 (60 / 100), torchvision ResNet-18 small-input variant, AdamW"),
    Recipe("inside-norm", Synthetic(GreyBlobs(), 400, 400), "pixel_standardised_cnn",
           TrainConfig(epochs=40, batch_size=32, lr=0.05),
           description="grey blobs 1×20×20 (400 / 400), CNN with a per-pixel mean image and std as buffers"),
    Recipe("held-out", Synthetic(FourierTextures(), 400, 400), "mlp",
           TrainConfig(epochs=60, batch_size=32, lr=0.02), held_out=True,
           description="Fourier textures 1×12×12 (400 / 400), MLP 144–256–256–10; never tuned on"),
)
"""The zoo, cheapest first within the tuned pairs; the held-out pair last."""

RECIPES = {recipe.name: recipe for recipe in ZOO}
