"""The zoo-compared options of the core: KL retain term, confidence matching for random forgetting, arithmetic
from w = 0 over every bank vector, and JiT bounded to its most salient weights."""

import math

import pytest
import torch
from torch import nn

from tests.unit.toys import PixelLogits
from unlearning import ForgetSplit, ImageSet, accuracy
from unlearning.arithmetic import OFFICIAL, learn_coefficients
from unlearning.forget_vector import ForgetVectorConfig, learn_forget_vector
from unlearning.losses import (
    confidence_match_loss,
    forget_vector_objective,
    retain_kl_loss,
    true_class_log_odds,
)
from unlearning.smoothing import SmoothingConfig, lipschitz_smoothing, salient_masks


def _data(n: int, seed: int, k: int = 3, low: float = 0.6) -> ImageSet:
    """n images of k pixels: the label's pixel bright (low … low + 0.3), the others dim (0 … 0.3)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = 0.3 * torch.rand(n, k, generator=g)
    x[torch.arange(n), y] = low + 0.3 * torch.rand(n, generator=g)
    return ImageSet(x.view(n, 1, 1, k), y, tuple(f"{seed}-{i}" for i in range(n)))


def test_kl_retain_term_is_zero_at_the_reference_and_positive_elsewhere():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    reference = torch.softmax(logits, 1)
    assert retain_kl_loss(logits, reference).item() == pytest.approx(0.0, abs=1e-7)
    assert retain_kl_loss(torch.zeros(2, 3), reference).item() > 0.1
    loss, parts = forget_vector_objective(logits, torch.tensor([0, 1]), torch.tensor([False, False]), 1.0, 1.0, 1.0,
                                          reference=reference)
    assert parts["retain"] == pytest.approx(0.0, abs=1e-7) and loss.item() == pytest.approx(0.0, abs=1e-7)


def test_log_odds_and_confidence_matching_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p_0 = 3/4: log-odds log 3
    assert true_class_log_odds(logits, torch.tensor([0])).item() == pytest.approx(math.log(3.0))
    assert true_class_log_odds(logits, torch.tensor([1])).item() == pytest.approx(-math.log(3.0))
    at_target = confidence_match_loss(logits, torch.tensor([0]), torch.tensor([math.log(3.0)]))
    assert at_target.item() == pytest.approx(0.0, abs=1e-6)
    # smooth L1: quadratic within 1 of the target, linear beyond
    assert confidence_match_loss(logits, torch.tensor([0]), torch.tensor([math.log(3.0) - 3])).item() == \
        pytest.approx(2.5, rel=1e-5)


def test_matched_vector_aims_at_the_unseen_datas_confidences_not_at_misclassifying_all():
    # unseen data: the label's pixel is hardly brighter than the others, so the model gets only part of it right
    train, unseen = _data(300, 0), _data(200, 1, low=0.1)
    forget = train.y == 0
    split = ForgetSplit(train.subset(forget), train.subset(~forget))
    model = PixelLogits()
    unseen_acc = accuracy(model, unseen.x, unseen.y)
    assert 0.3 < unseen_acc < 0.9
    cfg = ForgetVectorConfig(optimizer="adam", lr=0.01, lr_decay=1.0, lam=0.0, batch_size=32, max_epochs=15,
                             patience=3, forget_loss="match", target_forget_accuracy=unseen_acc,
                             target_tolerance=0.1)
    result = learn_forget_vector(model, split, cfg, unseen=unseen)
    forget_acc = accuracy(model, split.forget.x, split.forget.y, result.delta)
    assert abs(forget_acc - unseen_acc) <= 0.1 + 1e-9  # in the band around the unseen data's accuracy
    assert "non_member_share" in result.history[-1] and "unseen_acc" in result.history[-1]
    assert model.scale.item() == 10.0  # frozen
    with pytest.raises(ValueError, match="unseen"):
        learn_forget_vector(model, split, cfg)


def test_official_arithmetic_starts_at_zero_and_may_use_vectors_of_other_classes():
    data = _data(300, 2)
    forget = torch.isin(data.y, torch.tensor([0, 1]))
    split = ForgetSplit(data.subset(forget), data.subset(~forget))
    # class 2's vector brightens pixel 2: it helps forget 0 and 1 only with a positive weight, and the bank
    # passes it although class 2 is not requested
    bank = {0: torch.tensor([[[-0.5, 0.0, 0.0]]]), 1: torch.tensor([[[0.0, -0.5, 0.0]]]),
            2: torch.tensor([[[0.0, 0.0, 0.5]]])}
    assert OFFICIAL.init == 0.0
    calls = []
    result = learn_coefficients(PixelLogits().eval(), split, bank, OFFICIAL, progress=lambda f, r: calls.append(r))
    model = PixelLogits().eval()
    assert result.history[0]["delta_l2"] == 0.0  # w₀ = 0: δ starts at zero
    assert accuracy(model, split.forget.x, split.forget.y, result.delta) <= 0.05
    assert set(result.weights) == {0, 1, 2}
    rebuilt = sum(result.weights[k] * bank[k] for k in bank)
    assert torch.allclose(rebuilt, result.delta, atol=1e-4)


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def test_salient_masks_keep_the_requested_share_and_bounded_smoothing_moves_only_those_weights():
    model = _Two().eval()
    x = torch.rand(16, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    cfg = SmoothingConfig(sigma=0.1, lr=0.5, n_samples=3, batch_size=8, epochs=2, salient_fraction=0.25)
    masks = salient_masks(model, x, cfg)
    total = sum(m.numel() for m in masks)
    kept = sum(int(m.sum()) for m in masks)
    assert kept == pytest.approx(0.25 * total, abs=2)  # ties aside, exactly the share asked for
    result = lipschitz_smoothing(model, x, cfg)
    before = dict(model.named_parameters())
    moved = 0
    for (name, mask) in zip(before, masks, strict=True):
        changed = result.state_dict[name] != before[name].detach()
        assert not (changed & (mask == 0)).any(), name  # nothing outside the mask moves
        moved += int(changed.sum())
    assert 0 < moved <= kept
