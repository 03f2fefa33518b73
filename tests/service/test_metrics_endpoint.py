"""GET /metrics: Prometheus text that moves when the API works (single-process mode: no
PROMETHEUS_MULTIPROC_DIR in tests, so the counters are this process's and accumulate across tests; every
assertion is on a difference)."""

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_store import open_ledger
from tests.service.conftest import auth


def _samples(client) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_needs_no_key_and_is_not_versioned(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "unlearnd_http_requests_total" in response.text or "# HELP unlearnd_http_requests" in response.text


def test_a_prediction_moves_the_prediction_and_http_series(client, model_store):  # noqa: F811
    before = _samples(client)
    image = [[[0.5] * 8 for _ in range(8)]]
    response = client.post("/v1/models/tiny/predict", json={"inputs": [image] * 3}, headers=auth("inference"))
    assert response.status_code == 200, response.text
    after = _samples(client)
    assert _value(after, "unlearnd_predictions_total", model="tiny") - \
        _value(before, "unlearnd_predictions_total", model="tiny") == 3
    assert _value(after, "unlearnd_predict_batch_size_count", model="tiny") - \
        _value(before, "unlearnd_predict_batch_size_count", model="tiny") == 1
    assert _value(after, "unlearnd_predict_batch_size_sum", model="tiny") - \
        _value(before, "unlearnd_predict_batch_size_sum", model="tiny") == 3
    labels = {"method": "POST", "route": "/v1/models/{model}/predict", "status": "200"}
    assert _value(after, "unlearnd_http_requests_total", **labels) - \
        _value(before, "unlearnd_http_requests_total", **labels) == 1
    assert _value(after, "unlearnd_http_request_duration_seconds_count", **labels) - \
        _value(before, "unlearnd_http_request_duration_seconds_count", **labels) == 1


def test_requests_are_labelled_by_route_template_and_status(client):
    before = _samples(client)
    assert client.get("/v1/forget-requests/fr_nope", headers=auth("governance")).status_code == 404
    assert client.get("/v1/forget-requests/fr_nope").status_code == 401
    assert client.get("/no/such/path/12345").status_code == 404
    after = _samples(client)
    route = "/v1/forget-requests/{request_id}"
    for status in ("404", "401"):
        labels = {"method": "GET", "route": route, "status": status}
        assert _value(after, "unlearnd_http_requests_total", **labels) - \
            _value(before, "unlearnd_http_requests_total", **labels) == 1, status
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert _value(after, "unlearnd_http_requests_total", **unmatched) - \
        _value(before, "unlearnd_http_requests_total", **unmatched) == 1
    assert not any("fr_nope" in str(labels) or "12345" in str(labels) for _, labels in after)


def test_a_method_no_rfc_defines_is_labelled_other(client):
    """Any token is a syntactically valid method: labelled as sent, each would be a new series."""
    before = _samples(client)
    for method in ("XRANDOM1", "XRANDOM2"):
        assert client.request(method, "/v1/forget-requests").status_code == 405
    after = _samples(client)
    other = {"method": "other", "route": "/v1/forget-requests", "status": "405"}
    assert _value(after, "unlearnd_http_requests_total", **other) - \
        _value(before, "unlearnd_http_requests_total", **other) == 2
    assert not any("XRANDOM" in str(labels) for _, labels in after)


def test_an_accepted_forget_request_moves_the_ledger_and_http_series(settings, model_store):  # noqa: F811
    """A queue that records instead of Redis (as in test_validation): the request is accepted for real."""
    from fastapi.testclient import TestClient

    from service.main import create_app

    class RecordingQueue:
        def enqueue_many(self, job_datas):
            pass

    app = create_app(settings)
    app.state.intake.queue = RecordingQueue()
    with TestClient(app) as c:
        before = _samples(c)
        response = c.post("/v1/models/tiny/forget-requests", json={"classes": [1], "method": "forget_vector"},
                          headers=auth("governance"))
        assert response.status_code == 202, response.text
        after = _samples(c)
    assert _value(before, "unlearnd_forget_requests", method="forget_vector", status="queued") == 0
    assert _value(after, "unlearnd_forget_requests", method="forget_vector", status="queued") == 1
    assert after[("unlearnd_callbacks_pending", frozenset())] == 0
    ledger = open_ledger(settings)
    ledger.create({"id": "fr_cb", "model": "tiny", "classes": [2], "method": "auto", "callback_url": "https://h.test/"})
    ledger.mark_failed("fr_cb", "for the test")  # ended: its callback is pending until delivered or given up
    with TestClient(app) as c:
        assert _samples(c)[("unlearnd_callbacks_pending", frozenset())] == 1
    assert _value(after, "unlearnd_forget_requests_accepted_total", method="forget_vector") - \
        _value(before, "unlearnd_forget_requests_accepted_total", method="forget_vector") == 1
    labels = {"method": "POST", "route": "/v1/models/{model}/forget-requests", "status": "202"}
    assert _value(after, "unlearnd_http_requests_total", **labels) - \
        _value(before, "unlearnd_http_requests_total", **labels) == 1


def test_worker_series_are_exposed(client):
    """Declared in service.metrics, observed by workers.jobs (see tests/unit for the observations)."""
    from service.metrics import GUARD_REFUSALS, observe_job

    before = _samples(client)
    observe_job("forget_vector", "succeeded", started=0.0)
    GUARD_REFUSALS.labels("forget_vector").inc()
    after = _samples(client)
    labels = {"method": "forget_vector", "outcome": "succeeded"}
    assert _value(after, "unlearnd_job_duration_seconds_count", **labels) - \
        _value(before, "unlearnd_job_duration_seconds_count", **labels) == 1
    assert _value(after, "unlearnd_guard_refusals_total", method="forget_vector") - \
        _value(before, "unlearnd_guard_refusals_total", method="forget_vector") == 1


def test_integrity_refusals_are_counted(client, model_store, settings):  # noqa: F811
    from service.metrics import INTEGRITY_REFUSALS

    before = INTEGRITY_REFUSALS.labels("tiny")._value.get()
    client.app.state.runtime.refusals.refuse("tiny", "test: weights do not verify")
    assert INTEGRITY_REFUSALS.labels("tiny")._value.get() - before == 1
    text = client.get("/metrics").text
    assert re.search(r'unlearnd_integrity_refusals_total\{model="tiny"\} \d', text)


@pytest.mark.parametrize("path", ["/metrics"])
def test_metrics_is_documented_without_auth(client, path):
    operation = client.app.openapi()["paths"][path]["get"]
    assert "security" not in operation
    assert "401" not in operation["responses"]
