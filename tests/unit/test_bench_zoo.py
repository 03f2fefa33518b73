"""The benchmark zoo's builders: shapes, value range, determinism, label noise and the models' input contract.
(The benchmark itself is not part of `make test`: `make bench-quality`.)"""

from dataclasses import replace

import pytest
import torch

from bench.zoo import FAMILIES, RECIPES, ZOO, NormalizedClassifier, PixelStandardisedCNN, Synthetic, new_model

SHAPES = {"colour_fields": (3, 16, 16), "colour_gratings": (3, 32, 32), "grey_blobs": (1, 20, 20),
          "fourier_textures": (1, 12, 12)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generated_sets_have_the_contract_shapes_and_are_deterministic(family):
    data = Synthetic(FAMILIES[family](), n_train=40, n_test=30)
    train, test = data.sets(seed=5)
    assert train.x.shape == (40, *SHAPES[family]) and test.x.shape == (30, *SHAPES[family])
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert float(train.x.min()) >= 0.0 and float(train.x.max()) <= 1.0
    assert torch.bincount(test.y, minlength=10).min() >= 2  # balanced: 30 images, 10 classes
    again, _ = data.sets(seed=5)
    other, _ = data.sets(seed=6)
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    assert not torch.equal(train.x, other.x)
    assert len(set(train.ids) | set(test.ids)) == 70


def test_label_noise_flips_exactly_the_stated_share_of_training_labels_only():
    family = FAMILIES["colour_fields"]()
    clean_train, clean_test = Synthetic(family, 500, 50).sets(seed=1)
    noisy_train, noisy_test = Synthetic(family, 500, 50, label_noise=0.04).sets(seed=1)
    assert torch.equal(clean_train.x, noisy_train.x)  # same images: noise is drawn after them
    assert int((clean_train.y != noisy_train.y).sum()) == 20  # 4 % of 500, each moved to another class
    assert torch.equal(clean_test.y, noisy_test.y)


def test_the_zoo_has_the_pairs_the_benchmark_reports():
    assert [r.name for r in ZOO if r.held_out] == ["held-out"]
    tuned = {r.name: r for r in ZOO if not r.held_out}
    assert {"digits", "colour-bn", "resnet18", "inside-norm"} <= set(tuned)
    assert tuned["colour-bn"].data.label_noise == pytest.approx(0.04)
    assert RECIPES["held-out"].arch not in {r.arch for r in tuned.values()}
    assert type(RECIPES["held-out"].data.family) not in {type(getattr(r.data, "family", None)) for r in tuned.values()}


@pytest.mark.parametrize("name", [r.name for r in ZOO])
def test_models_take_raw_images_and_are_seeded(name):
    recipe = RECIPES[name]
    data = recipe.data if not isinstance(recipe.data, Synthetic) else replace(recipe.data, n_train=20, n_test=10)
    train, _ = data.sets(seed=0)
    a, b = recipe.new_model(train, seed=3), recipe.new_model(train, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.eval()(train.x[:2]).shape == (2, 10)


def test_normalisation_lives_inside_the_models():
    train, _ = replace(RECIPES["inside-norm"].data, n_train=20, n_test=10).sets(seed=0)
    inside = new_model("pixel_standardised_cnn", train, seed=0)
    assert not isinstance(inside, NormalizedClassifier) and isinstance(inside, PixelStandardisedCNN)
    assert torch.allclose(inside.mean[0], train.x.mean(0)) and "std" in dict(inside.named_buffers())
    resnet = new_model("resnet18_small", replace(RECIPES["resnet18"].data, n_train=20, n_test=10).sets(0)[0], 0)
    assert isinstance(resnet, NormalizedClassifier)
    assert resnet.net.conv1.kernel_size == (3, 3) and resnet.net.conv1.stride == (1, 1)
    assert isinstance(resnet.net.maxpool, torch.nn.Identity)
