"""MIA-efficacy, Avg. Gap and the report on hand-built models and data."""

import math

import torch

from unlearning.data import ForgetSplit, ImageSet
from unlearning.metrics import avg_gap, mia_efficacy, true_label_confidence, unlearning_report
from tests.unit.toys import PixelLogits




def _images(rows: list[tuple[float, float]], label: int, prefix: str) -> ImageSet:
    x = torch.tensor(rows, dtype=torch.float32).view(-1, 1, 1, 2)
    return ImageSet(x, torch.full((len(rows),), label), tuple(f"{prefix}-{i}" for i in range(len(rows))))


def _cat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]), a.ids + b.ids)


SURE = [(1.0, 0.0 + 0.01 * i) for i in range(20)]  # confidence ≈ 1: what a member looks like
UNSURE = [(0.5, 0.45 - 0.01 * i) for i in range(6)]  # confidence ≈ 0.6–0.8: what unseen data looks like


def test_true_label_confidence_by_hand():
    data = _images([(0.1, 0.0), (0.0, 0.0)], 0, "a")
    conf = true_label_confidence(PixelLogits(), data.x, data.y)
    assert torch.allclose(conf, torch.tensor([1 / (1 + math.exp(-1.0)), 0.5]))


def test_mia_counts_forget_samples_that_look_unseen():
    retain, test = _images(SURE, 0, "r"), _images(UNSURE, 0, "t")
    # forget: 3 member-like and 1 unseen-like sample → 1 of 4 predicted non-member
    forget = _cat(_images(SURE[:3], 0, "f"), _images(UNSURE[:1], 0, "g"))
    assert mia_efficacy(PixelLogits(), ForgetSplit(forget, retain), test) == 0.25
    # all unseen-like → 100 %, all member-like → 0 %
    assert mia_efficacy(PixelLogits(), ForgetSplit(_images(UNSURE[2:5], 0, "f"), retain), test) == 1.0
    assert mia_efficacy(PixelLogits(), ForgetSplit(_images(SURE[5:9], 0, "f"), retain), test) == 0.0


def test_mia_is_seeded_and_uses_a_delta():
    retain, test = _images(SURE, 0, "r"), _images(UNSURE, 0, "t")
    split = ForgetSplit(_images(SURE[:4], 0, "f"), retain)
    assert mia_efficacy(PixelLogits(), split, test, seed=3) == mia_efficacy(PixelLogits(), split, test, seed=3)
    # a δ that pulls pixel 0 down makes every sample unsure, members included: the attack sees no difference
    delta = torch.tensor([[[-0.5, 0.0]]])
    assert 0.0 <= mia_efficacy(PixelLogits(), split, test, delta=delta) <= 1.0


def test_report_keys_and_values_by_hand():
    model = PixelLogits()
    forget = _images([(0.0, 1.0), (1.0, 0.0)], 0, "f")  # one wrong, one right → UA 50
    retain = _cat(_images(SURE[:4], 0, "r"), _images([(0.0, 1.0)] * 4, 1, "s"))
    test = _cat(_images([(1.0, 0.0), (0.0, 1.0)], 0, "t"), _images([(0.0, 1.0)] * 2, 1, "u"))
    report = unlearning_report(model, ForgetSplit(forget, retain), test, mia=False)
    assert report == {"UA": 50.0, "RA": 100.0, "TA": 75.0}
    by_class = unlearning_report(model, ForgetSplit(forget, retain), test, forgotten_classes=[0])
    assert by_class["TA"] == 100.0 and by_class["TA_forgotten"] == 50.0 and "MIA" in by_class


def test_avg_gap_by_hand():
    retrain = {"UA": 100.0, "RA": 99.0, "TA": 97.0, "MIA": 100.0}
    method = {"UA": 98.0, "RA": 95.0, "TA": 98.0, "MIA": 90.0, "TA_forgotten": 3.0}
    assert avg_gap(method, retrain) == (2 + 4 + 1 + 10) / 4
    assert avg_gap({**method, "MIA": None}, retrain) == round((2 + 4 + 1) / 3, 2)
    assert math.isnan(avg_gap({}, retrain))
