"""Each loss term of the core against values computed by hand on tiny tensors."""

import math

import torch
from torch import nn

from unlearning.losses import cw_forget_loss, forget_vector_objective, retain_loss, true_class_margin
from unlearning.smoothing import SmoothingConfig, lipschitz_loss, lipschitz_ratio


def test_margin_is_true_logit_minus_best_other():
    logits = torch.tensor([[1.0, 4.0, 2.0], [5.0, 5.0, -1.0], [0.0, -2.0, 3.0]])
    labels = torch.tensor([1, 0, 0])
    # 4 − 2 = 2; 5 − 5 = 0 (a tie counts as no margin); 0 − 3 = −3
    assert true_class_margin(logits, labels).tolist() == [2.0, 0.0, -3.0]


def test_cw_forget_term_clamps_at_minus_tau_and_averages_over_forget_samples():
    logits = torch.tensor([[1.0, 4.0, 2.0], [5.0, 5.0, -1.0], [0.0, -2.0, 3.0]])
    labels = torch.tensor([1, 0, 0])
    # margins 2, 0, −3; τ = 0.5 clamps −3 to −0.5: (2 + 0 − 0.5) / 3
    assert math.isclose(cw_forget_loss(logits, labels, tau=0.5).item(), 1.5 / 3, rel_tol=1e-6)
    assert cw_forget_loss(logits[:0], labels[:0], tau=0.5).item() == 0.0


def test_retain_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2
    assert math.isclose(retain_loss(logits, labels).item(), expected, rel_tol=1e-6)


def test_objective_combines_terms_each_normalised_by_its_own_count():
    # two forget rows (margins 1 and −4 → clamp −1 with τ=1) and one retain row (CE of [0, 0] = log 2)
    logits = torch.tensor([[2.0, 1.0], [0.0, 4.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    is_forget = torch.tensor([True, True, False])
    loss, parts = forget_vector_objective(logits, labels, is_forget, alpha=1.5, beta=0.3, tau=1.0)
    assert math.isclose(parts["retain"], math.log(2.0), rel_tol=1e-6)
    assert math.isclose(parts["forget"], 0.0, abs_tol=1e-7)  # (1 + (−1)) / 2
    assert math.isclose(loss.item(), 1.5 * math.log(2.0) + 0.3 * 0.0, rel_tol=1e-6)


def test_forget_term_weight_does_not_depend_on_the_forget_share():
    one = torch.tensor([[3.0, 1.0]])
    lonely, _ = forget_vector_objective(torch.cat([one, torch.zeros(9, 2)]),
                                        torch.zeros(10, dtype=torch.long),
                                        torch.tensor([True] + [False] * 9), 0.0, 1.0, 5.0)
    crowded, _ = forget_vector_objective(one.repeat(9, 1), torch.zeros(9, dtype=torch.long),
                                         torch.ones(9, dtype=torch.bool), 0.0, 1.0, 5.0)
    assert lonely.item() == crowded.item() == 2.0


def test_lipschitz_ratio_by_hand():
    out = torch.tensor([[1.0, 1.0]])
    out_noisy = torch.tensor([[4.0, 5.0]])  # ‖Δf‖ = 5
    x = torch.zeros(1, 1, 1, 2)
    x_noisy = torch.tensor([[[[0.6, 0.8]]]])  # ‖Δx‖ = 1
    assert math.isclose(lipschitz_ratio(out, out_noisy, x, x_noisy).item(), 5.0, rel_tol=1e-6)


class _Scaled(nn.Module):
    """f(x) = c·flatten(x): every direction has gain c, so the Lipschitz ratio is exactly c."""

    def __init__(self, c: float, n: int):
        super().__init__()
        self.linear = nn.Linear(n, n, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(c * torch.eye(n))

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_lipschitz_loss_of_a_scaled_identity_is_its_gain_and_a_batch_mean():
    model = _Scaled(3.0, 4)
    cfg = SmoothingConfig(sigma=0.3, n_samples=5, clip_noise=False)
    for batch in (1, 7):
        x = torch.rand(batch, 1, 2, 2)
        loss = lipschitz_loss(model, x, cfg, torch.Generator().manual_seed(0))
        # a mean over the batch: the same value whatever the batch size (the official code sums)
        assert math.isclose(loss.item(), 3.0, rel_tol=1e-5)


def test_lipschitz_loss_divides_by_the_clipped_difference():
    model = _Scaled(2.0, 16)
    x = torch.ones(3, 1, 4, 4)  # at the top of the pixel range: most noise is clipped away
    loss = lipschitz_loss(model, x, SmoothingConfig(sigma=0.5, n_samples=4), torch.Generator().manual_seed(1))
    assert math.isclose(loss.item(), 2.0, rel_tol=1e-5)  # ratio measured on what reached the model
