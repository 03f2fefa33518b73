"""The utility guard, the calibration rules and the gated forget vector, on models worked out by hand."""

import copy
import math

import pytest
import torch
from torch import nn

from tests.unit.toys import PixelLogits
from unlearning import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy, perturbed_logits
from unlearning.forget_vector import ForgetVectorConfig, learn_forget_vector
from unlearning.guard import Candidate, GuardConfig, guard_baseline, hold_out_retain, judge, retained_test
from unlearning.guarded import SMOOTHING_LADDER, guarded_forget_vector, guarded_zero_shot
from unlearning.smoothing import SmoothingConfig, SmoothingScale, calibrated_smoothing, lipschitz_smoothing


def _images(labels: list[int], k: int = 3, bright: float = 0.9, dim: float = 0.1) -> ImageSet:
    """One image per label: pixel `label` bright, the others dim, so PixelLogits gets every one right."""
    y = torch.tensor(labels)
    x = torch.full((len(labels), k), dim)
    x[torch.arange(len(labels)), y] = bright
    return ImageSet(x.view(len(labels), 1, 1, k), y, tuple(f"s{i}" for i in range(len(labels))))


def test_gated_delta_changes_only_inputs_assigned_to_the_gated_classes():
    model = PixelLogits()
    x = _images([0, 1, 2]).x
    delta = torch.tensor([[[0.0, -1.0, 0.0]]])  # darkens pixel 1: class-1 inputs lose their class
    universal = perturbed_logits(model, x, delta)
    gated = perturbed_logits(model, x, delta, gate_classes=[1])
    assert torch.equal(gated[[0, 2]], model(x)[[0, 2]])  # not assigned to class 1: untouched
    assert torch.equal(gated[1], universal[1])
    assert gated[1].argmax() != 1
    assert accuracy(model, x, torch.tensor([0, 1, 2]), delta, gate_classes=[1]) == pytest.approx(2 / 3)


def test_hold_out_is_seeded_disjoint_and_leaves_the_forget_set_whole():
    data = _images([0, 1, 2] * 100)
    split = ForgetSplit(data.subset(data.y == 0), data.subset(data.y != 0))
    cfg = GuardConfig(holdout_fraction=0.1, min_holdout=4)
    optimised, held = hold_out_retain(split, cfg)
    again, held_again = hold_out_retain(split, cfg)
    ids = [set(s.ids) for s in (optimised.retain, held.monitor, held.guard)]
    assert len(held.monitor) + len(held.guard) == 20 and len(optimised.retain) == 180
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert optimised.forget is split.forget and held.guard.ids == held_again.guard.ids


def test_judge_refuses_a_candidate_beyond_the_bound_and_one_that_does_not_forget():
    model = PixelLogits()
    retain, forget = _images([0, 2] * 10), _images([1] * 10)
    test = _images([0, 1, 2] * 5)
    ruin = Candidate(model, torch.tensor([[[0.0, 0.0, 1.0]]]))  # everything looks like class 2
    forget_only = Candidate(model, torch.tensor([[[0.0, -1.0, 0.0]]]), gate_classes=[1])
    test_kept = retained_test(test, [1])
    assert len(test_kept) == 10 and 1 not in test_kept.y.tolist()

    refused = judge(Candidate(model), ruin, retain, test_kept, forget, 0.0, GuardConfig())
    assert not refused.passed and refused.baseline == 100.0 and refused.candidate == 50.0
    assert "fell from 100.0 % to 50.0 %" in refused.reason
    assert refused.measured_on == {"heldout_retain": 20, "test_retained": 10}

    passed = judge(Candidate(model), forget_only, retain, test_kept, forget, 0.0, GuardConfig())
    assert passed.passed and passed.candidate == 100.0 and passed.forget_accuracy == 0.0

    kept_memory = judge(Candidate(model), Candidate(model), retain, test_kept, forget, 0.0, GuardConfig())
    assert not kept_memory.passed and "forget-set accuracy is 100.0 %" in kept_memory.reason

    baseline = guard_baseline(Candidate(model), retain, test_kept)  # measured once, for several candidates
    assert baseline == 1.0
    assert judge(Candidate(model), ruin, retain, test_kept, forget, 0.0, GuardConfig(), baseline=baseline) == refused
    lower = judge(Candidate(model), forget_only, retain, test_kept, forget, 0.0, GuardConfig(), baseline=0.5)
    assert lower.baseline == 50.0  # the given baseline is the one judged against


def test_gated_vector_is_optimised_only_on_gated_inputs_and_keeps_the_rest_exactly():
    data = _images([0, 1, 2] * 40, bright=0.6, dim=0.3)
    split = ForgetSplit(data.subset(data.y == 1), data.subset(data.y != 1))
    cfg = ForgetVectorConfig(max_epochs=30, lr=0.2, gate_classes=(1,), monitor_size=20)
    vector = learn_forget_vector(PixelLogits(), split, cfg)
    model = PixelLogits()
    assert accuracy(model, split.forget.x, split.forget.y, vector.delta, gate_classes=[1]) == 0.0
    assert accuracy(model, split.retain.x, split.retain.y, vector.delta, gate_classes=[1]) == 1.0


def test_smoothing_is_calibrated_to_the_input_spread_and_the_weight_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(32, 1, 2, 2)
    scale = SmoothingScale(sigma_per_spread=0.5, step_fraction=0.01)
    base = SmoothingConfig(batch_size=32, n_samples=4)
    wide = calibrated_smoothing(model, x, base, scale)
    narrow = calibrated_smoothing(model, 0.5 + 0.5 * (x - 0.5), base, scale)
    assert wide.sigma == pytest.approx(0.5 * float(x.std()))
    assert narrow.sigma == pytest.approx(wide.sigma / 2, rel=1e-4)
    # One step at the calibrated rate on the calibration batch moves the weights by step_fraction of their norm
    # (up to the noise draws, which differ between the calibration probe and the step).
    norm = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))
    one_step = lipschitz_smoothing(model, x, SmoothingConfig(**{**wide.__dict__, "epochs": 1}))
    moved = math.sqrt(sum(float(((one_step.state_dict[k] - v) ** 2).sum()) for k, v in model.state_dict().items()))
    assert moved / norm == pytest.approx(0.01, rel=0.15)
    # Scaling the weights scales the step with them: the rule has no absolute unit.
    bigger = copy.deepcopy(model)
    with torch.no_grad():
        bigger[3].weight.mul_(4)
    assert calibrated_smoothing(bigger, x, base, scale).lr != pytest.approx(wide.lr)


def test_smoothing_returns_the_last_acceptable_weights_when_utility_falls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(16, 1, 2, 2)
    checks = []

    def acceptable(m):
        checks.append(1)
        return len(checks) < 3  # the first two checks pass, the third fails

    cfg = SmoothingConfig(sigma=0.1, lr=0.5, n_samples=2, batch_size=4, epochs=3, check_every=1)
    result = lipschitz_smoothing(model, x, cfg, acceptable=acceptable)
    assert result.stop_reason == "utility_floor" and result.steps == 3
    # the returned weights are those after step 2, not step 3
    two_steps = lipschitz_smoothing(model, x, cfg, stop=_after(2))
    assert two_steps.steps == 2
    assert all(torch.equal(result.state_dict[k], two_steps.state_dict[k]) for k in result.state_dict)


def _after(n: int):
    seen = []

    def stop(_model):
        seen.append(1)
        return len(seen) >= n

    return stop


def test_a_candidate_that_cannot_pass_is_refused_after_every_attempt_and_says_why():
    data = _images([0, 1, 2] * 40, bright=0.6, dim=0.3)
    split = ForgetSplit(data.subset(data.y == 1), data.subset(data.y != 1))
    impossible = GuardConfig(max_drop=-0.5, min_holdout=8)  # would need the candidate to gain 50 points
    result = guarded_forget_vector(PixelLogits(), split, data, classes=[1], guard=impossible, gate=True)
    assert not result.passed and len(result.attempts) == 2
    assert all(not a["guard"]["passed"] for a in result.attempts)
    assert "fell from" in result.verdict.reason or "above the target" in result.verdict.reason
    record = result.guard_record()
    assert record["passed"] is False and len(record["attempts"]) == 2
    assert record["verdict"] == result.attempts[-1]["guard"] and not record["attempts"][0]["passed"]


def test_zero_shot_that_cannot_forget_is_refused_after_the_cautious_attempt_too():
    # A linear model: smoothing shrinks the weights, which never changes its argmax, so class 1 is never forgotten.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(10 * torch.eye(3))
        model[1].bias.zero_()
    data = _images([0, 1, 2] * 30, bright=0.6, dim=0.3)
    split = ForgetSplit(data.subset(data.y == 1), data.subset(data.y != 1))
    result = guarded_zero_shot(model, split, data, classes=[1], guard=GuardConfig(min_holdout=20))
    assert not result.passed and len(result.attempts) == len(SMOOTHING_LADDER)
    assert [a["setting"]["step_fraction"] for a in result.attempts] == [s.step_fraction for s in SMOOTHING_LADDER]
    assert all(a["guard"]["forget_accuracy"] == 100.0 and a["guard"]["candidate"] == 100.0 for a in result.attempts)
    assert "above the target 10.0 %" in result.verdict.reason
