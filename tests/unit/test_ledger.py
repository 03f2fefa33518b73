"""The ledger on both backends (`database`: SQLite and PostgreSQL, see tests/postgres_server.py)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, insert
from sqlalchemy.exc import IntegrityError

from models_store import Database, Ledger, NotFoundError, open_ledger, schema
from models_store.ledger import IdempotencyClaim, KeyInUse, NewRequest
from models_store.store import now_iso
from unlearnd.settings import Settings


def _create(ledger, request_id="r1", **extra):
    return ledger.create({"id": request_id, "model": "m", "classes": [3], "method": "auto", **extra})


@pytest.fixture
def ledger(database):
    return Ledger(database)


def test_new_request_is_queued_with_zero_progress(ledger):
    record = _create(ledger)
    assert record["status"] == "queued"
    assert record["progress"]["fraction"] == 0.0
    assert record["classes"] == [3] and record["samples"] is None and record["attempts"] == 0


def test_lifecycle_running_progress_succeeded(ledger):
    _create(ledger)
    assert ledger.mark_running("r1")
    assert ledger.set_progress("r1", {"fraction": 0.5, "stage": "optimising"})
    assert ledger.get("r1")["progress"]["fraction"] == 0.5
    assert ledger.mark_succeeded("r1", {"artifact_id": "a"})
    record = ledger.get("r1")
    assert record["status"] == "succeeded" and record["result"] == {"artifact_id": "a"}
    assert record["attempts"] == 1 and record["finished_at"] is not None
    actions = [e["action"] for e in ledger.audit_entries(request_id="r1")]
    assert actions == ["request.accepted", "request.running", "request.succeeded"]


def test_terminal_requests_do_not_change_again(ledger):
    _create(ledger)
    ledger.mark_failed("r1", "boom")
    assert not ledger.mark_running("r1")
    assert not ledger.mark_succeeded("r1", {})
    assert not ledger.mark_queued("r1", not_before=0.0, reason="x")
    assert not ledger.count_attempt("r1") and not ledger.set_progress("r1", {"fraction": 1.0})
    assert ledger.get("r1")["status"] == "failed" and ledger.get("r1")["error"] == "boom"
    assert [e["action"] for e in ledger.audit_entries(request_id="r1")] == ["request.accepted", "request.failed"]


def test_active_and_list_filters(ledger):
    for i in range(5):
        _create(ledger, f"r{i}")
    ledger.mark_succeeded("r0", {})
    assert [r["id"] for r in ledger.active()] == ["r1", "r2", "r3", "r4"]
    assert "samples" not in ledger.active()[0] and ledger.active()[0]["progress"] == ledger.get("r1")["progress"]
    assert [r["id"] for r in ledger.list(status="succeeded")] == ["r0"]
    first = ledger.list(limit=2)
    assert [r["id"] for r in ledger.list(limit=2, after_seq=first[-1]["seq"])] == ["r2", "r3"]


def test_ledger_survives_reopening(database):
    _create(Ledger(database))
    database.dispose()
    url = database.engine.url.render_as_string(hide_password=False)
    assert Ledger(Database.from_url(url)).get("r1")["model"] == "m"
    with pytest.raises(NotFoundError):
        Ledger(Database.from_url(url)).get("r2")


def test_open_ledger_uses_the_file_the_ledger_always_used(tmp_path):
    settings = Settings(data_dir=tmp_path)
    _create(open_ledger(settings))
    assert settings.ledger_path.exists() and open_ledger(settings).get("r1")["model"] == "m"


def test_requeue_through_no_fault_of_its_own_refunds_the_attempt_and_a_crash_does_not(ledger):
    _create(ledger)
    assert ledger.mark_running("r1") and ledger.get("r1")["attempts"] == 1
    assert ledger.mark_queued("r1", not_before=0.0, reason="partner cancelled", actor="worker", refund_attempt=True)
    assert ledger.get("r1")["attempts"] == 0
    assert ledger.mark_queued("r1", not_before=0.0, reason="again", refund_attempt=True)
    assert ledger.get("r1")["attempts"] == 0  # never below zero
    assert ledger.mark_running("r1")
    assert ledger.mark_queued("r1", not_before=0.0, reason="worker died")
    assert ledger.get("r1")["attempts"] == 1


def test_failed_request_keeps_what_was_measured(ledger):
    _create(ledger)
    ledger.mark_running("r1")
    assert ledger.mark_failed("r1", "UtilityGuardRefused: …", result={"guard_refusals": [{"method": "zero_shot"}]})
    record = ledger.get("r1")
    assert record["status"] == "failed" and record["result"]["guard_refusals"][0]["method"] == "zero_shot"


def test_list_filters_by_several_statuses_and_pages_newest_first(ledger):
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


def test_cancel_a_queued_request_at_once_and_a_running_one_through_its_worker(ledger):
    for i in range(3):
        _create(ledger, f"r{i}")
    ledger.mark_running("r1")
    assert ledger.request_cancel("r0", "admin") == "cancelled-now"
    assert ledger.request_cancel("r1", "admin") == "cancelling"
    assert ledger.cancel_requested(["r0", "r1", "r2"]) == ["r1"] and ledger.cancel_requested([]) == []
    assert ledger.mark_cancelled("r1", "worker")
    assert ledger.request_cancel("r1", "admin") == "cancelled"
    assert [r["status"] for r in ledger.list()] == ["cancelled", "cancelled", "queued"]
    with pytest.raises(NotFoundError):
        ledger.request_cancel("nope", "admin")
    assert sorted(ledger.counts_by_method_and_status()) == [("auto", "cancelled", 2), ("auto", "queued", 1)]


def test_jobs_callbacks_and_coalescing_candidates(ledger):
    for i, model in enumerate(["m", "m", "other", "m"]):
        ledger.create({"id": f"r{i}", "model": model, "samples": [1, 2], "method": "auto"})
    ledger.mark_running("r3")
    assert [r["id"] for r in ledger.queued_for_model("m", exclude="r0")] == ["r1"]
    assert ledger.set_job("r0", "job-1") and ledger.get("r0")["job_id"] == "job-1"
    assert ledger.set_job("r2", "job-2")
    assert ledger.job_ids(["r0", "r1", "r2", "nope"]) == {"r0": "job-1", "r2": "job-2"}  # r1 has none yet
    ledger.set_callback("r0", {"delivered": True, "status": 204})
    assert ledger.get("r0")["callback"] == {"delivered": True, "status": 204} and ledger.count() == 4
    assert ledger.get("r0")["samples"] == [1, 2] and ledger.get("r0")["classes"] is None


def test_audit_entries_filter_and_page(ledger):
    ledger.audit("model.registered", "admin-key", model="m", detail={"version": 1})
    ledger.audit("model.rollback", "admin-key", model="m")
    ledger.audit("model.registered", "other-key", model="n")
    registered = ledger.audit_entries(action="model.registered")
    assert [(e["actor"], e["detail"]) for e in registered] == [("admin-key", {"version": 1}), ("other-key", {})]
    assert [e["action"] for e in ledger.audit_entries(model="m", after_seq=registered[0]["seq"])] == ["model.rollback"]
    assert len(ledger.audit_entries(limit=2)) == 2


def _new(request_id, key=None, body="body"):
    claim = None if key is None else IdempotencyClaim("kid", key, body)
    record = {"id": request_id, "model": "m", "classes": [3], "method": "auto"}
    return NewRequest(record, job_id=f"{request_id}-job", claim=claim)


def _answer(record):
    return 202, f'{{"id": "{record["id"]}"}}', {"Location": f"/{record['id']}"}


def test_accept_records_a_group_in_one_transaction_each_request_alone(ledger):
    _create(ledger, "taken")
    outcomes = ledger.accept([_new("r1", key="k1"), _new("taken"), _new("r2", key="k1"), _new("r3")],
                             answer=_answer)
    first, clash, again, plain = outcomes
    assert first["id"] == "r1" and first["job_id"] == "r1-job" and first["status"] == "queued"
    assert isinstance(clash, IntegrityError)  # refused alone: the others are recorded
    assert isinstance(again, KeyInUse) and again.row["request_id"] == "r1"  # the same key later in the group
    assert (again.row["status_code"], again.row["response"], again.row["headers"]) == (
        202, '{"id": "r1"}', '{"Location": "/r1"}')
    assert plain["id"] == "r3"
    assert {r["id"] for r in ledger.list()} == {"taken", "r1", "r3"}
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k1", "body"))["request_id"] == "r1"
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k2", "body")) is None
    accepted = [e["request_id"] for e in ledger.audit_entries() if e["action"] == "request.accepted"]
    assert sorted(accepted) == ["r1", "r3", "taken"]


def test_a_group_without_conflicts_is_inserted_by_one_statement_per_table(ledger):
    statements = []
    event.listen(ledger.db.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement.split()[0].upper()))
    group = [_new(f"r{i}", key=f"k{i}" if i % 2 else None) for i in range(20)]
    outcomes = ledger.accept(group, answer=_answer)
    assert [o["id"] for o in outcomes] == [f"r{i}" for i in range(20)]
    assert all(o["status"] == "queued" and o["job_id"] == f"{o['id']}-job" for o in outcomes)
    # a read of the group's keys, then one multi-row INSERT each: requests, audit entries, keys
    assert [s for s in statements if s in ("SELECT", "INSERT")] == ["SELECT", "INSERT", "INSERT", "INSERT"]
    row = ledger.idempotency_row(IdempotencyClaim("kid", "k7", "body"))
    assert (row["request_id"], row["status_code"], row["response"]) == ("r7", 202, '{"id": "r7"}')
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k8", "body")) is None
    accepted = [e["request_id"] for e in ledger.audit_entries(limit=50) if e["action"] == "request.accepted"]
    assert sorted(accepted) == sorted(f"r{i}" for i in range(20))


def test_a_claim_bound_to_no_request_is_in_use_while_fresh_and_taken_over_when_stale(ledger):
    """Claims that older versions wrote before their request (their process died while accepting)."""
    with ledger.db.transaction() as conn:
        conn.execute(insert(schema.idempotency).values(key="k", key_id="kid", body_sha256="old",
                                                       created_at=now_iso()))
    [fresh] = ledger.accept([_new("r1", key="k")], answer=_answer, stale_claim_s=60)
    assert isinstance(fresh, KeyInUse) and fresh.row["request_id"] is None
    [taken] = ledger.accept([_new("r1", key="k")], answer=_answer, stale_claim_s=-1)
    assert taken["id"] == "r1"
    row = ledger.idempotency_row(IdempotencyClaim("kid", "k", "body"))
    assert (row["request_id"], row["body_sha256"], row["status_code"]) == ("r1", "body", 202)
    claim = IdempotencyClaim("kid", "k", "body")
    ledger.idempotency_finish(claim, "r1", 200, "{}", {})  # it has its answer: nothing to finish
    assert ledger.idempotency_row(claim)["status_code"] == 202


def test_the_answer_of_a_claim_whose_process_died_is_stored_only_for_its_request(ledger):
    """A late retry filling in the answer of a claim that another request has taken over since stores nothing."""
    with ledger.db.transaction() as conn:
        conn.execute(insert(schema.idempotency).values(key="k", key_id="kid", body_sha256="body", request_id="r1",
                                                       created_at=now_iso()))
    claim = IdempotencyClaim("kid", "k", "body")
    ledger.idempotency_finish(claim, "r0", 202, "r0's answer", {})
    assert ledger.idempotency_row(claim)["status_code"] is None
    ledger.idempotency_finish(claim, "r1", 202, "r1's answer", {})
    assert ledger.idempotency_row(claim)["response"] == "r1's answer"


def test_expired_keys_are_forgotten_and_deleted_in_batches(ledger):
    with ledger.db.transaction() as conn:
        conn.execute(insert(schema.idempotency), [
            {"key": f"k{n}", "key_id": "kid", "body_sha256": "body", "created_at": at}
            for n, at in enumerate([f"2000-01-01T00:00:0{n}.000+00:00" for n in range(7)] + [now_iso()])])
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k0", "body"), key_ttl_s=3600) is None
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k0", "body")) is not None  # no TTL: kept
    assert ledger.expire_idempotency_keys(3600, batch=3, max_batches=1) == 3  # the rest on the next call
    assert ledger.expire_idempotency_keys(3600, batch=3) == 4
    assert ledger.idempotency_row(IdempotencyClaim("kid", "k7", "body"), key_ttl_s=3600) is not None
    assert ledger.expire_idempotency_keys(3600, batch=3) == 0


def test_concurrent_claims_and_endings_each_happen_once(ledger):
    """Many threads (each on its own connection) race: one claim of a key wins, and one ending of a request."""
    _create(ledger)
    ledger.mark_running("r1")

    def end(i):
        return ledger.mark_succeeded("r1", {"by": i}) if i % 2 else ledger.mark_cancelled("r1", f"admin-{i}")

    with ThreadPoolExecutor(8) as pool:
        claims = [outcome for [outcome] in pool.map(
            lambda i: ledger.accept([_new(f"c{i}", key="k")], answer=_answer), range(16))]
        ended = list(pool.map(end, range(16)))
    [winner] = [c for c in claims if isinstance(c, dict)]
    assert all(isinstance(c, KeyInUse) and c.row["request_id"] == winner["id"] for c in claims if c is not winner)
    assert ended.count(True) == 1
    endings = [e for e in ledger.audit_entries(request_id="r1") if e["action"] in ("request.succeeded",
                                                                                    "request.cancelled")]
    assert len(endings) == 1
