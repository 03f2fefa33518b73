"""The service's unlearning methods as the benchmark calls them: the one place that says which code runs.

When `unlearning.guarded` exists, these are its guarded entry points, the code the workers run: a candidate
is measured against the utility guard and published only if it passes. Until then, the same core functions
the workers call today, each followed by a stand-in guard (accuracy on the test images of the retained
classes may fall at most `MAX_DROP` below the original's), with the same `Guarded` result shape.

A `Guarded` that did not pass is not published: the benchmark scores the unchanged model for that row and
counts the refusal.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy

GUARDED = (importlib.util.find_spec("unlearning.guarded") is not None
           and os.environ.get("UNLEARND_BENCH_STAND_IN") != "1")
"""True: the benchmark runs `unlearning.guarded` (the workers' code path); False: the stand-in below.
`UNLEARND_BENCH_STAND_IN=1` forces the stand-in (to compare the guarded methods with the unguarded core)."""
MAX_DROP = 0.03


@dataclass
class Guarded:
    """Same fields as `unlearning.guarded.Guarded`, for the stand-in."""

    passed: bool
    delta: torch.Tensor | None = None
    state_dict: dict | None = None
    attempts: list[dict] = field(default_factory=list)
    verdict: dict | None = None
    info: dict = field(default_factory=dict)


def _kept_test(test: ImageSet, classes: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    keep = ~torch.isin(test.y, torch.tensor(classes or [], dtype=test.y.dtype))
    return test.x[keep], test.y[keep]


def _stand_in_guard(model: nn.Module, test: ImageSet, classes: list[int] | None, *, delta=None,
                    candidate: nn.Module | None = None, gate: bool = False) -> dict:
    """Accuracy on the retained classes' test images, original against candidate (δ on the original model, or
    new weights), in percent as `GuardVerdict`; passed when it falls at most `bound` = MAX_DROP points."""
    x, y = _kept_test(test, classes)
    baseline = 100 * accuracy(model, x, y)
    gate_classes = classes if gate else None
    after = 100 * accuracy(candidate if candidate is not None else model, x, y, delta, gate_classes=gate_classes)
    return {"passed": after >= baseline - 100 * MAX_DROP, "baseline": round(baseline, 2),
            "candidate": round(after, 2), "bound": 100 * MAX_DROP}


def _as_guarded(result) -> Guarded:
    """A `unlearning.guarded.Guarded` as the bench's `Guarded` (verdict as a plain dict)."""
    verdict = getattr(result, "verdict", None)
    if verdict is not None and hasattr(verdict, "as_dict"):
        verdict = verdict.as_dict()
    return Guarded(passed=bool(result.passed), delta=result.delta, state_dict=result.state_dict,
                   attempts=list(result.attempts or []), verdict=verdict, info=dict(result.info or {}))


_last_vector: dict = {}


def forget_vector(model: nn.Module, split: ForgetSplit, test: ImageSet, *, classes: list[int] | None,
                  gate: bool = False, retain_loss: str | None = None) -> Guarded:
    """Class-wise (classes given) or sample-wise (classes None) forget vector; `gate`: served gated;
    `retain_loss`: "ce" or "kl" instead of the service's default (guarded code path only)."""
    if GUARDED:
        from unlearning.guarded import guarded_forget_vector

        return _as_guarded(guarded_forget_vector(model, split, test, classes=classes, gate=gate,
                                                 retain_loss=retain_loss))
    from unlearning.forget_vector import CLASS_WISE, learn_forget_vector, sample_wise_config

    cfg = CLASS_WISE if classes else sample_wise_config(model, split, test)
    # The stand-in learns the same δ with and without the gate (only serving differs): reuse the last one.
    last = _last_vector.get("key")
    if last is not None and last[0] is model and last[1] is split and last[2] == classes:
        vector = _last_vector["vector"]
    else:
        vector = learn_forget_vector(model, split, cfg)
        _last_vector.update(key=(model, split, classes), vector=vector)
    verdict = _stand_in_guard(model, test, classes, delta=vector.delta, gate=gate)
    return Guarded(verdict["passed"], vector.delta if verdict["passed"] else None, verdict=verdict,
                   attempts=[verdict], info={"epochs": vector.epochs, "stop": vector.stop_reason,
                                             "target": cfg.target_forget_accuracy})


def vector_arithmetic(model: nn.Module, split: ForgetSplit, test: ImageSet, *, basis: dict[int, torch.Tensor],
                      classes: list[int], coefficients: str | None = None) -> Guarded:
    """δ = Σ w_k δ_k over the bank vectors `basis`, learning only w (`coefficients`: a setting of
    `unlearning.guarded.ARITHMETIC`, guarded code path only)."""
    if GUARDED:
        from unlearning.guarded import DEFAULT_ARITHMETIC, guarded_vector_arithmetic

        return _as_guarded(guarded_vector_arithmetic(model, split, test, basis=basis, classes=classes,
                                                     arithmetic=coefficients or DEFAULT_ARITHMETIC))
    from unlearning.arithmetic import CoefficientConfig, learn_coefficients

    combined = learn_coefficients(model, split, basis, CoefficientConfig())
    verdict = _stand_in_guard(model, test, classes, delta=combined.delta)
    return Guarded(verdict["passed"], combined.delta if verdict["passed"] else None, verdict=verdict,
                   attempts=[verdict], info={"weights": combined.weights, "stop": combined.stop_reason})


def zero_shot(model: nn.Module, split: ForgetSplit, test: ImageSet, *, classes: list[int] | None,
              salient_fraction: float | None = None) -> Guarded:
    """JiT Lipschitz smoothing on the forget inputs: new weights (`state_dict`); `salient_fraction`: JiT bounded
    to that share of the weights (guarded code path only; None: the service's default)."""
    if GUARDED:
        from unlearning.guarded import ZERO_SHOT_SALIENT_FRACTION, guarded_zero_shot

        fraction = ZERO_SHOT_SALIENT_FRACTION if salient_fraction is None else salient_fraction
        return _as_guarded(guarded_zero_shot(model, split, test, classes=classes, salient_fraction=fraction))
    from unlearning.forget_vector import random_forget_target
    from unlearning.smoothing import CLASS_FORGET_TARGET, SmoothingConfig, accuracy_at_most, lipschitz_smoothing

    target = CLASS_FORGET_TARGET if classes else random_forget_target(model, split, test)
    smoothed = lipschitz_smoothing(model, split.forget.x, SmoothingConfig(),
                                   stop=accuracy_at_most(split.forget.x, split.forget.y, target))
    verdict = _stand_in_guard(model, test, classes, candidate=with_weights(model, smoothed.state_dict))
    return Guarded(verdict["passed"], state_dict=smoothed.state_dict if verdict["passed"] else None,
                   verdict=verdict, attempts=[verdict], info={"steps": smoothed.steps, "stop": smoothed.stop_reason})


def with_weights(model: nn.Module, state_dict: dict) -> nn.Module:
    """A copy of `model` with `state_dict` loaded, in eval mode (the original is untouched)."""
    new = copy.deepcopy(model)
    new.load_state_dict(state_dict)
    return new.eval()


def code_path() -> str:
    return "unlearning.guarded" if GUARDED else "stand-in (core functions + bench guard)"


__all__ = ["GUARDED", "Guarded", "code_path", "forget_vector", "vector_arithmetic", "with_weights", "zero_shot"]
