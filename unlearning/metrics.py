"""Unlearning metrics, measured with the forget vector applied exactly as the service serves it.

UA = 100 − accuracy on D_f; RA = accuracy on D_r; TA = accuracy on test data (class-wise: the test images
of the remaining classes, with the forgotten classes' test accuracy reported separately). All in percent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.forget_vector import accuracy


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 2)


def unlearning_report(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, forgotten_classes: list[int] | None = None,
    delta: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """UA, RA, TA (and TA_forgotten for class-wise requests) of model(x + δ), in percent."""
    report = {
        "UA": _pct(1.0 - accuracy(model, split.forget.x, split.forget.y, delta)),
        "RA": _pct(accuracy(model, split.retain.x, split.retain.y, delta)),
    }
    if test is not None:
        if forgotten_classes:
            gone = torch.isin(test.y, torch.tensor(forgotten_classes))
            report["TA"] = _pct(accuracy(model, test.x[~gone], test.y[~gone], delta))
            report["TA_forgotten"] = _pct(accuracy(model, test.x[gone], test.y[gone], delta))
        else:
            report["TA"] = _pct(accuracy(model, test.x, test.y, delta))
    return report
