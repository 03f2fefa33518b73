"""The methods as the service runs them: calibrated to the model and data given, judged by the utility guard on
held-out data, and tried a second time with a changed setting when the guard refuses. The workers and the
quality benchmark both call these functions.

Calibration rules (no absolute step size is tuned to one data set):
- class forget vectors: Adam on δ with a step per pixel that is a multiple of the training inputs' pixel standard
  deviation (Adam's step does not depend on the gradient's scale, which differs by orders of magnitude between
  models), no decay, and a stopping rule that also watches the forget samples' true-class probability, so slow
  progress is not mistaken for a plateau; sample-wise vectors: the same Adam rule with a smaller step, a forget
  term that moves each forget sample's confidence to what unseen data (the test split) of the same rank gets from
  the original model, since a retrained model treats D_f as unseen data (`forget_loss="match"`), and a stopping
  rule that keeps the δ whose forget accuracy and membership figures come closest to the unseen data's while the
  unseen data's accuracy stays within the retain bound (without a test split: the margin term and the held-out
  accuracy target of before);
- zero-shot smoothing: σ is a multiple of the forget inputs' pixel spread and the learning rate makes the first
  step move the weights by a fixed share of their norm (`unlearning.smoothing.calibrated_smoothing`); retain
  accuracy on held-out monitor samples is checked every `check_every` steps and smoothing returns the last
  weights that kept it within the guard's bound.
Second attempts: a vector that cost too much utility is retried with a quarter of the step and a tighter retain
monitor, one that did not forget enough with twice the step and patience (a matched sample-wise vector that still
forgets too little gets a third attempt: SGD on the margin term, the rule before matching); smoothing with a
quarter of the step and twice the passes. The first candidate that passes the guard is returned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from unlearning.arithmetic import OFFICIAL, CoefficientConfig, learn_coefficients
from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy
from unlearning.forget_vector import (
    CLASS_WISE,
    SAMPLE_WISE,
    ForgetVectorConfig,
    learn_forget_vector,
    random_forget_target,
)
from unlearning.guard import (
    Candidate,
    GuardConfig,
    GuardVerdict,
    HeldOut,
    guard_baseline,
    hold_out_retain,
    judge,
    retained_test,
)
from unlearning.smoothing import (
    CLASS_FORGET_TARGET,
    SmoothingConfig,
    SmoothingScale,
    accuracy_at_most,
    calibrated_smoothing,
    lipschitz_smoothing,
)

ProgressFn = Callable[[float, dict], None]

CLASS_VECTOR_STEP = 0.05
"""Class-wise δ: Adam step per pixel, in units of the inputs' pixel std (Adam's step does not depend on the
gradient's scale, which differs by orders of magnitude between models)."""
SAMPLE_VECTOR_STEP = 0.02
"""Sample-wise δ: Adam step per pixel in units of the inputs' pixel std (smaller than a class vector's: the
target is a share of D_f, and the rule checks twice an epoch)."""
SAMPLE_MARGIN_STEP = 0.027
"""Sample-wise δ, last attempt when matching forgot too little: SGD on the paper's margin term, learning rate in
units of the pixel std (the rule before matching; 0.01 on digits)."""
CLASS_RETAIN_LOSS = "ce"
SAMPLE_RETAIN_LOSS = "ce"
"""Retain term of class-wise and sample-wise vectors ("ce" or "kl", `ForgetVectorConfig.retain_loss`), chosen on
the zoo (docs/benchmarks.md)."""
ARITHMETIC = {"requested": CoefficientConfig(), "official": OFFICIAL}
"""Coefficient settings of vector arithmetic: "requested" starts every w_k at 1 (the plain sum of the requested
classes' vectors); "official" starts at 0, as the paper's code, and is meant for a basis of every bank vector."""
DEFAULT_ARITHMETIC = "requested"
ZERO_SHOT_SALIENT_FRACTION: float | None = None
"""JiT bounded (`SmoothingConfig.salient_fraction`) for zero-shot jobs; None: every weight, guard only."""
SMOOTHING_LADDER = (SmoothingScale(), SmoothingScale(step_fraction=0.00125))
"""Zero-shot attempts: the second takes steps a quarter the size (and twice the passes)."""


@dataclass(frozen=True)
class Guarded:
    """The outcome of a guarded method: the candidate to publish when `passed`, and every attempt's figures."""

    passed: bool
    delta: torch.Tensor | None = None  # (C, H, W)
    state_dict: dict[str, torch.Tensor] | None = None  # new weights (zero-shot)
    verdict: GuardVerdict | None = None
    attempts: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def guard_record(self) -> dict:
        """What a job result and receipt carry as `guard`."""
        return {"passed": self.passed, "verdict": None if self.verdict is None else self.verdict.as_dict(),
                "attempts": [{k: v for k, v in a.items() if k != "guard"} | {"passed": a["guard"]["passed"],
                              "reason": a["guard"]["reason"]} for a in self.attempts]}


def pixel_spread(x: torch.Tensor) -> float:
    """Standard deviation of the pixel values of x (N, C, H, W); 0.25 for fewer than two values."""
    return float(x.std()) if x.numel() > 1 else 0.25


def _span(progress: ProgressFn | None, index: int, count: int) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, record: progress((index + fraction) / count, {**record, "attempt": index + 1})


def guarded_forget_vector(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, *, classes: list[int] | None,
    guard: GuardConfig = GuardConfig(), gate: bool = False, progress: ProgressFn | None = None,
    before: Candidate | None = None, held: HeldOut | None = None, retain_loss: str | None = None,
) -> Guarded:
    """A forget vector for `classes` (class-wise; `gate`: applied only to inputs assigned to them) or, with
    classes None, for the samples of D_f (sample-wise, aimed at the held-out accuracy a retrained model has).

    `before` is what is served now (default: the model without δ); `held`: retain samples already held out by
    the caller (else a share of `split.retain` is held out here); `retain_loss`: "ce" or "kl" instead of the
    default for the request's kind."""
    if held is None:
        split, held = hold_out_retain(split, guard)
    before = before or Candidate(model)
    spread = pixel_spread(split.retain.x if len(split.retain) else split.forget.x)
    if classes is not None:
        target = 0.0
        first = replace(CLASS_WISE, optimizer="adam", lr=CLASS_VECTOR_STEP * spread, lr_decay=1.0,
                        max_epochs=200, patience=10, gate_classes=tuple(classes) if gate else None,
                        retain_loss=retain_loss or CLASS_RETAIN_LOSS)
    else:
        target = random_forget_target(model, split, test)
        unseen = test is not None and len(test) > 0
        first = replace(SAMPLE_WISE, optimizer="adam", lr=SAMPLE_VECTOR_STEP * spread, lr_decay=1.0, max_epochs=40,
                        patience=4, checks_per_epoch=2, target_forget_accuracy=target,
                        forget_loss="match" if unseen else "margin", retain_loss=retain_loss or SAMPLE_RETAIN_LOSS)
    # Sample-wise, when the matched vector forgets too little even with twice the step: the margin rule of before.
    margin = replace(SAMPLE_WISE, lr=SAMPLE_MARGIN_STEP * spread, target_forget_accuracy=target,
                     retain_loss=first.retain_loss)
    count = 3 if first.forget_loss == "match" else 2
    test_retained = retained_test(test, classes or [])
    baseline = guard_baseline(before, held.guard, test_retained)
    attempts: list[dict] = []
    result = Guarded(passed=False)
    cfg = first
    for i in range(count):
        vector = learn_forget_vector(model, split, cfg, progress=_span(progress, i, count),
                                     unseen=test if cfg.forget_loss == "match" else None)
        candidate = Candidate(model, vector.delta, list(classes) if gate and classes is not None else None)
        verdict = judge(before, candidate, held.guard, test_retained, split.forget, target, guard, baseline=baseline)
        attempts.append({"setting": {"optimizer": cfg.optimizer, "lr": round(cfg.lr, 6),
                                     "max_retain_drop": cfg.max_retain_drop, "forget_loss": cfg.forget_loss,
                                     "retain_loss": cfg.retain_loss},
                         "epochs": vector.epochs, "stop_reason": vector.stop_reason, "guard": verdict.as_dict()})
        result = Guarded(verdict.passed, vector.delta, None, verdict, list(attempts),
                         {"config": vector.config, "epochs": vector.epochs, "stop_reason": vector.stop_reason,
                          "target_forget_accuracy": target, "gated": candidate.gate_classes is not None})
        if verdict.passed:
            break
        cfg = _next_vector_setting(cfg, verdict, guard)
        if i == 1 and cfg.forget_loss == "match" and cfg.lr > first.lr:
            cfg = margin
        elif i == 1:
            break
    return result


def _next_vector_setting(cfg: ForgetVectorConfig, verdict: GuardVerdict, guard: GuardConfig) -> ForgetVectorConfig:
    """The second attempt after a refusal: more cautious when utility fell (a quarter of the step, a tighter
    retain monitor), bolder when forgetting fell short (twice the step, twice the patience)."""
    if verdict.candidate < verdict.baseline - verdict.bound:
        return replace(cfg, lr=cfg.lr / 4, max_retain_drop=min(cfg.max_retain_drop, guard.max_drop / 3))
    return replace(cfg, lr=cfg.lr * 2, patience=cfg.patience * 2)


def guarded_vector_arithmetic(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, *, basis: dict[int, torch.Tensor],
    classes: list[int], guard: GuardConfig = GuardConfig(), gate: bool = False, progress: ProgressFn | None = None,
    before: Candidate | None = None, max_forget_accuracy: float = 0.02, arithmetic: str = DEFAULT_ARITHMETIC,
) -> Guarded:
    """δ = Σ_k w_k δ_k over the class vectors in `basis` (Sun et al. 2024, compositional unlearning; `arithmetic`
    names the setting in `ARITHMETIC`); when the combination leaves forget accuracy above `max_forget_accuracy` or
    fails the guard, a joint guarded vector."""
    split, held = hold_out_retain(split, guard)
    before = before or Candidate(model)
    gate_classes = list(classes) if gate else None
    spread = pixel_spread(split.retain.x if len(split.retain) else split.forget.x)
    cfg = replace(ARITHMETIC[arithmetic], gate_classes=tuple(classes) if gate else None)
    half = None if progress is None else (lambda f, r: progress(f / 2, r))
    combined = learn_coefficients(model, split, basis, cfg, progress=half)
    candidate = Candidate(model, combined.delta, gate_classes)
    verdict = judge(before, candidate, held.guard, retained_test(test, classes), split.forget, 0.0, guard)
    attempt = {"setting": {"strategy": "arithmetic", "arithmetic": arithmetic, "basis": sorted(basis),
                           "lr": cfg.lr}, "epochs": combined.epochs,
               "stop_reason": combined.stop_reason, "guard": verdict.as_dict()}
    coefficients = {str(c): w for c, w in combined.weights.items()}
    device = next(model.parameters()).device
    forget_acc = accuracy(model, split.forget.x, split.forget.y, combined.delta.to(device), gate_classes=gate_classes)
    if verdict.passed and forget_acc <= max_forget_accuracy:
        return Guarded(True, combined.delta, None, verdict, [attempt],
                       {"strategy": "arithmetic", "coefficients": coefficients, "lr_per_spread": cfg.lr / spread})
    rest = None if progress is None else (lambda f, r: progress(0.5 + f / 2, r))
    joint = guarded_forget_vector(model, split, test, classes=classes, guard=guard, gate=gate, progress=rest,
                                  before=before, held=held)
    return replace(joint, attempts=[attempt, *joint.attempts],
                   info={**joint.info, "strategy": "joint", "coefficients": coefficients})


def guarded_zero_shot(
    model: nn.Module, split: ForgetSplit, test: ImageSet | None, *, classes: list[int] | None,
    guard: GuardConfig = GuardConfig(), progress: ProgressFn | None = None, before: Candidate | None = None,
    forgotten_classes: list[int] | None = None, salient_fraction: float | None = ZERO_SHOT_SALIENT_FRACTION,
) -> Guarded:
    """JiT smoothing of a copy of `model` on the forget inputs only (labels only decide when to stop: class-wise
    at forget accuracy ≤ `CLASS_FORGET_TARGET`, sample-wise at the held-out accuracy), with σ and step size
    calibrated, stopped before held-out retain accuracy leaves the guard's bound, and judged by the guard.
    `forgotten_classes`: every class gone after this request (default `classes`), excluded from the test data;
    `salient_fraction`: JiT bounded, only that share of the weights is updated (`SmoothingConfig`)."""
    split, held = hold_out_retain(split, guard)
    before = before or Candidate(model)
    target = CLASS_FORGET_TARGET if classes is not None else random_forget_target(model, split, test)
    floor = accuracy(model, held.monitor.x, held.monitor.y) - guard.max_drop

    def acceptable(smoothed: nn.Module) -> bool:
        return len(held.monitor) == 0 or accuracy(smoothed, held.monitor.x, held.monitor.y) >= floor

    stop = accuracy_at_most(split.forget.x, split.forget.y, target)
    test_retained = retained_test(test, forgotten_classes if forgotten_classes is not None else classes or [])
    baseline = guard_baseline(before, held.guard, test_retained)
    attempts: list[dict] = []
    result = Guarded(passed=False)
    for i, scale in enumerate(SMOOTHING_LADDER):
        base = SmoothingConfig(epochs=SmoothingConfig().epochs * (1 + i), salient_fraction=salient_fraction)
        cfg = calibrated_smoothing(model, split.forget.x, base, scale)
        smoothed = lipschitz_smoothing(model, split.forget.x, cfg, progress=_span(progress, i, len(SMOOTHING_LADDER)),
                                       stop=stop, acceptable=acceptable)
        new_model = copy.deepcopy(model)
        new_model.load_state_dict(smoothed.state_dict)
        verdict = judge(before, Candidate(new_model.eval()), held.guard, test_retained, split.forget, target, guard,
                        baseline=baseline)
        attempts.append({"setting": {"sigma": round(cfg.sigma, 6), "lr": cfg.lr, **asdict(scale),
                                     "salient_fraction": salient_fraction},
                         "steps": smoothed.steps, "stop_reason": smoothed.stop_reason, "guard": verdict.as_dict()})
        result = Guarded(verdict.passed, None, smoothed.state_dict, verdict, list(attempts),
                         {"config": smoothed.config, "steps": smoothed.steps, "stop_reason": smoothed.stop_reason,
                          "target_forget_accuracy": target})
        if verdict.passed:
            break
    return result
