import pytest

from models_store import Ledger, NotFoundError


def _create(ledger, request_id="r1", **extra):
    return ledger.create({"id": request_id, "model": "m", "classes": [3], "method": "auto", **extra})


def test_new_request_is_queued_with_zero_progress(tmp_path):
    record = _create(Ledger(tmp_path / "l.db"))
    assert record["status"] == "queued"
    assert record["progress"]["fraction"] == 0.0
    assert record["classes"] == [3] and record["samples"] is None and record["attempts"] == 0


def test_lifecycle_running_progress_succeeded(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _create(ledger)
    assert ledger.mark_running("r1")
    assert ledger.set_progress("r1", {"fraction": 0.5, "stage": "optimising"})
    assert ledger.get("r1")["progress"]["fraction"] == 0.5
    assert ledger.mark_succeeded("r1", {"artifact_id": "a"})
    record = ledger.get("r1")
    assert record["status"] == "succeeded" and record["result"] == {"artifact_id": "a"}
    assert record["attempts"] == 1 and record["finished_at"] is not None


def test_terminal_requests_do_not_change_again(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _create(ledger)
    ledger.mark_failed("r1", "boom")
    assert not ledger.mark_running("r1")
    assert not ledger.mark_succeeded("r1", {})
    assert not ledger.mark_queued("r1", not_before=0.0, reason="x")
    assert ledger.get("r1")["status"] == "failed" and ledger.get("r1")["error"] == "boom"


def test_active_and_list_filters(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    for i in range(5):
        _create(ledger, f"r{i}")
    ledger.mark_succeeded("r0", {})
    assert [r["id"] for r in ledger.active()] == ["r1", "r2", "r3", "r4"]
    assert [r["id"] for r in ledger.list(status="succeeded")] == ["r0"]
    first = ledger.list(limit=2)
    assert [r["id"] for r in ledger.list(limit=2, after_seq=first[-1]["seq"])] == ["r2", "r3"]


def test_ledger_survives_reopening(tmp_path):
    _create(Ledger(tmp_path / "l.db"))
    assert Ledger(tmp_path / "l.db").get("r1")["model"] == "m"
    with pytest.raises(NotFoundError):
        Ledger(tmp_path / "l.db").get("r2")


def test_requeue_through_no_fault_of_its_own_refunds_the_attempt_and_a_crash_does_not(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _create(ledger)
    assert ledger.mark_running("r1") and ledger.get("r1")["attempts"] == 1
    assert ledger.mark_queued("r1", not_before=0.0, reason="partner cancelled", actor="worker", refund_attempt=True)
    assert ledger.get("r1")["attempts"] == 0
    assert ledger.mark_running("r1")
    assert ledger.mark_queued("r1", not_before=0.0, reason="worker died")
    assert ledger.get("r1")["attempts"] == 1


def test_failed_request_keeps_what_was_measured(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    _create(ledger)
    ledger.mark_running("r1")
    assert ledger.mark_failed("r1", "UtilityGuardRefused: …", result={"guard_refusals": [{"method": "zero_shot"}]})
    record = ledger.get("r1")
    assert record["status"] == "failed" and record["result"]["guard_refusals"][0]["method"] == "zero_shot"


def test_list_filters_by_several_statuses_and_pages_newest_first(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    for i in range(5):
        _create(ledger, f"r{i}")
    ledger.mark_running("r1")
    ledger.mark_running("r3")
    ledger.mark_failed("r3", "boom")
    assert [r["id"] for r in ledger.list(statuses=["running", "failed"])] == ["r1", "r3"]
    first = ledger.list(limit=2, newest_first=True)
    assert [r["id"] for r in first] == ["r4", "r3"]
    rest = ledger.list(limit=10, newest_first=True, after_seq=first[-1]["seq"])
    assert [r["id"] for r in rest] == ["r2", "r1", "r0"]
