"""workers.progress: stages with their own fractions, an overall fraction that never goes back, and an ETA that is
null until a rate is measured after loading."""

from __future__ import annotations

import pytest

from workers.errors import RequestCancelled
from workers.progress import PLAN, STAGES, ProgressReporter


class FakeLedger:
    def __init__(self):
        self.written: dict[str, list[dict]] = {}
        self.cancelled: list[str] = []

    def cancel_requested(self, request_ids):
        return [r for r in request_ids if r in self.cancelled]

    def set_progress(self, request_id, progress):
        self.written.setdefault(request_id, []).append(progress)
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reporter():
    ledger, clock = FakeLedger(), Clock()
    return ProgressReporter(ledger, ["fr_a", "fr_b"], min_interval_s=0.5, clock=clock), ledger, clock


def test_the_plan_covers_every_stage_once():
    assert tuple(PLAN) == STAGES and sum(PLAN.values()) == pytest.approx(1.0)


def test_fractions_and_an_eta_measured_only_after_loading(reporter):
    progress, ledger, clock = reporter
    progress(0.0, "loading", force=True)
    clock.now += 10  # a slow load: says nothing about the work ahead
    progress(0.0, "calibrating", force=True)
    clock.now += 1
    progress(0.0, "optimising", force=True)
    clock.now += 2
    progress(0.25, "optimising", epoch=5, forget_acc=0.4)
    written = ledger.written["fr_a"]
    assert ledger.written["fr_b"] == written  # every request of the batch
    loading, calibrating, starting, measured = written
    assert loading == {"stage": "loading", "stage_fraction": 0.0, "fraction": 0.0, "elapsed_s": 0.0, "eta_s": None}
    assert calibrating["fraction"] == pytest.approx(PLAN["loading"]) and calibrating["eta_s"] is None
    # optimising has not moved yet: the rate of calibrating alone (1 s for its weight) predicts the rest
    assert starting["eta_s"] == pytest.approx((PLAN["optimising"] + PLAN["verifying"] + PLAN["publishing"])
                                              / PLAN["calibrating"], abs=0.1)
    assert measured["stage"] == "optimising" and measured["stage_fraction"] == 0.25
    assert measured["fraction"] == pytest.approx(PLAN["loading"] + PLAN["calibrating"] + 0.25 * PLAN["optimising"],
                                                 abs=1e-4)
    assert measured["elapsed_s"] == 13.0 and measured["epoch"] == 5 and measured["forget_acc"] == 0.4
    # this stage: 2 s for a quarter -> 6 s left; later stages at the seconds per weight measured so far
    per_weight = (1 + 2) / (PLAN["calibrating"] + 0.25 * PLAN["optimising"])
    expected = 6 + per_weight * (PLAN["verifying"] + PLAN["publishing"])
    assert measured["eta_s"] == pytest.approx(expected, abs=0.1)


def test_a_stage_that_stopped_early_does_not_inflate_the_eta_of_the_rest(reporter):
    progress, ledger, clock = reporter
    for stage, seconds in (("loading", 5), ("calibrating", 1)):
        progress(0.0, stage, force=True)
        clock.now += seconds
    progress(0.05, "optimising", force=True)  # 5 % of the epoch budget...
    clock.now += 2
    progress(0.0, "verifying", force=True)  # ...and the target was reached: the stage ends early
    verifying = ledger.written["fr_a"][-1]
    per_weight = (1 + 2) / (PLAN["calibrating"] + PLAN["optimising"])
    assert verifying["eta_s"] == pytest.approx(per_weight * (PLAN["verifying"] + PLAN["publishing"]), abs=0.1)
    assert verifying["fraction"] == pytest.approx(1 - PLAN["verifying"] - PLAN["publishing"], abs=1e-4)


def test_an_eta_that_ran_out_is_null_not_zero(reporter):
    progress, ledger, clock = reporter
    progress(0.0, "calibrating", force=True)
    clock.now += 1
    progress(0.0, "publishing", force=True)
    clock.now += 10  # publishing takes far longer than its weight predicted
    progress(0.0, "publishing", force=True)
    assert ledger.written["fr_a"][-1]["eta_s"] is None


def test_reports_are_throttled_unless_forced_and_fractions_never_go_back(reporter):
    progress, ledger, clock = reporter
    progress(0.0, "optimising", force=True)
    clock.now += 0.1
    progress(0.5, "optimising")  # within min_interval_s: not written
    assert len(ledger.written["fr_a"]) == 1
    clock.now += 1
    progress(0.3, "optimising")  # a lower stage fraction (e.g. a second attempt) keeps what was reached
    assert ledger.written["fr_a"][-1]["stage_fraction"] == 0.5


def test_a_fallback_method_starting_over_keeps_the_fraction_reached(reporter):
    progress, ledger, clock = reporter
    for stage in ("loading", "calibrating", "optimising"):
        progress(0.0, stage, force=True)
        clock.now += 1
    progress(1.0, "optimising", force=True)  # refused by the guard: auto tries its next method
    reached = ledger.written["fr_a"][-1]["fraction"]
    progress(0.0, "loading", force=True)
    restart = ledger.written["fr_a"][-1]
    assert restart["fraction"] == pytest.approx(reached, abs=1e-4) and restart["eta_s"] is None
    clock.now += 1
    progress(0.0, "publishing", force=True)
    assert reached < ledger.written["fr_a"][-1]["fraction"] < 1.0


def test_extra_figures_never_replace_the_progress_fields(reporter):
    progress, ledger, _ = reporter
    progress(0.5, "optimising", force=True, fraction=9, detail="class vector 3", attempt=2)
    written = ledger.written["fr_a"][-1]
    assert written["fraction"] != 9 and written["detail"] == "class vector 3" and written["attempt"] == 2


def test_cancellation_and_unknown_stages(reporter):
    progress, ledger, _ = reporter
    with pytest.raises(ValueError, match="unknown stage"):
        progress(0.1, "evaluating", force=True)
    ledger.cancelled.append("fr_b")
    with pytest.raises(RequestCancelled, match="fr_b"):
        progress(0.1, "optimising", force=True)
