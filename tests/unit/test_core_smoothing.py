"""JiT smoothing: works on a copy, eval mode, progress and stopping."""

import torch
from torch import nn

from unlearning.smoothing import SmoothingConfig, accuracy_at_most, lipschitz_smoothing


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(8, 3))


def test_smoothing_changes_a_copy_and_leaves_the_model_untouched():
    model = _net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(10, 1, 2, 2)
    cfg = SmoothingConfig(sigma=0.1, lr=0.5, n_samples=3, batch_size=4, epochs=2)
    result = lipschitz_smoothing(model, x, cfg)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training  # the caller's mode is not changed either
    assert result.steps == 6 and len(result.history) == 6 and result.stop_reason == "max_epochs"
    changed = [k for k in before if not torch.equal(before[k], result.state_dict[k])]
    assert "1.weight" in changed and "5.weight" in changed
    # eval mode: BatchNorm running statistics are not updated from the noisy forget batches
    assert torch.equal(result.state_dict["2.running_mean"], before["2.running_mean"])
    assert result.config["sigma"] == 0.1


def test_smoothing_is_deterministic_for_a_seed():
    x = torch.rand(6, 1, 2, 2)
    cfg = SmoothingConfig(sigma=0.1, lr=0.5, n_samples=2, batch_size=3, epochs=1, seed=4)
    a, b = lipschitz_smoothing(_net(), x, cfg), lipschitz_smoothing(_net(), x, cfg)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_progress_gets_fraction_and_record_and_stop_ends_early():
    calls = []
    result = lipschitz_smoothing(
        _net(), torch.rand(8, 1, 2, 2), SmoothingConfig(n_samples=2, batch_size=2, epochs=5, check_every=1),
        progress=lambda fraction, record: calls.append((fraction, record)),
        stop=lambda model: len(calls) >= 3)
    assert result.steps == 3 and result.stop_reason == "target_met"
    assert [round(f, 3) for f, _ in calls] == [0.05, 0.1, 0.15]
    assert {"step", "epoch", "loss"} <= set(calls[0][1])


def test_accuracy_at_most_checks_a_capped_subsample():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[1.0, 0.0]]).repeat(len(x), 1) + self.w  # always class 0

    x = torch.rand(10, 1, 1, 1)
    y = torch.tensor([0] * 3 + [1] * 7)  # accuracy 0.3
    assert accuracy_at_most(x, y, 0.31, max_samples=None)(Constant())
    assert not accuracy_at_most(x, y, 0.29, max_samples=None)(Constant())
    rule = accuracy_at_most(torch.rand(5000, 1, 1, 1), torch.zeros(5000, dtype=torch.long), 0.5,
                            max_samples=64)
    assert not rule(Constant())
