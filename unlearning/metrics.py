"""Unlearning metrics, measured with the forget vector applied exactly as the service serves it.

UA = 100 − accuracy on D_f; RA = accuracy on D_r; TA = accuracy on test data (class-wise: the test images
of the remaining classes, with the forgotten classes' test accuracy reported separately); Avg. Gap = mean
|metric − Retrain| over UA, RA, TA and MIA. All in percent.

Membership attacks, all read as MIA-efficacy: the share of D_f the attack calls non-member (higher = more
forgotten; the goal is Retrain's value). Members are retain samples, non-members test samples (class-wise:
of the remaining classes); the one feature is the true-label softmax confidence.
- MIA: the OPTML-Group SVC attack (RBF, C=3, γ="auto") on one seeded balanced shadow sample: comparable with
  the papers, but its verdict can flip between 0 and 100 with the shadow seed on class-wise requests.
- MIA_min, MIA_mean: the same attack over several shadow seeds (worst case and average).
- MIA_scale: the SVC with γ="scale" (kernel width from the feature's variance), mean over the shadow seeds.
- MIA_thr: a per-class confidence threshold (OPTML `_mem_inf_thre`): for each class the threshold that best
  separates its retain from its test confidences (balanced accuracy); D_f samples below their class's
  threshold are non-members. Classes with no retain or no test samples (a forgotten class) use the threshold
  fitted on all classes pooled. Deterministic: no shadow sampling.
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import perturbed_logits

GAP_METRICS = ("UA", "RA", "TA", "MIA")
SHADOW_SEEDS = (0, 1, 2)
"""Shadow-sample seeds of MIA_min, MIA_mean and MIA_scale (seed 0 alone gives MIA)."""
MIA_MAX_SHADOW = 2_000
"""Most members (and as many non-members) one SVC attack trains on, drawn with its seed like any shadow sample.
The papers' attack trains on |D_test| of each (10,000 on CIFAR-10), and an RBF SVC's fit grows about with the
square of that (4,000 a side: ~3 s a fit on two CPU cores; a report fits six), which would spend minutes of every
forget job on its report. No data set of the benchmarks reaches it, so their figures are the papers' attack."""


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else round(100.0 * value, 2)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, delta: torch.Tensor | None = None, gate_classes: list[int] | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Logits (N, K) on the CPU of model(x + δ) as served (gated by `gate_classes` when given). x: (N, C, H, W)."""
    device = next(model.parameters()).device
    out = [perturbed_logits(model, x[start : start + batch_size].to(device), delta, gate_classes).cpu()
           for start in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def confidence_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[y] per sample: logits (N, K), y (N,) -> (N,) in [0, 1]."""
    if len(y) == 0:
        return torch.empty(0)
    return torch.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)


def _accuracy_of(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float("nan") if len(y) == 0 else (logits.argmax(1) == y).float().mean().item()


def true_label_confidence(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor | None = None, batch_size: int = 1024,
    *, gate_classes: list[int] | None = None,
) -> torch.Tensor:
    """softmax(model(x + δ))[y] per sample: (N,) in [0, 1]."""
    return confidence_of(predict_logits(model, x, delta, gate_classes, batch_size), y)


def svc_efficacy(
    member: torch.Tensor, non_member: torch.Tensor, target: torch.Tensor, seed: int = 0, gamma: str | float = "auto",
    max_shadow: int = MIA_MAX_SHADOW,
) -> float:
    """Share of `target` that the OPTML SVC attack calls non-member, in [0, 1]. All inputs: confidences (N,).

    The attack: an RBF SVC (C=3) on the confidence, trained with n = min(|member|, |non_member|, max_shadow)
    seeded members (label 1) and as many seeded non-members (label 0).
    """
    from sklearn.svm import SVC

    n = min(len(member), len(non_member), max_shadow)
    if n == 0 or len(target) == 0:
        return float("nan")
    generator = torch.Generator().manual_seed(seed)
    members = torch.randperm(len(member), generator=generator)[:n]
    non_members = torch.randperm(len(non_member), generator=generator)[:n]
    features = torch.cat([member[members], non_member[non_members]]).double().numpy()[:, None]
    attack = SVC(C=3, gamma=gamma, kernel="rbf").fit(features, [1] * n + [0] * n)
    return float(1.0 - attack.predict(target.double().numpy()[:, None]).mean())


def best_threshold(member: torch.Tensor, non_member: torch.Tensor) -> float:
    """The confidence t that best separates members (conf >= t) from non-members (conf < t) by balanced
    accuracy ½(P[member >= t] + P[non_member < t]); candidates are the observed values, ties go to the
    smallest. Both inputs (N,), non-empty."""
    candidates = torch.cat([member, non_member]).double().unique()  # sorted ascending
    members = member.double().sort().values
    non_members = non_member.double().sort().values
    member_kept = 1.0 - torch.searchsorted(members, candidates, side="left") / len(members)  # P[member >= t]
    non_member_below = torch.searchsorted(non_members, candidates, side="left") / len(non_members)  # P[non < t]
    score = 0.5 * (member_kept + non_member_below)
    return float(candidates[int(torch.argmax(score))])  # argmax returns the first maximum


def threshold_efficacy(
    member: torch.Tensor, member_y: torch.Tensor, non_member: torch.Tensor, non_member_y: torch.Tensor,
    target: torch.Tensor, target_y: torch.Tensor,
) -> float:
    """Share of `target` below its class's confidence threshold (called non-member), in [0, 1].

    Confidences (N,) with their labels (N,). A class's threshold is `best_threshold` of its members against
    its non-members; a class that lacks either uses the threshold of all classes pooled.
    """
    if len(target) == 0 or len(member) == 0 or len(non_member) == 0:
        return float("nan")
    pooled = best_threshold(member, non_member)
    thresholds = torch.full((len(target),), pooled, dtype=torch.float64)
    for c in target_y.unique().tolist():
        m, nm = member[member_y == c], non_member[non_member_y == c]
        if len(m) and len(nm):
            thresholds[target_y == c] = best_threshold(m, nm)
    return (target.double() < thresholds).double().mean().item()


def mia_figures(
    retain: tuple[torch.Tensor, torch.Tensor], non_member: tuple[torch.Tensor, torch.Tensor],
    forget: tuple[torch.Tensor, torch.Tensor], shadow_seeds: tuple[int, ...] = SHADOW_SEEDS,
) -> dict[str, float | None]:
    """Every attack's MIA-efficacy in percent. Each argument: (confidences (N,), labels (N,))."""
    auto = [svc_efficacy(retain[0], non_member[0], forget[0], seed) for seed in shadow_seeds]
    scale = [svc_efficacy(retain[0], non_member[0], forget[0], seed, gamma="scale") for seed in shadow_seeds]
    nan = float("nan")
    optml = auto[shadow_seeds.index(0)] if 0 in shadow_seeds else svc_efficacy(retain[0], non_member[0], forget[0], 0)
    return {
        "MIA": _pct(optml),
        "MIA_min": _pct(min(auto) if auto else nan),
        "MIA_mean": _pct(statistics.mean(auto) if auto else nan),
        "MIA_scale": _pct(statistics.mean(scale) if scale else nan),
        "MIA_thr": _pct(threshold_efficacy(*retain, *non_member, *forget)),
    }


def mia_efficacy(
    model: nn.Module, split: ForgetSplit, test: ImageSet, delta: torch.Tensor | None = None, seed: int = 0,
    *, gamma: str | float = "auto", gate_classes: list[int] | None = None,
) -> float:
    """Share of D_f that the OPTML SVC attack (`svc_efficacy`) calls non-member, in [0, 1] (higher = more
    forgotten); members are retain samples, non-members `test` samples, features model(x + δ) confidences."""
    def conf(data: ImageSet) -> torch.Tensor:
        return true_label_confidence(model, data.x, data.y, delta, gate_classes=gate_classes)

    if min(len(test), len(split.retain)) == 0 or len(split.forget) == 0:
        return float("nan")
    return svc_efficacy(conf(split.retain), conf(test), conf(split.forget), seed, gamma)


def unlearning_report(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, forgotten_classes: list[int] | None = None,
    delta: torch.Tensor | None = None, mia: bool = True, *, gate_classes: list[int] | None = None,
    shadow_seeds: tuple[int, ...] = SHADOW_SEEDS,
) -> dict[str, float | None]:
    """UA, RA, TA (and TA_forgotten for class-wise requests) and, with `mia`, every attack of `mia_figures`,
    of model(x + δ) as served: with `gate_classes`, δ only reaches inputs the model assigns to those classes.
    One forward pass per set; in percent."""
    forget_logits = predict_logits(model, split.forget.x, delta, gate_classes)
    retain_logits = predict_logits(model, split.retain.x, delta, gate_classes)
    test_logits = None if test is None else predict_logits(model, test.x, delta, gate_classes)
    return report_from_logits(split, test, forget_logits, retain_logits, test_logits, forgotten_classes, mia,
                              shadow_seeds=shadow_seeds)


def report_from_logits(
    split: ForgetSplit, test: ImageSet | None, forget_logits: torch.Tensor, retain_logits: torch.Tensor,
    test_logits: torch.Tensor | None, forgotten_classes: list[int] | None = None, mia: bool = True, *,
    shadow_seeds: tuple[int, ...] = SHADOW_SEEDS,
) -> dict[str, float | None]:
    """`unlearning_report` from the served logits (N, K) on D_f, D_r and the test set, already computed."""
    report = {"UA": _pct(1.0 - _accuracy_of(forget_logits, split.forget.y)),
              "RA": _pct(_accuracy_of(retain_logits, split.retain.y))}
    if test is None or test_logits is None:
        return report
    # Class-wise: non-members are test images of the remaining classes, as in the papers.
    kept = ~torch.isin(test.y, torch.tensor(forgotten_classes or [], dtype=test.y.dtype))
    report["TA"] = _pct(_accuracy_of(test_logits[kept], test.y[kept]))
    if forgotten_classes:
        report["TA_forgotten"] = _pct(_accuracy_of(test_logits[~kept], test.y[~kept]))
    if mia:
        report.update(mia_figures(
            (confidence_of(retain_logits, split.retain.y), split.retain.y),
            (confidence_of(test_logits[kept], test.y[kept]), test.y[kept]),
            (confidence_of(forget_logits, split.forget.y), split.forget.y), shadow_seeds))
    return report


def avg_gap(metrics: dict[str, float | None], retrain: dict[str, float | None]) -> float:
    """Mean |metric − Retrain| over UA, RA, TA and MIA (percentage points)."""
    pairs = [(metrics.get(k), retrain.get(k)) for k in GAP_METRICS]
    gaps = [abs(m - r) for m, r in pairs if m is not None and r is not None]
    return round(sum(gaps) / len(gaps), 2) if gaps else float("nan")
