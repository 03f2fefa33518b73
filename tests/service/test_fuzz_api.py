"""Schemathesis against the live app, once per role: every operation of the OpenAPI, generated valid
(positive) and invalid (negative) requests, judged by every check schemathesis has (no 5xx; status codes,
content types, headers and bodies as documented; invalid data refused, valid data accepted; auth enforced).

The app runs in-process through schemathesis' ASGI transport (every layer runs for real: middleware, auth,
validation, routes, store, ledger); Redis is the unreachable URL of `conftest.settings`, as in the other tests
here. A model (`tiny`, serving a forget vector as state 2), a dataset (`tinyset`) and a forget request exist
before the run; one mode replaces generated path parameters by those names, so routes get past their 404s, and
one sends bodies they accept (predict, forget request, rollback), so they act. Bounded and derandomized: at
most MAX_EXAMPLES cases per operation, role and mode, the same ones on every run (about 30 s per role on an idle
2-core machine).
Generated `callback_url` hosts go through the intake check, whose resolver is replaced by one that resolves no
name (as for a name that does not resolve, the request is accepted): no DNS query leaves the machine.
"""

from __future__ import annotations

import socket

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import HypothesisException, Unsatisfiable
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from service.main import create_app
from tests.service.conftest import KEYS, auth, serve_forget_vector
from unlearnd import callbacks

MAX_EXAMPLES = 10  # per operation, role and generation mode
EXCLUDED = {"/metrics"}
FUZZ = hypothesis_settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck), phases=["explicit", "generate"],
                           report_multiple_bugs=False)


def _no_name_resolves(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: not resolved in tests")


@pytest.fixture
def app(settings, model_store, monkeypatch):
    """The app with something to act on: model `tiny` (trained on dataset `tinyset`), serving state 2 (a forget
    vector) so that state 1 can be rolled back to. Callback hosts are never looked up."""
    monkeypatch.setattr(callbacks, "resolve", _no_name_resolves)
    serve_forget_vector(model_store, 0.1, [])
    return create_app(settings)


@pytest.fixture
def running(app):
    """The app started (its lifespan runs, as under uvicorn) for as long as the test."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def known(running) -> dict[str, str]:
    """Path parameter values that name what exists: the model, the dataset and an accepted forget request."""
    response = running.post("/v1/models/tiny/forget-requests", json={"classes": [3]}, headers=auth("governance"))
    assert response.status_code == 202, response.text
    return {"model": "tiny", "name": "tinyset", "request_id": response.json()["id"], "version": "1"}


# Bodies that the operations taking JSON accept for the fixture's model, fuzzed around (headers, query).
BODIES = {
    "POST /v1/models/{model}/predict": {"inputs": [[[[0.5] * 8] * 8]]},
    "POST /v1/models/{model}/forget-requests": {"classes": [3]},
    "POST /v1/models/{model}/rollback": {"state_version": 1, "reason": "fuzz", "force": True},
}


# Where the checks' defaults do not fit this API, and why:
# - the documented 503 of /readyz is what it must answer here (Redis is unreachable, no worker runs);
# - a schema-valid body can still be refused with 422 where what it names is checked against the model or the
#   store (a class beyond the model's classes, unknown sample ids, an image or V2 tensor of another shape, a file
#   that is not a model or an .npz, a rollback without the reason it needs): no schema can say that.
SEMANTIC_422 = ["POST /v1/models", "POST /v1/datasets", "POST /v1/models/{model}/forget-requests",
                "POST /v1/models/{model}/predict", "POST /v1/models/{model}/rollback", "POST /v2/models/{model}/infer",
                "POST /v2/models/{model}/versions/{version}/infer"]


def _config(role: str) -> SchemathesisConfig:
    """The checks' settings, and the role's key as the OpenAPI's bearer auth (so that schemathesis knows the
    credentials it sends: its auth checks remove or replace them)."""
    return SchemathesisConfig.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": KEYS[role]}}}, "operations": [
        {"include-name": "GET /readyz",
         "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", 503]}}},
        *({"include-name": name, "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "3xx", 401, 403, 404, 409, 422, 429]}}} for name in SEMANTIC_422),
    ]})


def _operations(schema):
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in EXCLUDED:
            yield operation


def _run(strategy, statuses: set[int]) -> None:
    @FUZZ
    @given(case=strategy)
    def run(case):
        statuses.add(case.call_and_validate().status_code)  # every check, as _config sets them

    run()


def _fuzz(operation, role: str, known: dict[str, str], statuses: dict[str, set[int]]) -> list[str]:
    """Run one operation as one role; return what failed (at most one line per generation mode) and add the
    statuses it saw to `statuses[mode]`."""
    failures: list[str] = []
    path_names = {p.name for p in operation.path_parameters}
    fixed = {name: value for name, value in known.items() if name in path_names}
    modes = [("positive", operation.as_strategy()),
             ("negative", operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE))]
    if fixed:
        modes.append(("positive, existing names", operation.as_strategy(path_parameters=fixed)))
    if operation.label in BODIES:
        modes.append(("positive, existing names, accepted body",
                      operation.as_strategy(path_parameters=fixed, body=BODIES[operation.label],
                                            media_type="application/json")))
    for mode, strategy in modes:
        try:
            _run(strategy, statuses.setdefault(f"{operation.label} ({mode})", set()))
        except Unsatisfiable:
            assert mode == "negative", f"{operation.label} ({mode}): nothing to generate"
            # nothing in the operation can be made invalid (no parameters, no body): positive covers it
        except HypothesisException:
            raise  # a mistake in this module, not a finding
        except (Exception, FailureGroup) as exc:  # a failed check (or what the app let out), with its case
            failures.append(f"{operation.label} as {role} ({mode}): {type(exc).__name__}: {exc}"[:2000])
    return failures


@pytest.mark.parametrize("role", sorted(KEYS))
def test_every_operation_passes_every_check(app, known, role):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(role))
    operations = list(_operations(schema))
    assert len(operations) >= 15, [op.label for op in operations]
    statuses: dict[str, set[int]] = {}
    failures = [failure for operation in operations for failure in _fuzz(operation, role, known, statuses)]
    assert not failures, "\n\n".join(failures)
    if role == "admin":  # may call every operation: the accepted bodies got past validation and were acted on
        for label in BODIES:
            seen = statuses[f"{label} (positive, existing names, accepted body)"]
            assert any(200 <= status < 300 for status in seen), (label, seen)


# ---- what the fuzzer found, each pinned by its own test ---------------------------------------------------
@pytest.mark.parametrize("host", ["\x91", "a..b", "a" * 64 + ".example.com"])
def test_a_callback_host_the_resolver_cannot_encode_is_422_not_500(app, host):
    """callback_url 'http://\\x91/' reached getaddrinfo, whose IDNA encoding raised UnicodeError: a 500."""
    with TestClient(app, raise_server_exceptions=False) as fresh:
        response = fresh.post("/v1/models/tiny/forget-requests", headers=auth("governance"),
                              json={"classes": [1], "callback_url": f"http://{host}/hook"})
    assert response.status_code == 422, response.text
    assert "invalid host" in response.json()["detail"]


def test_the_intake_looks_callback_hosts_up_through_the_stub_here(app, monkeypatch):
    """What keeps this module's generated callback hosts off the network: the route's lookup is the patched one."""
    looked_up = []

    def recorded(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return _no_name_resolves(host, port)

    monkeypatch.setattr(callbacks, "resolve", recorded)
    with TestClient(app) as client:
        response = client.post("/v1/models/tiny/forget-requests", headers=auth("governance"),
                               json={"classes": [1], "callback_url": "http://hooks.example/unlearnd"})
    assert response.status_code == 202, response.text
    assert looked_up == ["hooks.example"]
