"""Sample-wise forget vectors: the held-out target rule and the stopping rule around it."""

import torch

from tests.unit.toys import PixelLogits
from unlearning import ForgetSplit, ForgetVectorConfig, ImageSet, accuracy, learn_forget_vector
from unlearning.forget_vector import SAMPLE_WISE, _target_gap, random_forget_target, sample_wise_config


def _set(pairs, labels, prefix):
    x = torch.tensor(pairs, dtype=torch.float32).view(-1, 1, 1, 2)
    return ImageSet(x, torch.tensor(labels), tuple(f"{prefix}-{i}" for i in range(len(pairs))))


def _split():
    # forget: class 0 with margins 0.05 … 0.5 in pixel units, so a shift of δ flips those below it
    gaps = [0.05 * (i + 1) for i in range(10)]
    forget = _set([(0.5 + g / 2, 0.5 - g / 2) for g in gaps], [0] * 10, "f")
    retain = _set([(0.95, 0.05)] * 20 + [(0.05, 0.95)] * 20, [0] * 20 + [1] * 20, "r")
    return ForgetSplit(forget, retain)


def test_target_band_by_hand():
    cfg = ForgetVectorConfig(target_forget_accuracy=0.5, target_tolerance=0.1)
    assert _target_gap(0.55, cfg) == 0.0
    assert abs(_target_gap(0.8, cfg) - 0.2) < 1e-9 and abs(_target_gap(0.3, cfg) - 0.1) < 1e-9
    # target 0 (class-wise): anything at or below 0 is inside, there is no lower edge
    assert _target_gap(0.0, ForgetVectorConfig()) == 0.0 and _target_gap(0.25, ForgetVectorConfig()) == 0.25


def test_random_target_is_held_out_accuracy_of_the_original():
    split = _split()
    heldout = _set([(0.9, 0.1), (0.1, 0.9), (0.6, 0.4), (0.4, 0.6)], [0, 1, 1, 1], "t")  # 3 of 4 right
    assert random_forget_target(PixelLogits(), split, heldout) == 0.75
    assert random_forget_target(PixelLogits(), split, None) == 1.0  # no held-out data: the retain accuracy
    cfg = sample_wise_config(PixelLogits(), split, heldout)
    assert cfg.target_forget_accuracy == 0.75 and cfg.lr == SAMPLE_WISE.lr


def test_sample_wise_vector_stops_inside_the_target_band_and_keeps_retain():
    model, split = PixelLogits(), _split()
    # 5 steps an epoch, the rule checked after every one of them
    cfg = ForgetVectorConfig(target_forget_accuracy=0.5, target_tolerance=0.1, lr=0.002, batch_size=8,
                             lam=0.0, max_epochs=60, patience=60, checks_per_epoch=5)
    calls = []
    result = learn_forget_vector(model, split, cfg, progress=lambda f, r: calls.append((f, r)))
    forget_acc = accuracy(model, split.forget.x, split.forget.y, result.delta)
    assert result.stop_reason == "targets_met"
    assert 0.4 <= forget_acc <= 0.6
    assert accuracy(model, split.retain.x, split.retain.y, result.delta) == 1.0
    # the stop happened at the first check inside the band; progress saw every check but the starting one
    assert [r for _, r in calls] == result.history[1:] and result.history[0]["forget_acc"] == 1.0
    assert all(r["forget_acc"] > 0.6 for r in result.history[:-1])
    assert result.history[-1]["epoch"] % 1 != 0  # within an epoch, not at its end
    assert [f for f, _ in calls] == sorted(f for f, _ in calls) and calls[-1][0] <= 1.0
    assert model.scale.item() == 10.0  # frozen


def test_starting_delta_is_kept_when_it_already_meets_the_target():
    cfg = ForgetVectorConfig(target_forget_accuracy=0.95, target_tolerance=0.1)
    result = learn_forget_vector(PixelLogits(), _split(), cfg)
    assert result.stop_reason == "targets_met" and result.epochs == 0 and result.delta.abs().sum() == 0


def test_starting_delta_stays_the_answer_when_optimisation_only_moves_away():
    # band [0.94, 0.96]: the start (1.0) is closest; big steps jump straight past the band to 0
    cfg = ForgetVectorConfig(target_forget_accuracy=0.95, target_tolerance=0.01, lr=1.0, batch_size=8,
                             lam=0.0, max_epochs=3, patience=1)
    result = learn_forget_vector(PixelLogits(), _split(), cfg)
    assert result.epochs == 0 and result.history[-1]["delta_l2"] > 0  # δ did move...
    assert result.delta.abs().sum() == 0  # ...but the δ returned is the untouched start
