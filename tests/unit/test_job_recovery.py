"""A job that dies after publishing and before recording its requests: the retry finishes from what was
published instead of computing again (zero-shot would otherwise smooth the smoothed weights a second time)."""

import pytest

from models_store import Ledger, Store, open_ledger
from unlearnd.demo import DEMO_MODEL, ensure_demo_model
from unlearnd.runtime import load_image_sets
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings, get_settings
from workers import jobs


class Died(BaseException):
    """Stands in for a SIGKILL between publishing and recording."""


@pytest.fixture
def installation(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARND_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("UNLEARND_API_KEYS", "admin:a")
    get_settings.cache_clear()
    settings = Settings()
    store, ledger = open_store(settings), open_ledger(settings)
    ensure_demo_model(store, epochs=5)
    yield store, ledger
    get_settings.cache_clear()


def test_retry_after_publish_records_the_published_outcome_without_recomputing(installation, monkeypatch):
    store, ledger = installation
    train, _ = load_image_sets(store, "digits")
    ledger.create({"id": "fr_a", "model": DEMO_MODEL, "samples": list(train.ids[:30]), "method": "zero_shot"})
    weights_0 = store.read_state(DEMO_MODEL).weights_sha256

    record_success = Ledger.mark_succeeded

    def die(self, *args, **kwargs):
        raise Died

    monkeypatch.setattr(Ledger, "mark_succeeded", die)
    with pytest.raises(Died):
        jobs.process_forget_request("fr_a")
    published = store.read_state(DEMO_MODEL)
    assert published.weights_sha256 != weights_0 and published.covers("fr_a")
    assert ledger.get("fr_a")["status"] == "running"

    # what the janitor does with a crashed job: back in line, then the job runs again
    monkeypatch.setattr(Ledger, "mark_succeeded", record_success)
    assert ledger.mark_queued("fr_a", not_before=0.0, reason="worker died")
    outcome = jobs.process_forget_request("fr_a")

    assert outcome["status"] == "succeeded" and outcome["batch"] == ["fr_a"]
    assert store.read_state(DEMO_MODEL) == published  # nothing computed or published again
    record = ledger.get("fr_a")
    assert record["status"] == "succeeded"
    assert record["result"]["weights_sha256"] == published.weights_sha256
    assert record["result"]["state_version"] == published.state_version
    assert record["result"]["metrics"]["after"]["UA"] is not None
    receipt = record["receipt"]["receipt"]
    assert receipt["weights_sha256_before"] == weights_0
    assert receipt["weights_sha256_after"] == published.weights_sha256


def test_a_member_that_makes_its_batch_fail_fails_alone_and_the_others_are_computed(installation, monkeypatch):
    store, ledger = installation
    ledger.create({"id": "fr_bad", "model": DEMO_MODEL, "classes": [3], "method": "zero_shot"})
    ledger.create({"id": "fr_good", "model": DEMO_MODEL, "classes": [2], "method": "zero_shot"})
    calls = []

    def run_plan(plan, store_, batch, settings, progress):  # stands in for a method that cannot compute fr_bad
        calls.append([r["id"] for r in batch])
        raise jobs.UnlearningError("fr_bad cannot be computed")

    monkeypatch.setattr(jobs, "_run_plan", run_plan)
    summary = jobs.process_forget_request("fr_bad")

    assert calls == [["fr_bad", "fr_good"], ["fr_bad"]]  # the batch, then the culprit alone
    assert summary["status"] == "failed" and ledger.get("fr_bad")["status"] == "failed"
    good = ledger.get("fr_good")
    assert good["status"] == "queued" and good["attempts"] == 0  # back in line; its attempt is refunded


def test_a_job_whose_state_was_replaced_meanwhile_goes_back_in_line_without_publishing(installation, monkeypatch):
    """Another host publishes on the model between this job's read of the state and its publication."""
    store, ledger = installation
    ledger.create({"id": "fr_s", "model": DEMO_MODEL, "classes": [2], "method": "forget_vector"})
    real_publish = Store.publish_state
    rival = {}

    def rival_first(self, state):
        if not rival:  # once: the rival's state lands first, on the version this job computed from
            rival["state"] = real_publish(self, self.read_state(state.model).advanced(requests=["fr_rival"]))
        return real_publish(self, state)

    monkeypatch.setattr(Store, "publish_state", rival_first)
    summary = jobs.process_forget_request("fr_s")
    assert summary["status"] == "queued"
    record = ledger.get("fr_s")
    assert record["status"] == "queued" and record["attempts"] == 0  # requeued, the attempt refunded
    assert store.read_state(DEMO_MODEL) == rival["state"]  # nothing of this job was published

    monkeypatch.setattr(Store, "publish_state", real_publish)
    assert jobs.process_forget_request("fr_s")["status"] == "succeeded"  # computed again, on the rival's state
    state = store.read_state(DEMO_MODEL)
    assert state.requests == ("fr_rival", "fr_s") and state.forgotten_classes == (2,)
