"""Bad input gets a 4xx problem and changes nothing; no Redis needed for these decisions."""


import hashlib

import pytest
import torch

from models_store import open_ledger
from models_store.store import now_iso
from service.idempotency import idempotency_key
from tests.service.conftest import KEYS, auth


@pytest.mark.parametrize(("body", "needle"), [
    ({}, "exactly one"),
    ({"classes": [1], "samples": ["a"]}, "exactly one"),
    ({"classes": []}, "classes"),
    ({"classes": [1, 1]}, "duplicates"),
    ({"classes": ["x"]}, "classes"),
    ({"classes": [1], "method": "magic"}, "method"),
    ({"classes": [1], "colour": "red"}, "colour"),
    ({"classes": [10]}, "outside 0..9"),
    ({"classes": [-1]}, "outside 0..9"),
    ({"classes": list(range(10))}, "no class to predict"),
])
def test_bad_forget_requests_are_422_and_record_nothing(client, settings, model_store, body, needle):
    response = client.post("/v1/models/tiny/forget-requests", json=body, headers=auth("governance"))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and needle in (problem.get("detail", "") + str(problem.get("errors")))
    assert open_ledger(settings).list() == []


def test_a_request_that_would_forget_the_last_remaining_classes_is_422(client, settings, model_store):
    state = model_store.read_state("tiny")
    model_store.publish_state(state.advanced(forgotten_classes=[0, 1, 2, 3], smoothed_classes=[4, 5, 6]))
    refused = client.post("/v1/models/tiny/forget-requests", json={"classes": [7, 8, 9]}, headers=auth("governance"))
    assert refused.status_code == 422 and "7 already forgotten" in refused.json()["detail"]
    accepted = client.post("/v1/models/tiny/forget-requests", json={"classes": [7, 8]}, headers=auth("governance"))
    assert accepted.status_code == 202, accepted.text


def test_unknown_model_is_404(client, model_store):
    response = client.post("/v1/models/nope/forget-requests", json={"classes": [1]},
                           headers=auth("governance"))
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_accepted_even_when_redis_is_down(client, settings, model_store):
    """The ledger row is the promise: 202 without Redis, the janitor enqueues it later."""
    for body in ({"samples": ["a"]}, {"classes": [1], "method": "zero_shot"}, {"classes": [2]}):
        response = client.post("/v1/models/tiny/forget-requests", json=body, headers=auth("admin"))
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/forget-requests/{response.json()['id']}"
    records = open_ledger(settings).list()
    assert [r["status"] for r in records] == ["queued"] * 3 and all(r["job_id"] for r in records)


def test_a_request_whose_enqueue_fails_after_its_row_is_committed_still_gets_its_202(client, settings, model_store,
                                                                                     monkeypatch):
    """Not only Redis errors: whatever fails after the commit, the row stands, so the caller must not see a 500 (it
    would send the request again)."""
    def broken(*args, **kwargs):
        raise ValueError("a bug in enqueueing")

    monkeypatch.setattr("service.intake.enqueue_jobs", broken)
    response = client.post("/v1/models/tiny/forget-requests", json={"classes": [1]}, headers=auth("governance"))
    assert response.status_code == 202, response.text
    assert [r["id"] for r in open_ledger(settings).list()] == [response.json()["id"]]


def test_unknown_sample_ids_are_listed(client, settings, model_store):
    body = {"samples": ["a", "zz", "../etc"]}
    response = client.post("/v1/models/tiny/forget-requests", json=body, headers=auth("governance"))
    assert response.status_code == 422
    assert response.json()["unknown_ids"] == ["zz", "../etc"] and "2 ids" in response.json()["detail"]
    everything = client.post("/v1/models/tiny/forget-requests", json={"samples": ["a", "b", "c"]},
                             headers=auth("governance"))
    assert everything.status_code == 422 and "every training sample" in everything.json()["detail"]
    assert open_ledger(settings).list() == []


def test_malformed_json_is_a_problem(client, model_store):
    response = client.post("/v1/models/tiny/forget-requests", content=b"{not json",
                           headers={**auth("governance"), "Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["title"] == "Invalid request"


@pytest.mark.parametrize(("inputs", "status", "needle"), [
    ([[[[0.0] * 8] * 8]], 200, None),
    ([[[[0.0] * 4] * 8]], 422, "expected [N, 1, 8, 8]"),
    ([[[[1.5] * 8] * 8]], 422, "[0, 1]"),
    ([[[[-0.1] * 8] * 8]], 422, "[0, 1]"),
    ([[[[0.0] * 8] * 7 + [[0.0] * 7]]], 422, "equally shaped"),
    ([[[["a"] * 8] * 8]], 422, "numbers"),
])
def test_predict_validates_inputs(client, model_store, inputs, status, needle):
    response = client.post("/v1/models/tiny/predict", json={"inputs": inputs}, headers=auth("inference"))
    assert response.status_code == status, response.text
    if needle:
        assert needle in response.json()["detail"]
    else:
        body = response.json()
        assert body["applied"] == [] and len(body["predictions"][0]["probabilities"]) == 10
        assert abs(sum(body["predictions"][0]["probabilities"]) - 1) < 1e-4


def test_predict_refuses_nan(client, model_store):
    body = '{"inputs": [[[' + ",".join(["[" + ",".join(["NaN"] * 8) + "]"] * 8) + "]]]}"
    response = client.post("/v1/models/tiny/predict", content=body.encode(),
                           headers={**auth("inference"), "Content-Type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.json()["detail"]


def test_predict_refuses_an_integer_beyond_any_float(client, model_store):
    body = '{"inputs": [' + "9" * 400 + "]}"
    response = client.post("/v1/models/tiny/predict", content=body.encode(),
                           headers={**auth("inference"), "Content-Type": "application/json"})
    assert response.status_code == 422 and "numbers" in response.json()["detail"]


def test_predict_batch_limit(client, settings, model_store):
    inputs = [[[[0.0] * 8] * 8]] * (settings.max_predict_batch + 1)
    response = client.post("/v1/models/tiny/predict", json={"inputs": inputs}, headers=auth("inference"))
    assert response.status_code == 413


def test_oversized_body_is_413(settings, model_store):
    from fastapi.testclient import TestClient

    from service.main import create_app

    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small)) as c:
        response = c.post("/v1/models/tiny/predict", content=b"x" * 5000,
                          headers={**auth("inference"), "Content-Type": "application/json"})
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"


def test_oversized_chunked_body_is_413(settings, model_store):
    """No Content-Length: the limit is enforced on the bytes that arrive."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    def chunks():
        for _ in range(5):
            yield b"x" * 1000

    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small)) as c:
        response = c.post("/v1/models/tiny/predict", content=chunks(),
                          headers={**auth("inference"), "Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
    assert "UNLEARND_MAX_BODY_BYTES" in response.json()["detail"]


def test_tampered_artifact_is_refused_not_served(client, settings, model_store):
    state = model_store.read_state("tiny")
    manifest = model_store.put_artifact({"delta": torch.zeros(1, 8, 8)}, {
        "kind": "forget_vector", "model": "tiny", "weights_sha256": state.weights_sha256,
        "request_ids": []})
    model_store.publish_state(state.advanced(artifacts=[manifest["id"]]))
    path = settings.store_dir / "artifacts" / f"{manifest['id']}.safetensors"
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # one element of δ becomes 1.0
    path.write_bytes(bytes(data))
    response = client.post("/v1/models/tiny/predict", json={"inputs": [[[[0.0] * 8] * 8]]},
                           headers=auth("inference"))
    assert response.status_code == 503 and "altered" in response.json()["detail"]


def test_artifact_bound_to_other_weights_is_refused(client, model_store):
    state = model_store.read_state("tiny")
    manifest = model_store.put_artifact({"delta": torch.zeros(1, 8, 8)}, {
        "kind": "forget_vector", "model": "tiny", "weights_sha256": "f" * 64, "request_ids": []})
    model_store.publish_state(state.advanced(artifacts=[manifest["id"]]))
    response = client.post("/v1/models/tiny/predict", json={"inputs": [[[[0.0] * 8] * 8]]},
                           headers=auth("inference"))
    assert response.status_code == 503 and "other weights" in response.json()["detail"]


def test_unknown_route_and_wrong_method_are_problems_with_a_detail(client):
    missing = client.get("/v1/no-such-thing", headers=auth("admin"))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Not Found" and "/v1/no-such-thing" in missing.json()["detail"]
    wrong = client.put("/v1/models", headers=auth("admin"))
    assert wrong.status_code == 405 and "PUT" in wrong.json()["detail"]


@pytest.mark.parametrize(("path", "allow"), [
    ("/v1/models", "GET, HEAD, POST"),  # two routes serve the path: the 405 names the methods of both
    ("/v1/datasets", "GET, HEAD, POST"),
    ("/v1/forget-requests/fr_x", "DELETE, GET, HEAD"),
    ("/v2/models/tiny/infer", "POST"),
])
def test_a_405_allows_every_method_of_its_path(client, path, allow):
    response = client.put(path, headers=auth("admin"))
    assert response.status_code == 405 and response.headers["Allow"] == allow


BODY = b'{"classes": [1]}'
LEGACY_DIGEST = hashlib.sha256(b"tiny\0" + BODY).hexdigest()
"""What versions before canonical digests bound a key to: model and raw body (still matched)."""


def _idempotent_post(client, key):
    return client.post("/v1/models/tiny/forget-requests", content=BODY,
                       headers={**auth("governance"), "Idempotency-Key": key,
                                "Content-Type": "application/json"})


def _claim_left_by_older_version(settings, key_id, key, request_id=None):
    """A claim as versions before group commit wrote it: before its request, its answer stored last."""
    import sqlite3

    with sqlite3.connect(settings.ledger_path) as db:
        db.execute("INSERT INTO idempotency (key, key_id, body_sha256, created_at, request_id) "
                   "VALUES (?, ?, ?, ?, ?)", (key, key_id, LEGACY_DIGEST, now_iso(), request_id))


def test_idempotency_key_of_a_request_accepted_by_a_process_that_died_replays_it(
    client, settings, model_store
):
    """An older version's process claimed the key and committed the request, then died before storing its
    answer."""
    from unlearnd.security.secret_files import key_id

    ledger, gov = open_ledger(settings), key_id(KEYS["governance"])
    ledger.create({"id": "fr_first", "model": "tiny", "classes": [1], "method": "auto", "key_id": gov})
    _claim_left_by_older_version(settings, gov, "k1", request_id="fr_first")
    replay = _idempotent_post(client, "k1")
    assert replay.status_code == 202, replay.text
    assert replay.json()["id"] == "fr_first" and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == "/v1/forget-requests/fr_first"
    assert ledger.count() == 1


def test_stale_idempotency_claim_with_no_request_is_taken_over(client, settings, model_store):
    """An older version's process claimed the key and died before accepting: after a while a retry goes ahead."""
    import sqlite3

    from unlearnd.security.secret_files import key_id

    ledger, gov = open_ledger(settings), key_id(KEYS["governance"])
    _claim_left_by_older_version(settings, gov, "k2")
    assert _idempotent_post(client, "k2").status_code == 409  # fresh claim: the first may still be accepting
    with sqlite3.connect(settings.ledger_path) as db:
        db.execute("UPDATE idempotency SET created_at = '2000-01-01T00:00:00.000+00:00' WHERE key = 'k2'")
    accepted = _idempotent_post(client, "k2")
    assert accepted.status_code == 202, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers and ledger.count() == 1
    replay = _idempotent_post(client, "k2")
    assert replay.json()["id"] == accepted.json()["id"] and replay.headers["Idempotent-Replayed"] == "true"



def test_idempotency_key_of_a_refused_request_is_released(client, settings, model_store):
    """A refused request stores no answer under its key: the client may fix the body and retry with it."""
    headers = {**auth("governance"), "Idempotency-Key": "k3", "Content-Type": "application/json"}
    refused = client.post("/v1/models/tiny/forget-requests", content=b'{"classes": [40]}', headers=headers)
    assert refused.status_code == 422 and "outside" in refused.json()["detail"]
    accepted = client.post("/v1/models/tiny/forget-requests", content=b'{"classes": [4]}', headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert "Idempotent-Replayed" not in accepted.headers and open_ledger(settings).count() == 1


def test_a_retry_of_an_accepted_request_is_replayed_even_when_its_checks_would_refuse_it_now(
        client, settings, model_store):
    """draft-ietf-httpapi-idempotency-key-header: a duplicate gets the first answer. Here another request has
    forgotten classes since, so the same body checked afresh would leave the model no class: still a replay."""
    headers = {**auth("governance"), "Idempotency-Key": "k4", "Content-Type": "application/json"}
    body = b'{"classes": [7, 8, 9]}'
    first = client.post("/v1/models/tiny/forget-requests", content=body, headers=headers)
    assert first.status_code == 202, first.text
    state = model_store.read_state("tiny")
    model_store.publish_state(state.advanced(forgotten_classes=[0, 1, 2, 3], smoothed_classes=[4, 5, 6]))
    retry = client.post("/v1/models/tiny/forget-requests", content=body, headers=headers)
    assert retry.status_code == 202, retry.text
    assert retry.json()["id"] == first.json()["id"] and retry.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/models/tiny/forget-requests", content=b'{"classes": [8, 9]}', headers=headers)
    assert other.status_code == 422 and other.json()["title"] == "Idempotency key reused"
    fresh = client.post("/v1/models/tiny/forget-requests", content=body, headers=auth("governance"))
    assert fresh.status_code == 422 and "no class" in fresh.json()["detail"]  # the check itself still refuses
    assert open_ledger(settings).count() == 1


def test_a_retry_of_an_accepted_request_is_replayed_after_its_callback_host_moved(
        tmp_path, model_store, monkeypatch):
    """The callback host resolved to an allowed address when the request was accepted and to a refused one at
    the retry (no traffic: the resolver is a stub)."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from unlearnd import callbacks
    from unlearnd.settings import Settings

    addresses = {"hooks.test": ["127.0.0.1"]}
    monkeypatch.setattr(callbacks, "resolve", lambda host, port: addresses[host])
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0",
                        callback_allow="127.0.0.0/8", api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()))
    body = b'{"classes": [1], "callback_url": "http://hooks.test:9/hook"}'
    headers = {**auth("governance"), "Idempotency-Key": "k5", "Content-Type": "application/json"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        first = c.post("/v1/models/tiny/forget-requests", content=body, headers=headers)
        assert first.status_code == 202, first.text
        addresses["hooks.test"] = ["10.0.0.1"]
        retry = c.post("/v1/models/tiny/forget-requests", content=body, headers=headers)
        assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true", retry.text
        assert retry.json()["id"] == first.json()["id"]
        refused = c.post("/v1/models/tiny/forget-requests", content=body, headers=auth("governance"))
        assert refused.status_code == 422 and "callback_url" in refused.json()["detail"]


def test_rollback_of_an_unknown_model_is_404_and_writes_nothing(client, settings):
    response = client.post("/v1/models/nope/rollback", json={"state_version": 1}, headers=auth("admin"))
    assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    assert not (settings.store_dir / "models" / "nope").exists()


def test_rollback_while_a_job_holds_the_model_is_409(client, model_store):
    state = model_store.read_state("tiny")
    model_store.publish_state(state.advanced())
    with model_store.model_lock("tiny"):  # what a running forget job holds
        response = client.post("/v1/models/tiny/rollback", json={"state_version": 1}, headers=auth("admin"))
    assert response.status_code == 409 and "retry" in response.json()["detail"]
    assert model_store.read_state("tiny").state_version == 2
    response = client.post("/v1/models/tiny/rollback", json={"state_version": 1}, headers=auth("admin"))
    assert response.status_code == 200 and response.json()["rolled_back_to"] == 1


def test_rollback_that_would_un_forget_names_the_requests_and_needs_them_listed_with_a_reason(
        client, settings, model_store):
    ledger = open_ledger(settings)
    ledger.create({"id": "fr_done", "model": "tiny", "classes": [1], "method": "auto"})
    ledger.mark_running("fr_done")
    ledger.mark_succeeded("fr_done", {"artifact_id": "a"})
    state = model_store.read_state("tiny")
    model_store.publish_state(state.advanced(requests=["fr_done"]))
    admin = auth("admin")

    refused = client.post("/v1/models/tiny/rollback", json={"state_version": 1, "reason": "r"}, headers=admin)
    assert refused.status_code == 409 and refused.json()["requests"] == ["fr_done"]
    stray = client.post("/v1/models/tiny/rollback", json={"state_version": 1, "reason": "r",
                                                          "reinstate": ["fr_done", "fr_other"]}, headers=admin)
    assert stray.status_code == 422 and "fr_other" in stray.json()["detail"]
    no_reason = client.post("/v1/models/tiny/rollback", json={"state_version": 1, "force": True}, headers=admin)
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
    assert model_store.read_state("tiny").state_version == 2 and ledger.get("fr_done")["status"] == "succeeded"

    done = client.post("/v1/models/tiny/rollback", json={"state_version": 1, "reason": "court order",
                                                        "reinstate": ["fr_done"]}, headers=admin)
    assert done.status_code == 200 and done.json()["requests"] == []
    record = ledger.get("fr_done")
    assert record["status"] == "reverted" and record["result"]["reverted"]["reason"] == "court order"
    assert record["result"]["artifact_id"] == "a"  # what was computed stays on record


def test_an_accepted_request_is_enqueued_carrying_only_its_id(settings, model_store):
    """The intake's queue replaced by one that records what the API enqueues instead of Redis."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    enqueued = []

    class RecordingQueue:
        def enqueue_many(self, job_datas):
            enqueued.extend((data.func, data.args, data.job_id) for data in job_datas)

    app = create_app(settings)
    app.state.intake.queue = RecordingQueue()
    with TestClient(app) as c:
        response = c.post("/v1/models/tiny/forget-requests", json={"classes": [1]},
                          headers=auth("governance"))
    assert response.status_code == 202, response.text
    request_id = response.json()["id"]
    [(function, args, job_id)] = enqueued
    assert function == "workers.jobs.process_forget_request" and args == (request_id,)
    assert open_ledger(settings).get(request_id)["job_id"] == job_id


@pytest.mark.parametrize(("options", "expected"), [
    ({}, "classes.0: not an int; bare"),
    ({"limit": 1}, "classes.0: not an int"),
    ({"unnamed": "body"}, "classes.0: not an int; body: bare"),
    ({"prefix": "metadata"}, "metadata.classes.0: not an int; metadata: bare"),
])
def test_validation_errors_read_as_one_line(options, expected):
    from service.errors import describe_errors

    errors = [{"loc": ("classes", 0), "msg": "not an int"}, {"loc": (), "msg": "bare"}]
    assert describe_errors(errors, **options) == expected


def test_list_takes_several_statuses_and_newest_first_and_names_an_unknown_status(client, settings, model_store):
    ledger = open_ledger(settings)
    for i in range(3):
        ledger.create({"id": f"fr_{i}", "model": "tiny", "classes": [1], "method": "auto"})
    ledger.mark_running("fr_1")
    gov = auth("governance")
    both = client.get("/v1/forget-requests", params={"status": "queued,running"}, headers=gov).json()
    assert [r["id"] for r in both["data"]] == ["fr_0", "fr_1", "fr_2"]
    running = client.get("/v1/forget-requests", params={"status": "running"}, headers=gov).json()
    assert [r["id"] for r in running["data"]] == ["fr_1"]
    page = client.get("/v1/forget-requests", params={"order": "desc", "limit": 2}, headers=gov).json()
    assert [r["id"] for r in page["data"]] == ["fr_2", "fr_1"] and page["next_cursor"]
    rest = client.get("/v1/forget-requests", params={"order": "desc", "cursor": page["next_cursor"]},
                      headers=gov).json()
    assert [r["id"] for r in rest["data"]] == ["fr_0"] and rest["next_cursor"] is None
    bad = client.get("/v1/forget-requests", params={"status": "queued,done"}, headers=gov)
    assert bad.status_code == 422 and "done" in bad.json()["detail"]


@pytest.mark.parametrize(("path", "role"), [("/healthz", None), ("/v1/models", "admin"), ("/v1/models/tiny", "admin"),
                                            ("/v2/models/tiny", "inference"), ("/v1/models", None)])
def test_head_answers_what_get_answers_without_content(client, model_store, path, role):
    headers = auth(role) if role else {}
    got, head = client.get(path, headers=headers), client.head(path, headers=headers)
    assert head.status_code == got.status_code and head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"] != "0"


def test_head_is_counted_as_head_on_its_route(client, settings):
    series = 'unlearnd_http_requests_total{method="HEAD",route="/v1/models",status="200"} '

    def count() -> float:
        return next((float(line.removeprefix(series)) for line in client.get("/metrics").text.splitlines()
                     if line.startswith(series)), 0.0)

    before = count()
    assert client.head("/v1/models", headers=auth("admin")).status_code == 200
    assert count() == before + 1


def test_head_where_only_post_is_served_is_405(client):
    response = client.head("/v2/models/tiny/infer", headers=auth("inference"))
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


@pytest.mark.parametrize(("header", "key"), [
    ("k1", "k1"), ('"k1"', "k1"), (' "k1" ', "k1"), ('"a\\"b"', 'a"b'), ('"a\\\\b"', "a\\b"),
    ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"), ('k"1', 'k"1'),
    ('"k1";a=1', "k1"), ('"k1"; a; b="x"', "k1"), ('"k";a="x;y"', "k"),  # parameters (RFC 8941 3.1.2): ignored
])
def test_an_idempotency_key_is_a_structured_field_string_or_a_bare_value(header, key):
    assert idempotency_key(header) == key


@pytest.mark.parametrize("header", ['"', '""', '"k1', '"k"1"', '"a\\b"', '"\x7f"', '"é"', '"k1" x', '"k1";A=1',
                                    '"a";p=1, "b"'])
def test_a_quoted_idempotency_key_that_is_no_structured_field_string_is_422(header):
    from service.errors import Problem

    with pytest.raises(Problem) as refused:
        idempotency_key(header)
    assert refused.value.status == 422


def test_the_same_request_written_otherwise_or_its_key_quoted_is_a_replay(client, settings, model_store):
    """The draft's Idempotency-Key is a Structured Field string (`"k6"`); many clients send it bare (`k6`): one key.
    The same request in other JSON (whitespace, key order, a default spelled out) is the same body."""
    first = _idempotent_post(client, "k6")
    assert first.status_code == 202, first.text
    for key, body in (('"k6"', BODY), ("k6", b'{ "method" : "auto",\n  "classes": [ 1 ] }')):
        replay = client.post("/v1/models/tiny/forget-requests", content=body, headers={
            **auth("governance"), "Idempotency-Key": key, "Content-Type": "application/json"})
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true", replay.text
        assert replay.json()["id"] == first.json()["id"]
    other = client.post("/v1/models/tiny/forget-requests", content=b'{"classes": [2]}', headers={
        **auth("governance"), "Idempotency-Key": '"k6"', "Content-Type": "application/json"})
    assert other.status_code == 422 and other.json()["title"] == "Idempotency key reused"
    bad = _idempotent_post(client, '"k6')
    assert bad.status_code == 422 and bad.json()["title"] == "Invalid Idempotency-Key"
    assert open_ledger(settings).count() == 1


def test_an_expired_idempotency_key_is_a_new_request_and_the_janitor_deletes_it(client, settings, model_store):
    """Keys are kept UNLEARND_IDEMPOTENCY_KEY_TTL_S (24 h by default): an older one is forgotten at once, before
    the janitor deletes it."""
    import sqlite3

    from workers.janitor import expire_idempotency_keys

    first = _idempotent_post(client, "k7")
    assert first.status_code == 202, first.text
    assert _idempotent_post(client, "k7").headers["Idempotent-Replayed"] == "true"
    with sqlite3.connect(settings.ledger_path) as db:
        db.execute("UPDATE idempotency SET created_at = '2000-01-01T00:00:00.000+00:00' WHERE key = 'k7'")
    ledger = open_ledger(settings)
    again = _idempotent_post(client, "k7")
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers, again.text
    assert again.json()["id"] != first.json()["id"] and ledger.count() == 2
    assert _idempotent_post(client, "k7").json()["id"] == again.json()["id"]  # the key now names the new one
    with sqlite3.connect(settings.ledger_path) as db:
        db.execute("UPDATE idempotency SET created_at = '2000-01-01T00:00:00.000+00:00' WHERE key = 'k7'")
    _idempotent_post(client, "k8")
    assert expire_idempotency_keys(ledger, settings) == ["deleted 1 expired Idempotency-Keys"]
    with sqlite3.connect(settings.ledger_path) as db:
        assert [key for (key,) in db.execute("SELECT key FROM idempotency")] == ["k8"]
    assert expire_idempotency_keys(ledger, settings) == []


def test_an_empty_idempotency_key_is_422_and_records_nothing(client, settings, model_store):
    """An empty key would bind every keyless-by-mistake request of a client to one first answer."""
    response = client.post("/v1/models/tiny/forget-requests", content=BODY,
                           headers={**auth("governance"), "Idempotency-Key": "", "Content-Type": "application/json"})
    assert response.status_code == 422 and "idempotency-key" in response.text.lower(), response.text
    assert open_ledger(settings).count() == 0
