import pytest

from service.main import create_app
from tests.service.conftest import auth

# Every /v1 operation: (method, OpenAPI path, a role that must be refused or None for "any role", JSON body)
ROLES = [
    ("GET", "/v1/models", None, None),
    ("POST", "/v1/models", "governance", None),
    ("GET", "/v1/models/{model}", None, None),
    ("POST", "/v1/models/{model}/predict", "governance", {"inputs": [[[[0.0]]]]}),
    ("GET", "/v1/models/{model}/state", None, None),
    ("POST", "/v1/models/{model}/rollback", "governance", {"state_version": 1}),
    ("POST", "/v1/models/{model}/forget-requests", "inference", {"classes": [1]}),
    ("GET", "/v1/forget-requests", "inference", None),
    ("GET", "/v1/forget-requests/{request_id}", "inference", None),
    ("DELETE", "/v1/forget-requests/{request_id}", "inference", None),
    ("GET", "/v1/forget-requests/{request_id}/receipt", "inference", None),
    ("GET", "/v1/forget-requests/{request_id}/report.png", "inference", None),
    ("GET", "/v1/admin/queue", "governance", None),
    ("GET", "/v1/audit", "governance", None),
    ("GET", "/v1/datasets", "inference", None),
    ("POST", "/v1/datasets", "governance", {"name": "d", "source": "builtin:digits"}),
    ("GET", "/v1/datasets/{name}", "inference", None),
    ("GET", "/v1/keys", None, None),
]
PATH_VALUES = {"{model}": "digits-cnn", "{request_id}": "fr_x", "{name}": "digits"}


def _url(path: str) -> str:
    for placeholder, value in PATH_VALUES.items():
        path = path.replace(placeholder, value)
    return path


def _v1_routes(settings):
    """Every /v1 operation in the OpenAPI schema, so endpoints added later are covered too."""
    for path, operations in create_app(settings).openapi()["paths"].items():
        if path.startswith("/v1"):
            for method in operations:
                yield method.upper(), path


def test_every_v1_endpoint_refuses_a_missing_or_unknown_key(client, settings):
    routes = list(_v1_routes(settings))
    assert len(routes) >= 5
    for method, path in routes:
        url = _url(path)
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            response = client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


def test_every_v1_endpoint_has_its_roles_listed_here(settings):
    """A new endpoint must be added to ROLES, so its wrong-role refusal is tested below."""
    assert sorted(_v1_routes(settings)) == sorted((m, p) for m, p, _, _ in ROLES)


@pytest.mark.parametrize(("method", "path", "role", "body"), [r for r in ROLES if r[2]])
def test_wrong_role_is_forbidden(client, method, path, role, body):
    response = client.request(method, _url(path), headers=auth(role), json=body)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Forbidden" and role in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, role, _ in ROLES if role is None])
def test_any_role_may_read_models(client, method, path):
    for role in ("admin", "governance", "inference"):
        assert client.request(method, _url(path), headers=auth(role)).status_code not in (401, 403)


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_says_why_it_is_not_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "Redis" in response.json()["detail"]
