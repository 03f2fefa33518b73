"""The OpenAPI says what the API does: the forget-request body, and problem+json for every error."""

import json

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


def test_every_error_is_documented_as_problem_json(schema):
    assert {"type", "title", "status", "detail", "instance"} <= set(
        schema["components"]["schemas"]["Problem"]["properties"])
    seen = 0
    for method, path, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                seen += 1
                assert response["content"] == {"application/problem+json": {"schema": PROBLEM}}, \
                    (method, path, status)
    assert seen > 20


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
