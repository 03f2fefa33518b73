"""Input the API must refuse with a 4xx problem (never 500, never recorded): callback hosts it may not call,
integers beyond any cursor, JSON booleans where numbers belong, oversized unpacked uploads; and API keys
compared in constant time."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models_store import open_ledger
from service.main import create_app
from tests.service.conftest import KEYS, auth
from unlearnd.settings import Settings


def assert_problem(response, status: int, needle: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert needle in problem["detail"], problem
    return problem


# ---- finding 4: callback hosts are checked at intake ----------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook", "http://[::1]:8080/",
    "http://localhost:8000/hook", "http://0x7f000001/", "http://2130706433/", "http://127.1:9/",
    "http://[::ffff:127.0.0.1]/", "https://192.168.1.10/", "http://[fd00:ec2::254]/", "http://0.0.0.0/",
])
def test_a_callback_url_whose_host_is_refused_is_422(client, settings, model_store, url):
    response = client.post("/v1/models/tiny/forget-requests", json={"classes": [1], "callback_url": url},
                           headers=auth("governance"))
    assert_problem(response, 422, "callback_url")
    assert "UNLEARND_CALLBACK_ALLOW" in response.json()["detail"]
    assert open_ledger(settings).list() == []


def test_the_allow_setting_admits_loopback_callbacks(tmp_path, model_store):
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", callback_allow="127.0.0.0/8",
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        response = c.post("/v1/models/tiny/forget-requests",
                          json={"classes": [1], "callback_url": "http://127.0.0.1:9/hook"},
                          headers=auth("governance"))
    assert response.status_code == 202, response.text


# ---- finding 7: integer query parameters are bounded ----------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/forget-requests", "/v1/audit"])
@pytest.mark.parametrize("cursor", ["9223372036854775808", "99999999999999999999999999", "1" * 400])
def test_a_cursor_beyond_any_sequence_number_is_422(client, path, cursor):
    response = client.get(path, params={"cursor": cursor}, headers=auth("admin"))
    assert_problem(response, 422, "cursor")


@pytest.mark.parametrize("path", ["/v1/forget-requests", "/v1/audit"])
def test_the_largest_accepted_cursor_pages_past_the_end(client, path):
    response = client.get(path, params={"cursor": "9" * 18, "limit": 500}, headers=auth("admin"))
    assert response.status_code == 200 and response.json()["data"] == []


@pytest.mark.parametrize("limit", ["0", "100000", "9223372036854775808", "-1"])
def test_limits_out_of_range_are_422(client, limit):
    assert_problem(client.get("/v1/forget-requests", params={"limit": limit}, headers=auth("admin")), 422)


def test_a_rollback_state_version_beyond_range_is_422(client, model_store):
    response = client.post("/v1/models/tiny/rollback", json={"state_version": 2**64}, headers=auth("admin"))
    assert_problem(response, 422)


def test_every_integer_query_parameter_has_bounds(settings):
    schema = create_app(settings).openapi()
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                spec = parameter.get("schema", {})
                variants = spec.get("anyOf", [spec])
                for variant in variants:
                    if variant.get("type") == "integer":
                        assert "maximum" in variant, (path, parameter["name"])
                    if variant.get("type") == "string" and parameter["name"] == "cursor":
                        assert variant.get("pattern") and "{" in variant["pattern"], (path, variant)


# ---- finding 9: strict types ---------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [[True], [False], [1.0], ["1"], [2**63]])
def test_classes_must_be_json_integers(client, settings, model_store, classes):
    response = client.post("/v1/models/tiny/forget-requests", json={"classes": classes},
                           headers=auth("governance"))
    assert_problem(response, 422, "classes")
    assert open_ledger(settings).list() == []


@pytest.mark.parametrize("pixel", [True, False])
def test_booleans_are_not_pixels(client, model_store, pixel):
    image = [[[0.0] * 8 for _ in range(8)]]
    image[0][3][4] = pixel
    response = client.post("/v1/models/tiny/predict", json={"inputs": [image]}, headers=auth("inference"))
    assert_problem(response, 422, "true/false")
    assert_problem(client.post("/v1/models/tiny/predict", json={"inputs": [True]}, headers=auth("inference")),
                   422, "true/false")


def test_a_rollback_state_version_is_not_a_boolean(client, model_store):
    assert_problem(client.post("/v1/models/tiny/rollback", json={"state_version": True},
                               headers=auth("admin")), 422)


# ---- finding 9: API keys are compared in constant time -------------------------------------------------
class NoLookups(dict):
    """API keys that may only be iterated: a dict lookup by the presented key (timing leak) fails."""

    def get(self, *args, **kwargs):
        raise AssertionError("API keys looked up by the presented key")

    __getitem__ = get
    __contains__ = get


def test_api_keys_are_compared_without_a_lookup_by_the_presented_key(client):
    client.app.state.api_keys = NoLookups({key: role for role, key in KEYS.items()})
    assert client.get("/v1/models", headers=auth("inference")).status_code == 200
    assert client.get("/v1/audit", headers=auth("governance")).status_code == 403
    assert client.get("/v1/models", headers={"Authorization": "Bearer key-inf-but-longer"}).status_code == 401
    latin1 = {"Authorization": "Bearer cl\u00e9".encode("latin-1")}
    assert client.get("/v1/models", headers=latin1).status_code == 401


# ---- finding 9: the unpacked size of an upload is capped by a setting ------------------------------------
def _bomb(n_bytes: int) -> bytes:
    """A small .npz whose x_train unpacks to n_bytes (zeros compress ~1000:1)."""
    side = 8
    n = n_bytes // (side * side)
    arrays = {"x_train": np.zeros((n, 1, side, side), dtype=np.uint8), "y_train": np.zeros(n, dtype=np.int64)}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_an_upload_that_unpacks_beyond_the_setting_is_413_naming_the_limit(tmp_path):
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", max_dataset_bytes=2_000_000,
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    data = _bomb(4_000_000)
    assert len(data) < 100_000
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        response = c.post("/v1/datasets", headers=auth("admin"), data={"name": "bomb"},
                          files={"file": ("d.npz", data, "application/octet-stream")})
        assert_problem(response, 413, "UNLEARND_MAX_DATASET_BYTES=2000000")
        assert not (tmp_path / "store" / "datasets" / "bomb").exists()
        fits = c.post("/v1/datasets", headers=auth("admin"), data={"name": "fits"},
                      files={"file": ("d.npz", _bomb(100_000), "application/octet-stream")})
        assert fits.status_code == 201, fits.text


def test_the_default_cap_is_well_below_what_the_report_saw():
    assert Settings.model_fields["max_dataset_bytes"].default == 256 * 1024 * 1024


def test_a_member_declaring_a_huge_array_is_refused_before_it_is_read():
    from unlearnd.ingest.datasets import parse_npz
    from unlearnd.ingest.errors import DatasetTooLargeError

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 1, 1000, 1000)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x_train.npy", header.getvalue() + b"\0" * 64)
        z.writestr("y_train.npy", header.getvalue())
    with pytest.raises(DatasetTooLargeError, match="declare"):
        parse_npz(buf.getvalue(), max_uncompressed_bytes=1_000_000)
