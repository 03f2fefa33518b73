import pytest

from service.main import create_app
from tests.service.conftest import auth

# (method, path, a role that must be refused, JSON body)
WRONG_ROLE = [
    ("GET", "/v1/models", None, None),
    ("GET", "/v1/models/digits-cnn", None, None),
    ("POST", "/v1/models/digits-cnn/forget-requests", "inference", {"classes": [1]}),
    ("GET", "/v1/forget-requests/fr_x", "inference", None),
    ("POST", "/v1/models/digits-cnn/predict", "governance", {"inputs": [[[[0.0]]]]}),
]


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
        url = path.replace("{", "").replace("}", "")
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            response = client.request(method, url, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "role", "body"), [r for r in WRONG_ROLE if r[2]])
def test_wrong_role_is_forbidden(client, method, path, role, body):
    response = client.request(method, path, headers=auth(role), json=body)
    assert response.status_code == 403
    assert response.json()["title"] == "Forbidden" and role in response.json()["detail"]


def test_health_needs_no_key(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_says_why_it_is_not_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "Redis" in response.json()["detail"]
