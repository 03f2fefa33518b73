"""MIA-efficacy, Avg. Gap and the report on hand-built models and data."""

import math

import torch

from tests.unit.toys import PixelLogits
from unlearning.data import ForgetSplit, ImageSet
from unlearning.metrics import (
    avg_gap,
    best_threshold,
    mia_efficacy,
    mia_figures,
    report_from_logits,
    svc_efficacy,
    threshold_efficacy,
    true_label_confidence,
    unlearning_report,
)


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
    logits = [model(data.x).detach() for data in (forget, retain, test)]
    assert report_from_logits(ForgetSplit(forget, retain), test, *logits, [0]) == by_class


def test_avg_gap_by_hand():
    retrain = {"UA": 100.0, "RA": 99.0, "TA": 97.0, "MIA": 100.0}
    method = {"UA": 98.0, "RA": 95.0, "TA": 98.0, "MIA": 90.0, "TA_forgotten": 3.0}
    assert avg_gap(method, retrain) == (2 + 4 + 1 + 10) / 4
    assert avg_gap({**method, "MIA": None}, retrain) == round((2 + 4 + 1) / 3, 2)
    assert math.isnan(avg_gap({}, retrain))


# --- §5: attacks that do not hang on one shadow seed --------------------------------------------------------

def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_best_threshold_by_hand():
    # t = 0.8 keeps both members (>= t) and both non-members below it: balanced accuracy 1
    assert best_threshold(_t([0.9, 0.8]), _t([0.1, 0.2])) == 0.8
    # 0.6, 0.7 and 0.9 all score 0.75: ties go to the smallest
    assert best_threshold(_t([0.6, 0.9]), _t([0.3, 0.7])) == 0.6


def test_threshold_attack_uses_each_class_threshold_and_pools_for_the_rest():
    member, member_y = _t([0.9, 0.9, 0.6, 0.6]), torch.tensor([0, 0, 1, 1])
    non_member, non_member_y = _t([0.5, 0.5, 0.2, 0.2]), torch.tensor([0, 0, 1, 1])
    # class 0's threshold is 0.9, class 1's 0.6, pooled 0.6 (members 0.6 and up, non-members 0.5 and below)
    target, target_y = _t([0.7, 0.7]), torch.tensor([0, 1])
    assert threshold_efficacy(member, member_y, non_member, non_member_y, target, target_y) == 0.5
    # a class with no shadow samples (a forgotten class) falls back to the pooled threshold 0.6
    assert threshold_efficacy(member, member_y, non_member, non_member_y, _t([0.55, 0.65]), torch.tensor([2, 2])) == 0.5


def test_svc_attack_both_gammas_on_separated_confidences():
    member, non_member = _t([0.99] * 20), _t([0.3] * 20)
    for gamma in ("auto", "scale"):
        assert svc_efficacy(member, non_member, _t([0.3] * 4), gamma=gamma) == 1.0
        assert svc_efficacy(member, non_member, _t([0.99] * 4 + [0.3] * 4), gamma=gamma) == 0.5


def test_mia_figures_spread_over_shadow_seeds():
    # 30 members and 10 non-members: each shadow seed draws a different 10 members
    member = _t([0.95 + 0.001 * i for i in range(20)] + [0.4 + 0.01 * i for i in range(10)])
    non_member = _t([0.35 + 0.02 * i for i in range(10)])
    forget = _t([0.42, 0.5, 0.97, 0.99])
    labels = lambda t: torch.zeros(len(t), dtype=torch.long)  # noqa: E731
    figures = mia_figures((member, labels(member)), (non_member, labels(non_member)), (forget, labels(forget)),
                          shadow_seeds=(0, 1, 2, 3))
    per_seed = [100 * svc_efficacy(member, non_member, forget, seed) for seed in (0, 1, 2, 3)]
    assert figures["MIA"] == round(per_seed[0], 2)
    assert figures["MIA_min"] == round(min(per_seed), 2)
    assert figures["MIA_mean"] == round(sum(per_seed) / 4, 2)
    assert figures["MIA_min"] <= figures["MIA_mean"]
    thr = 100 * threshold_efficacy(member, labels(member), non_member, labels(non_member), forget, labels(forget))
    assert figures["MIA_thr"] == round(thr, 2)


def test_report_carries_every_attack():
    retain, test = _images(SURE, 0, "r"), _images(UNSURE, 0, "t")
    report = unlearning_report(PixelLogits(), ForgetSplit(_images(UNSURE[:3], 0, "f"), retain), test)
    assert {"MIA", "MIA_min", "MIA_mean", "MIA_scale", "MIA_thr"} <= set(report)
    assert report["MIA"] == 100 * mia_efficacy(PixelLogits(), ForgetSplit(_images(UNSURE[:3], 0, "f"), retain), test)


def _three_pixel(rows: list[tuple[float, float, float]], label: int, prefix: str) -> ImageSet:
    x = torch.tensor(rows, dtype=torch.float32).view(-1, 1, 1, 3)
    return ImageSet(x, torch.full((len(rows),), label), tuple(f"{prefix}-{i}" for i in range(len(rows))))


def test_gated_delta_spares_inputs_outside_the_forgotten_class():
    # δ moves brightness from pixel 0 to pixel 1: class-0 images become class 1 (forgotten), but a class-2 image
    # whose pixel 1 is nearly as bright as pixel 2 also turns into class 1 when δ reaches it.
    forget = _three_pixel([(1.0, 0.0, 0.0)], 0, "f")
    retain = _cat(_three_pixel([(0.0, 0.4, 0.5)], 2, "r"), _three_pixel([(0.0, 0.9, 0.1)], 1, "s"))
    test = _cat(_three_pixel([(0.0, 0.4, 0.5)], 2, "t"), _three_pixel([(0.9, 0.0, 0.1)], 0, "u"))
    split, delta = ForgetSplit(forget, retain), torch.tensor([[[-1.0, 1.0, 0.0]]])
    universal = unlearning_report(PixelLogits(), split, test, [0], delta=delta, mia=False)
    gated = unlearning_report(PixelLogits(), split, test, [0], delta=delta, mia=False, gate_classes=[0])
    assert universal == {"UA": 100.0, "RA": 50.0, "TA": 0.0, "TA_forgotten": 0.0}
    assert gated == {"UA": 100.0, "RA": 100.0, "TA": 100.0, "TA_forgotten": 0.0}
    assert true_label_confidence(PixelLogits(), retain.x, retain.y, delta, gate_classes=[0])[0] > 0.5
    assert true_label_confidence(PixelLogits(), retain.x, retain.y, delta)[0] < 0.5


def test_the_svc_attack_trains_on_at_most_max_shadow_of_each_side(monkeypatch):
    import sklearn.svm

    fitted = []

    class RecordingSVC(sklearn.svm.SVC):
        def fit(self, X, y, sample_weight=None):
            fitted.append((len(X), sum(y)))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(sklearn.svm, "SVC", RecordingSVC)
    member, non_member = torch.full((500,), 0.99), torch.linspace(0.1, 0.5, 300)
    assert svc_efficacy(member, non_member, _t([0.2, 0.3]), max_shadow=100) == 1.0
    assert svc_efficacy(member, non_member, _t([0.2, 0.3]), max_shadow=1_000) == 1.0
    assert fitted == [(200, 100), (600, 300)]  # capped, then the smaller side decides
