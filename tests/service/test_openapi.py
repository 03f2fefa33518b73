"""The OpenAPI says what the API does: the forget-request body, and problem+json for every error."""

import json
import re

import pytest

from service.main import create_app
from tests.service.conftest import auth

PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.fixture
def schema(settings) -> dict:
    return create_app(settings).openapi()


def _operations(schema: dict):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_forget_request_declares_its_body(schema):
    operation = schema["paths"]["/v1/models/{model}/forget-requests"]["post"]
    body = operation["requestBody"]
    assert body["required"] is True
    media = body["content"]["application/json"]
    assert media["schema"] == {"$ref": "#/components/schemas/ForgetRequestCreate"}
    assert media["examples"]
    component = schema["components"]["schemas"]["ForgetRequestCreate"]
    assert {"classes", "samples", "method", "reason", "callback_url"} <= set(component["properties"])
    assert component["additionalProperties"] is False
    for example in media["examples"].values():  # the examples are valid bodies
        from service.schemas import ForgetRequestCreate
        ForgetRequestCreate.model_validate(example["value"])


def test_no_operation_references_http_validation_error(schema):
    text = json.dumps(schema)
    assert "HTTPValidationError" not in text
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_every_error_is_documented_as_problem_json_and_under_v2_as_json(schema):
    assert {"type", "title", "status", "detail", "instance", "error"} <= set(
        schema["components"]["schemas"]["Problem"]["properties"])
    seen = {"application/problem+json": 0, "application/json": 0}
    for method, path, operation in _operations(schema):
        media_type = "application/json" if path.startswith("/v2") else "application/problem+json"
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                seen[media_type] += 1
                assert response["content"] == {media_type: {"schema": PROBLEM}}, (method, path, status)
    assert seen["application/problem+json"] > 20 and seen["application/json"] > 5


def test_the_statuses_routes_can_answer_are_documented(schema):
    for method, path, operation in _operations(schema):
        statuses = set(operation["responses"])
        if path.startswith("/v1"):
            assert "401" in statuses, (method, path)
        if "{" in path:
            assert {"404", "422"} <= statuses, (method, path)
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in statuses, (method, path)
    paths = schema["paths"]
    assert "403" in paths["/v1/models/{model}/forget-requests"]["post"]["responses"]
    assert "403" not in paths["/v1/models"]["get"]["responses"]  # every role may list models
    for method, path in [("post", "/v1/models/{model}/forget-requests"), ("delete", "/v1/forget-requests/{request_id}"),
                         ("get", "/v1/forget-requests/{request_id}/receipt"),
                         ("post", "/v1/models/{model}/rollback")]:
        assert "409" in paths[path][method]["responses"], (method, path)


def test_the_documented_422_is_what_is_sent(client, schema):
    response = client.post("/v1/models/tiny/forget-requests", content=b"{", headers=auth("governance"))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.json()) <= set(schema["components"]["schemas"]["Problem"]["properties"])
    response = client.get("/v1/forget-requests?limit=0", headers=auth("governance"))
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.json()) <= set(schema["components"]["schemas"]["Problem"]["properties"])


def test_the_openapi_is_stable_across_apps(settings):
    """document_problems mutates the module-level routers: a second app documents the same."""
    assert create_app(settings).openapi() == create_app(settings).openapi()


def test_records_are_typed_with_descriptions_examples_and_date_times(schema):
    components = schema["components"]["schemas"]
    record = components["ForgetRequestPublic"]
    assert record["properties"]["progress"] == {"$ref": "#/components/schemas/Progress"}
    for field, model in [("result", "Result"), ("callback", "Callback")]:
        assert {"$ref": f"#/components/schemas/{model}"} in record["properties"][field]["anyOf"]
    for field in ("created_at", "started_at", "finished_at"):
        variants = record["properties"][field].get("anyOf", [record["properties"][field]])
        assert {"type": "string", "format": "date-time"}.items() <= variants[0].items(), field
    progress = components["Progress"]
    assert progress["properties"]["stage"]["enum"][2:7] == ["loading", "calibrating", "optimising", "verifying",
                                                           "publishing"]
    assert "null until a rate is measured" in progress["properties"]["eta_s"]["description"]
    assert progress["additionalProperties"] is True  # methods add their own figures
    for name in ("Progress", "Result", "Guard", "Callback", "Receipt", "ForgetRequestPublic"):
        assert components[name].get("examples") and components[name].get("description"), name
    assert components["AuditEntry"]["properties"]["at"]["format"] == "date-time"


def test_every_body_and_answer_is_declared(schema):
    for method, path, operation in _operations(schema):
        if method in ("POST", "PUT", "PATCH"):
            assert operation.get("requestBody", {}).get("content"), (method, path)
        success = [s for s in operation["responses"] if s.startswith("2")]
        assert success, (method, path)
    paths = schema["paths"]
    receipt = paths["/v1/forget-requests/{request_id}/receipt"]["get"]["responses"]["200"]
    assert receipt["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Receipt"}
    cancel = paths["/v1/forget-requests/{request_id}"]["delete"]["responses"]
    assert {"200", "202", "409"} <= set(cancel)
    assert "Retry-After" in paths["/v1/models/{model}/forget-requests"]["post"]["responses"]["202"]["headers"]
    assert "Retry-After" in paths["/v1/forget-requests/{request_id}"]["get"]["responses"]["200"]["headers"]


@pytest.mark.parametrize(("path", "method"), [("/v2/models/{model}", "get"), ("/v2/models/{model}/ready", "get"),
                                              ("/v2/models/{model}/infer", "post")])
def test_the_v2_version_paths_are_documented_as_the_paths_without_a_version(schema, path, method):
    plain = schema["paths"][path][method]
    versioned = schema["paths"][path.replace("{model}", "{model}/versions/{version}")][method]
    assert [p["name"] for p in versioned["parameters"] if p["in"] == "path"] == ["model", "version"]
    assert versioned.get("requestBody") == plain.get("requestBody")
    assert [p for p in versioned["parameters"] if p["in"] != "path"] == [
        p for p in plain["parameters"] if p["in"] != "path"]
    assert set(versioned["responses"]) == set(plain["responses"])
    assert "not one of the versions its metadata lists" in versioned["responses"]["404"]["description"]
    if method == "post":
        assert {"413", "415", "422"} <= set(versioned["responses"])


def test_operation_ids_are_the_route_names_and_unique(schema):
    ids = [operation["operationId"] for _, _, operation in _operations(schema)]
    assert len(ids) == len(set(ids))
    assert schema["paths"]["/v1/models/{model}/forget-requests"]["post"]["operationId"] == "create_forget_request"


@pytest.mark.parametrize("name", ["a", "digits-cnn", "v1.2_x", "a.", "A" * 64, "", ".a", "a..b", "a/b", "é",
                                  "-a", "A" * 65])
def test_the_documented_name_pattern_is_the_store_rule(name):
    from models_store.errors import StoreError
    from models_store.store import check_name
    from service.schemas import NAME_SCHEMA

    try:
        check_name(name)
        valid = True
    except StoreError:
        valid = False
    documented = bool(re.match(NAME_SCHEMA["pattern"], name)) and len(name) <= NAME_SCHEMA["maxLength"]
    assert documented == valid


def test_retry_after_follows_the_eta_while_a_request_is_active(client, model_store):
    accepted = client.post("/v1/models/tiny/forget-requests", json={"classes": [3]}, headers=auth("governance"))
    assert accepted.status_code == 202 and accepted.headers["Retry-After"] == "2"  # nothing measured yet
    request_id = accepted.json()["id"]
    ledger = client.app.state.ledger

    def retry_after():
        response = client.get(f"/v1/forget-requests/{request_id}", headers=auth("governance"))
        assert response.status_code == 200
        return response.headers.get("Retry-After")

    assert retry_after() == "2"
    assert ledger.mark_running(request_id)
    for eta, expected in [(None, "2"), (7.2, "8"), (0.1, "1"), (5000.0, "60")]:
        ledger.set_progress(request_id, {"stage": "optimising", "stage_fraction": 0.5, "fraction": 0.4,
                                         "elapsed_s": 3.0, "eta_s": eta, "epoch": 4})
        assert retry_after() == expected, eta
    ledger.mark_cancelled(request_id, actor="test")
    assert retry_after() is None  # finished: nothing to wait for


def test_progress_from_older_workers_reads_as_a_stage():
    from service.schemas import Progress

    assert Progress.model_validate({"fraction": 0.3, "stage": "class vector 3", "epoch": 2}).model_dump() == {
        "stage": "optimising", "stage_fraction": None, "fraction": 0.3, "elapsed_s": None, "eta_s": None,
        "attempt": None, "epoch": 2, "step": "class vector 3"}
    assert Progress.model_validate({"fraction": 0.9, "stage": "evaluating"}).stage == "verifying"
