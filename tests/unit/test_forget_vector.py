import math

import torch

from tests.unit.toys import PixelLogits
from unlearning import ForgetSplit, ForgetVectorConfig, ImageSet, accuracy, apply_delta, learn_forget_vector
from unlearning.losses import cw_forget_loss, forget_vector_objective, true_class_margin


def test_margin_and_cw_loss_by_hand():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    labels = torch.tensor([0, 1])
    # sample 0: 3 - 1 = 2; sample 1: 2 - 5 = -3, clipped at -tau = -1
    assert true_class_margin(logits, labels).tolist() == [2.0, -3.0]
    assert cw_forget_loss(logits, labels, tau=1.0).item() == (2.0 + -1.0) / 2


def test_objective_weights_each_term_by_its_own_count():
    logits = torch.tensor([[3.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    is_forget = torch.tensor([True, False, False])
    loss, parts = forget_vector_objective(logits, labels, is_forget, alpha=2.0, beta=0.5, tau=1.0)
    ce_retain = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert math.isclose(parts["retain"], ce_retain, rel_tol=1e-5)
    assert parts["forget"] == 2.0
    assert math.isclose(loss.item(), 2.0 * ce_retain + 0.5 * 2.0, rel_tol=1e-5)


def test_objective_without_forget_samples_has_no_forget_term():
    logits = torch.tensor([[1.0, 0.0]])
    loss, parts = forget_vector_objective(logits, torch.tensor([0]), torch.tensor([False]), 1.0, 1.0, 1.0)
    assert parts["forget"] == 0.0 and math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-5)


def test_apply_delta_clips_to_pixel_range():
    x = torch.tensor([[[[0.2, 0.9]]]])
    out = apply_delta(x, torch.tensor([[[0.5, 0.5]]]))
    assert torch.allclose(out, torch.tensor([[[[0.7, 1.0]]]]))




def _pixel_data(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    bright = 0.55 + 0.4 * torch.rand(n, generator=g)
    dim = 0.45 * torch.rand(n, generator=g)
    x = torch.stack([torch.where(y == 0, bright, dim), torch.where(y == 1, bright, dim)], 1).view(n, 1, 1, 2)
    return ImageSet(x, y, tuple(str(i) for i in range(n)))


def test_optimiser_learns_a_vector_that_forgets_one_class_and_keeps_the_model_frozen():
    model = PixelLogits().eval()
    data = _pixel_data(400, seed=0)
    split = ForgetSplit(data.subset(data.y == 1), data.subset(data.y == 0))
    assert accuracy(model, split.forget.x, split.forget.y) == 1.0
    cfg = ForgetVectorConfig(max_epochs=40, max_retain_drop=0.05, seed=0)
    result = learn_forget_vector(model, split, cfg)
    assert result.delta.shape == (1, 1, 2)
    assert accuracy(model, split.forget.x, split.forget.y, result.delta) == 0.0
    assert accuracy(model, split.retain.x, split.retain.y, result.delta) >= 0.95
    assert result.stop_reason == "targets_met"
    assert model.scale.item() == 10.0 and not model.scale.requires_grad
    # The vector pushes class-0 evidence up (or class-1 evidence down).
    assert result.delta[0, 0, 0] > result.delta[0, 0, 1]


def test_progress_is_reported_every_epoch_with_increasing_fraction():
    model = PixelLogits().eval()
    data = _pixel_data(200, seed=1)
    split = ForgetSplit(data.subset(data.y == 1), data.subset(data.y == 0))
    seen = []
    cfg = ForgetVectorConfig(max_epochs=5, target_forget_accuracy=-1.0, patience=99)
    learn_forget_vector(model, split, cfg,
                        progress=lambda fraction, record: seen.append((fraction, record["epoch"])))
    assert [epoch for _, epoch in seen] == [1, 2, 3, 4, 5]
    assert [f for f, _ in seen] == sorted(f for f, _ in seen) and seen[-1][0] == 1.0
