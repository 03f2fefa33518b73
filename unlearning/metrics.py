"""Unlearning metrics, measured with the forget vector applied exactly as the service serves it.

UA = 100 − accuracy on D_f; RA = accuracy on D_r; TA = accuracy on test data (class-wise: the test images
of the remaining classes, with the forgotten classes' test accuracy reported separately); MIA = MIA-efficacy
of the SVC confidence attack of the OPTML-Group protocol; Avg. Gap = mean |metric − Retrain| over UA, RA,
TA and MIA. All in percent.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy, apply_delta

GAP_METRICS = ("UA", "RA", "TA", "MIA")


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 2)


@torch.no_grad()
def true_label_confidence(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor | None = None, batch_size: int = 1024
) -> torch.Tensor:
    """softmax(model(x + δ))[y] per sample: (N,) in [0, 1]."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(y), batch_size):
        xb = apply_delta(x[start : start + batch_size].to(device), delta)
        probs = torch.softmax(model(xb), dim=1).cpu()
        out.append(probs.gather(1, y[start : start + batch_size, None]).squeeze(1))
    return torch.cat(out) if out else torch.empty(0)


def mia_efficacy(
    model: nn.Module, split: ForgetSplit, test: ImageSet, delta: torch.Tensor | None = None, seed: int = 0
) -> float:
    """Share of D_f that a membership attack calls non-member, in [0, 1] (higher = more forgotten).

    The attack (OPTML SVC_MIA, "confidence"): an RBF SVC (C=3, gamma="auto") on the true-label softmax
    confidence, trained with n = min(|test|, |D_r|) seeded retain samples as members and as many test samples
    as non-members, then applied to D_f.
    """
    from sklearn.svm import SVC

    n = min(len(test), len(split.retain))
    if n == 0 or len(split.forget) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    members = torch.randperm(len(split.retain), generator=generator)[:n]
    non_members = torch.randperm(len(test), generator=generator)[:n]
    features = torch.cat([
        true_label_confidence(model, split.retain.x[members], split.retain.y[members], delta),
        true_label_confidence(model, test.x[non_members], test.y[non_members], delta),
    ]).numpy()[:, None]
    labels = [1] * n + [0] * n
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    forget_features = true_label_confidence(model, split.forget.x, split.forget.y, delta).numpy()[:, None]
    return float(1.0 - attack.predict(forget_features).mean())


def unlearning_report(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, forgotten_classes: list[int] | None = None,
    delta: torch.Tensor | None = None, mia: bool = True,
) -> dict[str, float | None]:
    """UA, RA, TA (and TA_forgotten for class-wise requests) and MIA of model(x + δ), in percent."""
    report = {
        "UA": _pct(1.0 - accuracy(model, split.forget.x, split.forget.y, delta)),
        "RA": _pct(accuracy(model, split.retain.x, split.retain.y, delta)),
    }
    if test is not None:
        if forgotten_classes:
            gone = torch.isin(test.y, torch.tensor(forgotten_classes))
            report["TA"] = _pct(accuracy(model, test.x[~gone], test.y[~gone], delta))
            report["TA_forgotten"] = _pct(accuracy(model, test.x[gone], test.y[gone], delta))
            # Class-wise: non-members are test images of the remaining classes, as in the papers.
            non_member_set = ImageSet(test.x[~gone], test.y[~gone], tuple(test.ids[i] for i in (~gone).nonzero().flatten().tolist()))
        else:
            report["TA"] = _pct(accuracy(model, test.x, test.y, delta))
            non_member_set = test
        if mia:
            report["MIA"] = _pct(mia_efficacy(model, split, non_member_set, delta))
    return report


def avg_gap(metrics: dict[str, float | None], retrain: dict[str, float | None]) -> float:
    """Mean |metric − Retrain| over UA, RA, TA and MIA (percentage points)."""
    gaps = [abs(metrics[k] - retrain[k]) for k in GAP_METRICS if metrics.get(k) is not None and retrain.get(k) is not None]
    return round(sum(gaps) / len(gaps), 2) if gaps else float("nan")
