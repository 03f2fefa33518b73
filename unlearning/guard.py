"""The utility guard: a candidate (new weights and/or δ) is published only if, on data the optimisation never saw,
it keeps the retained classes' accuracy within a bound of the model it replaces and forgets what it was asked to.

Guard data = a seeded share of the retain set held back from every optimisation, plus the test images of the
classes that stay. A retrained model loses no accuracy on retained classes, so a large drop there is damage,
not forgetting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy


@dataclass(frozen=True)
class GuardConfig:
    max_drop: float = 0.03
    """Most accuracy (fraction; 0.03 = 3 points) the candidate may lose on held-out retained data."""
    holdout_fraction: float = 0.1
    """Share of the retain set held back from optimisation (half checks the guard, half monitors smoothing)."""
    max_holdout: int = 2000
    min_holdout: int = 40
    forget_tolerance: float = 0.05
    """Forget accuracy may exceed its target by at most this (sample-wise: target = held-out accuracy)."""
    seed: int = 0


@dataclass(frozen=True)
class HeldOut:
    """Retain samples no optimisation sees: `monitor` may steer stopping, `guard` only judges."""

    monitor: ImageSet
    guard: ImageSet


@dataclass(frozen=True)
class Candidate:
    """What would be served: a model with an optional δ, applied to inputs the model assigns to `gate_classes`
    only (None: to every input)."""

    model: nn.Module
    delta: torch.Tensor | None = None  # (C, H, W)
    gate_classes: list[int] | None = None

    def accuracy(self, data: ImageSet) -> float:
        return accuracy(self.model, data.x, data.y, self.delta, gate_classes=self.gate_classes)


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard measured (accuracies in percent) and whether the candidate may be published."""

    measured_on: dict[str, int]
    baseline: float
    candidate: float
    bound: float
    forget_accuracy: float
    forget_target: float
    passed: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def hold_out_retain(split: ForgetSplit, cfg: GuardConfig) -> tuple[ForgetSplit, HeldOut]:
    """(the split to optimise on, the held-out retain samples), seeded. The optimisation split keeps D_f whole."""
    n = len(split.retain)
    size = min(cfg.max_holdout, max(cfg.min_holdout, round(n * cfg.holdout_fraction)), n // 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:size]] = True
    held = split.retain.subset(mask)
    half = torch.arange(len(held)) % 2 == 0
    return ForgetSplit(split.forget, split.retain.subset(~mask)), HeldOut(held.subset(~half), held.subset(half))


def retained_test(test: ImageSet | None, forgotten_classes: list[int]) -> ImageSet | None:
    """The test images of the classes that stay."""
    if test is None or len(test) == 0:
        return None
    return test.subset(~torch.isin(test.y, torch.tensor(forgotten_classes, dtype=test.y.dtype)))


def _guard_data(guard_retain: ImageSet, test_retained: ImageSet | None) -> ImageSet:
    """Held-out retain ∪ retained-class test images: what the utility side of the guard measures."""
    parts = [guard_retain] + ([test_retained] if test_retained is not None and len(test_retained) else [])
    return ImageSet(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                    tuple(i for p in parts for i in p.ids))


def guard_baseline(before: Candidate, guard_retain: ImageSet, test_retained: ImageSet | None) -> float:
    """`before`'s accuracy on the guard's data: measured once when several candidates are judged against it."""
    return before.accuracy(_guard_data(guard_retain, test_retained))


def judge(
    before: Candidate, after: Candidate, guard_retain: ImageSet, test_retained: ImageSet | None,
    forget: ImageSet, forget_target: float, cfg: GuardConfig, *, baseline: float | None = None,
) -> GuardVerdict:
    """Utility: accuracy of `after` on held-out retain ∪ retained-class test images may fall at most
    `cfg.max_drop` below `before`'s (`baseline`: that accuracy from `guard_baseline`, else measured here).
    Efficacy: `after`'s accuracy on D_f is at most `forget_target` + `cfg.forget_tolerance`. Both must hold."""
    data = _guard_data(guard_retain, test_retained)
    baseline = before.accuracy(data) if baseline is None else baseline
    candidate = after.accuracy(data)
    forget_acc = after.accuracy(forget)
    utility_ok = candidate >= baseline - cfg.max_drop - 1e-9
    forget_ok = forget_acc <= forget_target + cfg.forget_tolerance + 1e-9
    if not utility_ok:
        reason = (f"retained-class accuracy on held-out data fell from {100 * baseline:.1f} % to "
                  f"{100 * candidate:.1f} % (at most {100 * cfg.max_drop:.1f} points allowed)")
    elif not forget_ok:
        reason = (f"forget-set accuracy is {100 * forget_acc:.1f} %, above the target "
                  f"{100 * forget_target:.1f} % + {100 * cfg.forget_tolerance:.1f} points")
    else:
        reason = "passed"
    return GuardVerdict(
        measured_on={"heldout_retain": len(guard_retain), "test_retained": len(data) - len(guard_retain)},
        baseline=round(100 * baseline, 2), candidate=round(100 * candidate, 2), bound=round(100 * cfg.max_drop, 2),
        forget_accuracy=round(100 * forget_acc, 2), forget_target=round(100 * forget_target, 2),
        passed=utility_ok and forget_ok, reason=reason)
