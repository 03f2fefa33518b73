"""workers.jobs observes job durations by method and outcome, and guard refusals by method."""

import pytest

from service.metrics import GUARD_REFUSALS, JOB_DURATION
from unlearning.errors import CandidateRejected
from workers import jobs


def _count(method: str, outcome: str) -> float:
    return next(s.value for m in JOB_DURATION.collect() for s in m.samples
             if s.name.endswith("_count") and s.labels == {"method": method, "outcome": outcome})


class _Refusing:
    name = "forget_vector"

    def load(self):
        def run(store, batch, settings, progress):
            raise CandidateRejected("dropped 9 points", guard={"drop": 0.09})
        return run


def test_a_guard_refusal_is_counted_and_the_job_observed_as_guard_refused(monkeypatch):
    refusals = GUARD_REFUSALS.labels("forget_vector")._value.get()
    JOB_DURATION.labels("forget_vector", "guard_refused")  # the series exists before the job
    before = _count("forget_vector", "guard_refused")
    monkeypatch.setattr(jobs, "ProgressReporter", lambda ledger, ids: None)
    batch = [{"id": "fr_1", "method": "forget_vector"}]
    with pytest.raises(jobs.AllCandidatesRejected):
        jobs._compute_batch(None, None, None, [_Refusing()], batch)  # type: ignore[arg-type]
    assert GUARD_REFUSALS.labels("forget_vector")._value.get() - refusals == 1
    assert _count("forget_vector", "guard_refused") - before == 1


def test_an_unexpected_error_is_observed_as_error(monkeypatch):
    JOB_DURATION.labels("auto", "error")
    before = _count("auto", "error")

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "_run_plan", boom)
    monkeypatch.setattr(jobs, "ProgressReporter", lambda ledger, ids: None)
    with pytest.raises(RuntimeError):
        jobs._compute_batch(None, None, None, [], [{"id": "fr_1", "method": "auto"}])  # type: ignore[arg-type]
    assert _count("auto", "error") - before == 1
