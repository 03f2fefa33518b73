import math

import torch
from torch import nn

from tests.unit.toys import PixelLogits
from unlearning import ForgetSplit, ImageSet, accuracy
from unlearning.arithmetic import CoefficientConfig, learn_coefficients
from unlearning.forget_vector import random_forget_target
from unlearning.smoothing import SmoothingConfig, accuracy_at_most, lipschitz_loss, lipschitz_smoothing


class _Linear(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_lipschitz_loss_of_a_linear_map_is_its_directional_gain():
    # f(x) = W x with W = 3·I: ‖f(x) − f(x+ξ)‖ / ‖ξ‖ = 3 for every ξ (no clipping in the middle of [0, 1]).
    model = _Linear([[3.0, 0.0], [0.0, 3.0]])
    x = torch.full((4, 1, 1, 2), 0.5)
    loss = lipschitz_loss(model, x, SmoothingConfig(sigma=0.01, n_samples=5),
                          torch.Generator().manual_seed(0))
    assert math.isclose(loss.item(), 3.0, rel_tol=1e-4)


def test_smoothing_changes_a_copy_and_leaves_the_model_alone():
    model = _Linear([[2.0, -1.0], [0.5, 1.0]])
    before = model.fc.weight.detach().clone()
    x = torch.rand(16, 1, 1, 2, generator=torch.Generator().manual_seed(1))
    result = lipschitz_smoothing(model, x, SmoothingConfig(lr=0.05, epochs=2, batch_size=8, n_samples=4))
    assert torch.equal(model.fc.weight, before)
    assert result.steps == 4 and not torch.equal(result.state_dict["fc.weight"], before)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4] and all(h["loss"] > 0 for h in result.history)


def test_smoothing_stops_when_the_rule_says_so():
    model = _Linear([[1.0, 0.0], [0.0, 1.0]])
    x = torch.rand(32, 1, 1, 2)
    calls = []
    result = lipschitz_smoothing(model, x, SmoothingConfig(epochs=5, batch_size=8, check_every=1),
                                 stop=lambda m: calls.append(1) or len(calls) == 3)
    assert result.steps == 3 and result.stop_reason == "target_met"


def test_accuracy_at_most():
    model = _Linear([[1.0, 0.0], [0.0, 1.0]])  # predicts the brighter pixel
    x = torch.tensor([[[[0.9, 0.1]]], [[[0.2, 0.8]]]])
    assert accuracy_at_most(x, torch.tensor([0, 0]), 0.5)(model)
    assert not accuracy_at_most(x, torch.tensor([0, 1]), 0.5)(model)


def test_random_forget_target_is_held_out_accuracy():
    model = _Linear([[1.0, 0.0], [0.0, 1.0]])
    held_out = ImageSet(torch.tensor([[[[0.9, 0.1]]], [[[0.2, 0.8]]], [[[0.7, 0.3]]], [[[0.6, 0.4]]]]),
                        torch.tensor([0, 1, 1, 1]), ("a", "b", "c", "d"))
    split = ForgetSplit(held_out, held_out)
    assert random_forget_target(model, split, held_out) == 0.5


def test_coefficients_combine_bank_vectors_to_forget_both_classes():
    # Three classes, logit_k = 10·pixel_k; a class vector pushes its pixel down.

    g = torch.Generator().manual_seed(0)
    n = 300
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.rand(n, 3, generator=g)
    x[torch.arange(n), y] = 0.6 + 0.3 * torch.rand(n, generator=g)
    data = ImageSet(x.view(n, 1, 1, 3), y, tuple(map(str, range(n))))
    forget = torch.isin(y, torch.tensor([0, 1]))
    split = ForgetSplit(data.subset(forget), data.subset(~forget))
    bank = {0: torch.tensor([[[-0.5, 0.0, 0.0]]]), 1: torch.tensor([[[0.0, -0.5, 0.0]]])}
    cfg = CoefficientConfig(max_epochs=40, max_retain_drop=0.05)
    result = learn_coefficients(PixelLogits().eval(), split, bank, cfg)
    model = PixelLogits().eval()
    assert accuracy(model, split.forget.x, split.forget.y, result.delta) <= 0.02
    assert accuracy(model, split.retain.x, split.retain.y, result.delta) >= 0.95
    rebuilt = result.weights[0] * bank[0] + result.weights[1] * bank[1]
    assert torch.allclose(rebuilt, result.delta, atol=1e-4) and set(result.weights) == {0, 1}
