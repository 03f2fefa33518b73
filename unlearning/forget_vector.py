"""Forget vectors: one input-agnostic perturbation δ that makes a frozen model forget
(Sun et al., "Forget Vectors at Play", arXiv 2412.16780).

δ lives in raw [0, 1] pixel space and is added to every input before the model's normalisation;
the weights never change. Unlike the paper's code, inputs are clipped to [0, 1] after adding δ (the
served input stays a valid image), each loss term is averaged over its own samples, the retain set may
be a seeded subsample, and training stops by a stated rule instead of a hand-picked epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from unlearning.data import ForgetSplit, ImageSet
from unlearning.evaluation import accuracy, apply_delta, perturbed_logits
from unlearning.losses import forget_vector_objective
from unlearning.metrics import best_threshold

ProgressFn = Callable[[float, dict], None]


@dataclass(frozen=True)
class ForgetVectorConfig:
    """Hyperparameters of Eq. 3 and its optimiser. Defaults follow the official code (τ=1, α=1, SGD
    with momentum 0.9, ExponentialLR γ=0.9 per epoch, zero init) except β and the learning rate. The service
    sets the learning rate in units of the data's pixel spread (`unlearning.guarded`); the default here is
    that rule's value on 8×8 digits (the paper's lr 0.2 overshoots there)."""

    alpha: float = 1.0
    """Weight of the retain cross-entropy."""
    beta: float = 0.3
    """Weight of the forget margin term (per forget sample, so it does not depend on the forget share)."""
    lam: float = 0.01
    """Weight of ‖δ‖₂ (plain L2 norm, pixel units)."""
    tau: float = 1.0
    """Margin τ: a forget sample stops pulling once its true logit is τ below the runner-up."""
    retain_loss: str = "ce"
    """"ce": cross-entropy on D_r (the paper); "kl": KL to the original model's outputs on D_r, which keeps retain
    confidences where they were (what a membership attack reads)."""
    forget_loss: str = "margin"
    """"margin": the paper's C&W term; "match": each forget sample's true-class log-odds is moved to the value that
    unseen data of the same rank gets from the original model (random forgetting: D_f should look like data the
    model never saw, not be misclassified). "match" needs `unseen` data, and the stopping rule then also compares
    the share of D_f a confidence-threshold attack calls non-member with that share of the unseen data."""
    lr: float = 0.05
    optimizer: str = "sgd"
    """"sgd" (with momentum, as the official code) or "adam": Adam's step is about `lr` per pixel whatever the
    gradient's scale, so `lr` is in pixel units and carries over between models."""
    momentum: float = 0.9
    lr_decay: float = 0.9
    """Multiplicative learning-rate decay per epoch."""
    max_epochs: int = 60
    batch_size: int = 256
    retain_fraction: float = 1.0
    """Share of D_r used (seeded subsample); 1.0 uses all of it."""
    max_train_samples: int | None = None
    """Most samples optimised on per epoch: a seeded subsample of D_f and the kept D_r in proportion, so the
    cost no longer grows with the data (for few parameters, as in vector arithmetic); None: no cap."""
    clip: bool = True
    """Clip x + δ to [0, 1]."""
    target_forget_accuracy: float = 0.0
    """Stop once accuracy on D_f + δ reaches this (class-wise: 0; random: the held-out accuracy)."""
    target_tolerance: float = 0.02
    """For a target above 0: accept forget accuracy within ± this of it."""
    max_retain_drop: float = 0.02
    """…and accuracy on monitored retain samples is at most this far below the unperturbed model's."""
    patience: int = 4
    """Stop when the monitored objective has not improved for this many epochs."""
    checks_per_epoch: int = 1
    """How often per epoch the stopping rule is checked (more: stops closer to a target above 0)."""
    monitor_size: int = 512
    """Retain samples held back from optimisation to check the stopping rule; also the most forget samples
    checked (a seeded subsample), so one check costs at most 2 × this many forward passes."""
    gate_classes: tuple[int, ...] | None = None
    """Gated vector: δ will be applied only to inputs the frozen model assigns to these classes, so only those
    samples are optimised on and the stopping rule measures accuracy gated the same way (None: universal δ)."""
    seed: int = 0


@dataclass(frozen=True)
class ForgetVectorResult:
    delta: torch.Tensor  # (C, H, W)
    epochs: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


def learn_forget_vector(
    model: nn.Module,
    split: ForgetSplit,
    cfg: ForgetVectorConfig,
    progress: ProgressFn | None = None,
    unseen: ImageSet | None = None,
) -> ForgetVectorResult:
    """Optimise δ for Eq. 3 on D_f ∪ D_r with the model frozen in eval mode (δ starts at zero).

    Stopping rule, checked `checks_per_epoch` times an epoch on D_f (at most `monitor_size` of it) and on
    `monitor_size` held-back retain samples: stop as soon as forget accuracy is within `target_tolerance` of
    `target_forget_accuracy` (at or below it when the target is 0) and retain accuracy >= its unperturbed
    value − `max_retain_drop`; else when the monitored objective has not improved for `patience` epochs, or
    at `max_epochs`. The returned δ is the best one seen by that objective, the starting δ = 0 included.
    `unseen`: labelled data the model was not trained on (the test split), needed by `forget_loss="match"`.
    """
    device = next(model.parameters()).device
    delta = torch.zeros(split.forget.x.shape[1:], device=device, requires_grad=True)  # (C, H, W)
    best, epochs, stop_reason, history = optimise_perturbation(
        model, split, [delta], lambda: delta, lambda: delta.norm(p=2), cfg, progress, unseen)
    return ForgetVectorResult(delta=best.cpu(), epochs=epochs, stop_reason=stop_reason, history=history,
                              config=asdict(cfg))


def random_forget_target(model: nn.Module, split: ForgetSplit, heldout: ImageSet | None) -> float:
    """Forget-set accuracy to aim at for random (sample-wise) forgetting, without a retrained model.

    A model retrained without D_f treats D_f as unseen data, so its accuracy there is about its accuracy
    on held-out data: use the original model's accuracy on `heldout` (the test split), or, with none, its
    accuracy on the retain set (an upper bound: then the vector is asked to change little).
    """
    data = heldout if heldout is not None and len(heldout) else split.retain
    return accuracy(model, data.x, data.y)


CLASS_WISE = ForgetVectorConfig()
"""Recommended class-wise config: target forget accuracy 0 (UA = 100, as a retrained model)."""
SAMPLE_WISE = ForgetVectorConfig(lr=0.01, batch_size=64, checks_per_epoch=4)
"""Recommended sample-wise base config: smaller steps than class-wise (lr 0.05 overshoots the held-out target
in one epoch on digits), smaller batches (a forget set of a few percent gives few steps otherwise) and checks
within the epoch, so optimisation stops when the forget accuracy enters the target band instead of passing
through it. Its target comes per request from `sample_wise_config`."""


def sample_wise_config(
    model: nn.Module, split: ForgetSplit, heldout: ImageSet | None, base: ForgetVectorConfig = SAMPLE_WISE,
) -> ForgetVectorConfig:
    """`base` with `target_forget_accuracy` = `random_forget_target(model, split, heldout)`."""
    return replace(base, target_forget_accuracy=random_forget_target(model, split, heldout))


def _target_gap(forget_acc: float, cfg: ForgetVectorConfig) -> float:
    """How far forget accuracy is from its target band (0 inside it)."""
    high = cfg.target_forget_accuracy + (cfg.target_tolerance if cfg.target_forget_accuracy > 0 else 0.0)
    low = cfg.target_forget_accuracy - cfg.target_tolerance if cfg.target_forget_accuracy > 0 else -1.0
    return max(0.0, forget_acc - high) + max(0.0, low - forget_acc)


def optimise_perturbation(
    model: nn.Module,
    split: ForgetSplit,
    parameters: list[torch.Tensor],
    build_delta: Callable[[], torch.Tensor],
    penalty: Callable[[], torch.Tensor],
    cfg: ForgetVectorConfig,
    progress: ProgressFn | None = None,
    unseen: ImageSet | None = None,
) -> tuple[torch.Tensor, int, str, list[dict]]:
    """The shared optimisation loop of forget vectors and their arithmetic: SGD with momentum (or Adam) and
    exponential decay on `parameters`, loss α·retain + β·forget + λ·penalty() on the perturbation
    `build_delta()` (C, H, W), the terms chosen by `cfg.retain_loss` and `cfg.forget_loss`; stopping rule as in
    `learn_forget_vector`.
    Returns (best δ, the epoch it was found in (0 = the starting δ), stop reason, history of the checks)."""
    device = next(model.parameters()).device
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(cfg.seed)

    forget, retain = split.forget, split.retain
    order = torch.randperm(len(retain), generator=generator)
    n_monitor = min(cfg.monitor_size, len(retain) // 4)
    monitor_idx, train_idx = order[:n_monitor], order[n_monitor:]
    n_keep = max(1, round(len(train_idx) * cfg.retain_fraction))
    train_idx = train_idx[:n_keep]
    forget_order = torch.randperm(len(forget), generator=generator)
    forget_check, forget_idx = forget_order[: cfg.monitor_size], forget_order
    if cfg.max_train_samples is not None and len(forget_idx) + len(train_idx) > cfg.max_train_samples:
        share = cfg.max_train_samples / (len(forget_idx) + len(train_idx))
        forget_idx = forget_idx[: max(1, round(len(forget_idx) * share))]
        train_idx = train_idx[: max(1, round(len(train_idx) * share))]

    x_all = torch.cat([forget.x[forget_idx], retain.x[train_idx]])  # (Nf + Nr, C, H, W)
    y_all = torch.cat([forget.y[forget_idx], retain.y[train_idx]])
    is_forget_all = torch.cat([torch.ones(len(forget_idx), dtype=torch.bool),
                               torch.zeros(len(train_idx), dtype=torch.bool)])
    gate = list(cfg.gate_classes) if cfg.gate_classes is not None else None
    if gate is not None:  # only inputs that δ will be applied to are optimised on
        gated = _predicted_in(model, x_all, gate)
        x_all, y_all, is_forget_all = x_all[gated], y_all[gated], is_forget_all[gated]
    x_fc, y_fc = forget.x[forget_check], forget.y[forget_check]
    x_mon, y_mon = retain.x[monitor_idx], retain.y[monitor_idx]
    reference = _probabilities(model, x_all) if cfg.retain_loss == "kl" else None  # (N, K), the original's
    matching = _Matching.build(model, x_all, y_all, is_forget_all, x_mon, y_mon, unseen, cfg)

    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    steps_per_epoch = -(-len(y_all) // cfg.batch_size)
    checks = max(1, min(cfg.checks_per_epoch, steps_per_epoch))
    check_after = {round(steps_per_epoch * (i + 1) / checks) for i in range(checks)}  # step numbers in an epoch
    retain_floor = accuracy(model, x_mon, y_mon) - cfg.max_retain_drop if n_monitor else 0.0

    def check(epoch: float) -> tuple[float, float, dict, torch.Tensor]:
        d = build_delta().detach().clone()  # a copy: the optimiser updates the parameter in place
        p_fc = _probabilities(model, x_fc, d, clip=cfg.clip, gate=gate)  # one pass each, shared with matching
        p_mon = _probabilities(model, x_mon, d, clip=cfg.clip, gate=gate)
        forget_acc, forget_confidence = _accuracy_and_confidence(p_fc, y_fc)
        retain_acc = _accuracy_and_confidence(p_mon, y_mon)[0] if n_monitor else 1.0
        # Monitored objective: distance from the forget target band plus the retain shortfall. Accuracy on a few
        # hundred samples moves in steps, so for a target of 0 the forget samples' mean true-class probability is
        # added at 1/100 weight: progress is seen (and patience reset) before the next sample flips.
        score = _target_gap(forget_acc, cfg) + max(0.0, retain_floor - retain_acc)
        progress = score + (0.01 * forget_confidence if score > 0 and cfg.target_forget_accuracy == 0 else 0.0)
        record = {"epoch": round(epoch, 3), "forget_acc": forget_acc, "retain_acc": retain_acc,
                  "delta_l2": float(d.norm()), "lr": schedule.get_last_lr()[0]}
        if matching is not None:
            extra, figures = matching.shortfall(model, p_fc, y_fc, p_mon, y_mon, d, cfg)
            score, progress = score + extra, progress + extra
            record.update(figures)
        return score, progress, record, d

    best_score, best_progress, first, best_delta = check(0.0)
    if best_score == 0.0:  # the starting δ already meets the targets: nothing to learn
        return best_delta, 0, "targets_met", [first]
    if len(y_all) == 0:  # every forget input is already assigned outside the gated classes
        return best_delta, 0, "nothing_to_optimise", [first]
    best_epoch, stale, history, stop_reason = 0, 0, [first], "max_epochs"
    for epoch in range(1, cfg.max_epochs + 1):
        perm = torch.randperm(len(y_all), generator=generator)
        for step, start in enumerate(range(0, len(perm), cfg.batch_size), start=1):
            index = perm[start : start + cfg.batch_size]
            delta = build_delta()
            x = apply_delta(x_all[index].to(device), delta, cfg.clip)
            loss, _ = forget_vector_objective(
                model(x), y_all[index].to(device), is_forget_all[index].to(device), cfg.alpha, cfg.beta, cfg.tau,
                reference=None if reference is None else reference[index].to(device),
                forget_target=None if matching is None else matching.targets[index].to(device),
            )
            loss = loss + cfg.lam * penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step not in check_after:
                continue
            score, progress_score, record, d = check(epoch - 1 + step / steps_per_epoch)
            history.append(record)
            if progress_score < best_progress - 1e-6:
                best_score, best_progress, best_delta, best_epoch, stale = score, progress_score, d, epoch, 0
            else:
                stale += 1
            if progress is not None:
                progress(record["epoch"] / cfg.max_epochs, record)
            if score == 0.0:
                stop_reason = "targets_met"
            elif stale >= cfg.patience * checks:
                stop_reason = "plateau"
            if stop_reason != "max_epochs":
                return best_delta, best_epoch, stop_reason, history
        schedule.step()
    return best_delta, best_epoch, stop_reason, history


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, delta: torch.Tensor | None = None, *, clip: bool = True,
                   gate: list[int] | None = None, batch_size: int = 1024) -> torch.Tensor:
    """softmax(model(x + δ)) as served (gated by `gate` when given) on the CPU, (N, K) for x (N, C, H, W)."""
    device = next(model.parameters()).device
    out = [torch.softmax(perturbed_logits(model, x[i : i + batch_size].to(device), delta, gate, clip), 1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _true_confidence(probabilities: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return probabilities.gather(1, y[:, None]).squeeze(1) if len(y) else torch.zeros(0)


@dataclass(frozen=True)
class _Matching:
    """What `forget_loss="match"` aims at, measured once on the original model: per training row the target
    log-odds (forget rows: the unseen data's log-odds at the same rank; other rows unused), the unseen data, its
    accuracy, and the share of it that a confidence-threshold attack (members: monitored retain samples) calls
    non-member."""

    targets: torch.Tensor  # (N,)
    unseen: ImageSet
    unseen_accuracy: float
    non_member_share: float

    @staticmethod
    def build(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, is_forget: torch.Tensor,
              x_mon: torch.Tensor, y_mon: torch.Tensor, unseen: ImageSet | None,
              cfg: ForgetVectorConfig) -> _Matching | None:
        if cfg.forget_loss != "match":
            return None
        if unseen is None or len(unseen) == 0 or len(y_mon) == 0:
            raise ValueError('forget_loss="match" needs unseen data and monitored retain samples')
        p_unseen = _probabilities(model, unseen.x)
        unseen_odds = _log_odds(p_unseen, unseen.y)
        forget_odds = _log_odds(_probabilities(model, x_all[is_forget]), y_all[is_forget])
        rank = (torch.argsort(torch.argsort(forget_odds)).double() + 0.5) / max(len(forget_odds), 1)
        targets = torch.zeros(len(y_all))
        targets[is_forget] = torch.quantile(unseen_odds.double(), rank).float()
        unseen_conf = _true_confidence(p_unseen, unseen.y)
        threshold = best_threshold(_true_confidence(_probabilities(model, x_mon), y_mon), unseen_conf)
        return _Matching(targets, unseen, float((p_unseen.argmax(1) == unseen.y).float().mean()),
                         float((unseen_conf < threshold).float().mean()))

    def shortfall(self, model: nn.Module, p_fc: torch.Tensor, y_fc: torch.Tensor, p_mon: torch.Tensor,
                  y_mon: torch.Tensor, delta: torch.Tensor, cfg: ForgetVectorConfig) -> tuple[float, dict]:
        """Added to the stopping rule's score under δ, given the checked forget and monitored retain samples'
        probabilities under δ (N, K): the non-member share of D_f outside ± `target_tolerance` of the unseen
        data's, and the unseen data's accuracy more than `max_retain_drop` below the original's."""
        p_unseen = _probabilities(model, self.unseen.x, delta, clip=cfg.clip)
        threshold = best_threshold(_true_confidence(p_mon, y_mon), _true_confidence(p_unseen, self.unseen.y))
        share = float((_true_confidence(p_fc, y_fc) < threshold).float().mean())
        unseen_acc = float((p_unseen.argmax(1) == self.unseen.y).float().mean())
        extra = (max(0.0, abs(share - self.non_member_share) - cfg.target_tolerance)
                 + max(0.0, self.unseen_accuracy - cfg.max_retain_drop - unseen_acc))
        return extra, {"non_member_share": share, "unseen_acc": unseen_acc}


def _log_odds(probabilities: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = _true_confidence(probabilities, y).double().clamp(1e-12, 1 - 1e-12)
    return (p.log() - (1 - p).log()).float()


@torch.no_grad()
def _predicted_in(model: nn.Module, x: torch.Tensor, classes: list[int], batch_size: int = 1024) -> torch.Tensor:
    """(N,) bool: the model's prediction for x (N, C, H, W) is one of `classes`."""
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.isin(torch.cat(out), torch.tensor(classes)) if out else torch.zeros(0, dtype=torch.bool)


def _accuracy_and_confidence(probabilities: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean true-class probability) from probabilities (N, K); (NaN, 0) for no samples."""
    if len(y) == 0:
        return float("nan"), 0.0
    return float((probabilities.argmax(1) == y).float().mean()), float(_true_confidence(probabilities, y).mean())
