import math

import torch
from torch import nn

from unlearning import ForgetSplit, ImageSet
from unlearning.metrics import avg_gap, mia_efficacy, true_label_confidence, unlearning_report


class _Fixed(nn.Module):
    """Logits = log of the probabilities stored per image in its first pixel row (hand-set outputs)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.log(x[:, 0, 0, :2].clamp_min(1e-6)) + 0 * self.dummy


def _set(probs_class0: list[float], labels: list[int]) -> ImageSet:
    p = torch.tensor(probs_class0)
    x = torch.stack([p, 1 - p], 1).view(-1, 1, 1, 2)
    return ImageSet(x, torch.tensor(labels), tuple(map(str, range(len(labels)))))


def test_true_label_confidence_by_hand():
    data = _set([0.9, 0.2], [0, 0])
    assert torch.allclose(true_label_confidence(_Fixed(), data.x, data.y), torch.tensor([0.9, 0.2]))


def test_report_by_hand():
    forget = _set([0.9, 0.2, 0.3, 0.1], [0, 0, 0, 0])  # 1 of 4 right: UA 75
    retain = _set([0.1, 0.2, 0.8], [1, 1, 1])  # 2 of 3 right
    test = _set([0.9, 0.9, 0.1, 0.9], [0, 0, 1, 1])  # class 0: 2/2, class 1: 1/2
    report = unlearning_report(_Fixed(), ForgetSplit(forget, retain), test, forgotten_classes=[0], mia=False)
    assert report == {"UA": 75.0, "RA": 66.67, "TA": 50.0, "TA_forgotten": 100.0}


def test_mia_calls_low_confidence_forget_samples_non_members():
    # Members (retain) are confident, non-members (test) are not: forget samples that look like test data are
    # called non-members, confident ones members.
    retain = _set([0.99] * 20, [0] * 20)
    test = _set([0.3] * 20, [0] * 20)
    split_low = ForgetSplit(_set([0.3] * 10, [0] * 10), retain)
    split_high = ForgetSplit(_set([0.99] * 10, [0] * 10), retain)
    assert mia_efficacy(_Fixed(), split_low, test) == 1.0
    assert mia_efficacy(_Fixed(), split_high, test) == 0.0
    mixed = ForgetSplit(_set([0.3] * 5 + [0.99] * 5, [0] * 10), retain)
    assert mia_efficacy(_Fixed(), mixed, test) == 0.5


def test_avg_gap_by_hand():
    method, retrain = {"UA": 10, "RA": 90, "TA": 80, "MIA": 20}, {"UA": 14, "RA": 100, "TA": 82, "MIA": 20}
    assert avg_gap(method, retrain) == 4.0
    assert avg_gap({"UA": 10, "RA": None}, {"UA": 12, "RA": 50}) == 2.0
    assert math.isnan(avg_gap({}, {}))
