"""Progress of a running job, written to the ledger for every request of its batch.

A job goes through the stages of `PLAN` in order; each reports how far it is (`stage_fraction`, 0..1) and the
overall `fraction` is the plan's weights done so far. The ETA is measured, never guessed: it stays null until
some stage after loading has reported a fraction above 0. The current stage's remainder comes from its own rate;
the stages after it from the seconds per unit of plan weight measured so far in this attempt (finished stages
count their whole weight, so a stage that stopped early, e.g. a forget vector reaching its target before its
epoch budget, does not inflate the rest). Loading is left out of the rate: its time depends on caches, not on
the work ahead. While a stage reports only its budget (epochs done out of the most allowed), its remainder is an
upper bound: early stopping ends it sooner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from models_store import Ledger
from workers.errors import RequestCancelled

STAGES = ("loading", "calibrating", "optimising", "verifying", "publishing")
PLAN = {"loading": 0.05, "calibrating": 0.1, "optimising": 0.7, "verifying": 0.1, "publishing": 0.05}
"""The expected share of a job each stage takes: loading the weights and data; calibrating (measuring the model as
served now, the baseline); optimising (the method's candidates, each judged by the utility guard); verifying
(measuring the result as it will be served); publishing (artifacts, the new served state, the report)."""
UNMEASURED = frozenset({"loading"})
"""Stages whose time says nothing about the rate of the work after them."""


class ProgressReporter:
    """`progress(stage_fraction, stage, force=False, **extra)`: records {stage, stage_fraction, fraction,
    elapsed_s, eta_s, **extra} for every request of the batch, at most every `min_interval_s` unless `force`, and
    raises RequestCancelled when one of them was cancelled meanwhile.

    Stages come in `STAGES` order and may be skipped; a stage's fraction never goes back. A stage earlier than the
    current one starts a new attempt (`auto` falling back to its next method): the fraction keeps what was
    reached and the new attempt fills the rest, and its rate is measured afresh."""

    def __init__(self, ledger: Ledger, request_ids: list[str], min_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.ledger, self.request_ids, self.min_interval_s, self.clock = ledger, request_ids, min_interval_s, clock
        self.started = clock()
        self.last_write: float | None = None
        self.base = 0.0  # overall fraction reached by earlier attempts
        self.stage: str | None = None
        self.stage_started = self.started
        self.stage_fraction = 0.0
        self.finished: list[tuple[float, float]] = []  # (plan weight, seconds) of measured stages done

    def __call__(self, stage_fraction: float, stage: str, force: bool = False, **extra: Any) -> None:
        now = self.clock()
        self._enter(stage, now)
        self.stage_fraction = max(self.stage_fraction, min(max(stage_fraction, 0.0), 1.0))
        if not force and self.last_write is not None and now - self.last_write < self.min_interval_s:
            return
        cancelled = self.ledger.cancel_requested(self.request_ids)
        if cancelled:
            raise RequestCancelled(", ".join(cancelled))
        eta = self._eta_s(stage, now)
        progress = {"stage": stage, "stage_fraction": round(self.stage_fraction, 4),
                    "fraction": round(self.fraction, 4), "elapsed_s": round(now - self.started, 2),
                    "eta_s": None if eta is None else round(eta, 1)}
        progress |= {k: v for k, v in extra.items() if k not in progress}
        for request_id in self.request_ids:
            self.ledger.set_progress(request_id, progress)
        self.last_write = now

    def _enter(self, stage: str, now: float) -> None:
        if stage not in PLAN:
            raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
        if stage == self.stage:
            return
        if self.stage is not None and STAGES.index(stage) < STAGES.index(self.stage):  # a new attempt
            self.base, self.finished = self.fraction, []
        elif self.stage is not None and self.stage not in UNMEASURED:
            self.finished.append((PLAN[self.stage], now - self.stage_started))
        self.stage, self.stage_started, self.stage_fraction = stage, now, 0.0

    @property
    def fraction(self) -> float:
        """Overall fraction: earlier attempts' share, then this attempt's plan weight done."""
        if self.stage is None:
            return self.base
        done = sum(PLAN[s] for s in STAGES[:STAGES.index(self.stage)]) + PLAN[self.stage] * self.stage_fraction
        return min(self.base + (1 - self.base) * done, 1.0)

    def _eta_s(self, stage: str, now: float) -> float | None:
        """Seconds left, or None while no rate is measured or when the current stage has outrun the estimate
        (see the module docstring)."""
        in_stage = now - self.stage_started
        measured_here = stage not in UNMEASURED and self.stage_fraction > 0 and in_stage > 0
        weight = sum(w for w, _ in self.finished) + (PLAN[stage] * self.stage_fraction if measured_here else 0)
        seconds = sum(s for _, s in self.finished) + (in_stage if measured_here else 0)
        if weight <= 0 or seconds <= 0:
            return None
        per_weight = seconds / weight
        later = per_weight * sum(PLAN[s] for s in STAGES[STAGES.index(stage) + 1:])
        if measured_here:
            return in_stage * (1 - self.stage_fraction) / self.stage_fraction + later
        left_here = per_weight * PLAN[stage] - in_stage
        return left_here + later if left_here > 0 else None
