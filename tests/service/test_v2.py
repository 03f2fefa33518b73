"""The Open Inference Protocol (KServe V2) endpoints: health, metadata, readiness, and inference with JSON tensors
and the binary tensor data extension; answers agree with /v1 predict; errors are problems that carry `error`."""

import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette._utils import get_route_path  # the router's own rule, as the reference

from service.errors import app_path
from service.main import create_app
from tests.service.conftest import auth, serve_forget_vector

INFER = "/v2/models/tiny/infer"
VERSION_1 = "/v2/models/tiny/versions/1"


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def v1_probabilities(client, x: np.ndarray) -> np.ndarray:
    response = client.post("/v1/models/tiny/predict", json={"inputs": x.tolist()}, headers=auth("inference"))
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def binary_request(x: np.ndarray, datatype: str = "FP32", **request) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4" if datatype == "FP32" else "u1").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}], **request}).encode()
    return header + raw, {**auth("inference"), "Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


def binary_outputs(response) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON header and the binary outputs of an answer, decoded as a V2 client does."""
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    tensors, offset = {}, length
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
        tensors[output["name"]] = np.frombuffer(response.content[offset:offset + size], dtype).reshape(
            output["shape"])
        offset += size
    assert offset == len(response.content)
    return header, tensors


def assert_v2_problem(response, status: int, needle: str) -> dict:
    """An RFC 9457 problem with `error`, as application/json: what V2 clients read (KServe's only then)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    problem = response.json()
    assert needle in problem["detail"] and problem["error"] == problem["detail"], problem
    return problem


def test_health_needs_no_key(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_server_metadata_names_the_binary_extension(client):
    assert client.get("/v2").status_code == 401
    body = client.get("/v2", headers=auth("governance")).json()
    assert body["name"] == "unlearnd" and "binary_tensor_data" in body["extensions"]


def test_model_metadata_and_readiness(client, model_store):
    metadata = client.get("/v2/models/tiny", headers=auth("inference"))
    assert metadata.status_code == 200, metadata.text
    assert metadata.json() == {
        "name": "tiny", "versions": ["1"], "platform": "pytorch_safetensors",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}]}
    assert client.get("/v2/models/tiny/ready", headers=auth("governance")).json() == {"name": "tiny", "ready": True}
    assert_v2_problem(client.get("/v2/models/nope/ready", headers=auth("inference")), 404, "nope")
    assert_v2_problem(client.get("/v2/models/nope", headers=auth("inference")), 404, "nope")


def test_a_model_that_does_not_verify_is_not_ready(client, settings, model_store):
    manifest = serve_forget_vector(model_store, 0.5, ["r"])
    (settings.store_dir / "artifacts" / f"{manifest['id']}.safetensors").write_bytes(b"tampered")
    problem = assert_v2_problem(client.get("/v2/models/tiny/ready", headers=auth("inference")), 503, manifest["id"])
    assert problem["title"] == "Integrity check failed"


def test_json_tensors_agree_with_v1_and_echo_the_id(client, model_store):
    x = images(3)
    body = {"id": "call-7", "inputs": [{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}
    response = client.post(INFER, json=body, headers=auth("inference"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "call-7" and answer["model_name"] == "tiny" and answer["model_version"] == "1"
    assert answer["parameters"]["state_version"] == 1 and answer["parameters"]["applied"] == ""
    probabilities, label = answer["outputs"]
    assert probabilities["name"] == "probabilities" and probabilities["shape"] == [3, 10]
    assert label == {"name": "label", "datatype": "INT64", "shape": [3],
                     "data": np.array(probabilities["data"]).reshape(3, 10).argmax(1).tolist()}
    assert np.allclose(np.reshape(probabilities["data"], (3, 10)), v1_probabilities(client, x), atol=1e-6)
    nested = {"inputs": [{**body["inputs"][0], "data": x.tolist()}]}  # nested lists are accepted too
    again = client.post(INFER, json=nested, headers=auth("inference")).json()["outputs"][0]["data"]
    assert again == probabilities["data"]


def test_binary_fp32_in_and_out_agree_with_v1_under_a_forget_vector(client, model_store):
    manifest = serve_forget_vector(model_store, 0.3, ["r"])
    x = images(4, seed=1)
    body, headers = binary_request(x, parameters={"binary_data_output": True})
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, tensors = binary_outputs(response)
    assert header["parameters"]["state_version"] == 2 and header["parameters"]["applied"] == manifest["id"]
    assert tensors["probabilities"].shape == (4, 10) and tensors["label"].dtype == np.dtype("<i8")
    assert np.allclose(tensors["probabilities"], v1_probabilities(client, x), atol=1e-6)
    assert (tensors["label"] == tensors["probabilities"].argmax(1)).all()


def test_uint8_is_divided_by_255(client, model_store):
    pixels = np.random.default_rng(2).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    body, headers = binary_request(pixels, "UINT8")
    binary = client.post(INFER, content=body, headers=headers)
    assert binary.status_code == 200, binary.text
    expected = v1_probabilities(client, pixels.astype(np.float32) / 255)
    assert np.allclose(np.reshape(binary.json()["outputs"][0]["data"], (2, 10)), expected, atol=1e-6)
    as_json = {"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "UINT8",
                           "data": pixels.ravel().tolist()}]}
    answer = client.post(INFER, json=as_json, headers=auth("inference")).json()
    assert answer["outputs"][0]["data"] == binary.json()["outputs"][0]["data"]


def test_only_the_outputs_asked_for_each_in_its_own_form(client, model_store):
    x = images(2)
    body, headers = binary_request(x, outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    header, tensors = binary_outputs(client.post(INFER, content=body, headers=headers))
    assert [o["name"] for o in header["outputs"]] == ["label"]
    assert tensors["label"].tolist() == v1_probabilities(client, x).argmax(1).tolist()
    body, headers = binary_request(x, parameters={"binary_data_output": True},
                                   outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}])
    response = client.post(INFER, content=body, headers=headers)
    assert "Inference-Header-Content-Length" not in response.headers
    assert [o["name"] for o in response.json()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(("change", "status", "needle"), [
    ({"name": "pixels"}, 422, "takes one input, 'input'"),
    ({"datatype": "INT32"}, 422, "FP32 or UINT8"),
    ({"shape": [2, 1, 8, 4]}, 422, "needs 256 bytes; binary_data_size is 512"),
    ({"shape": [1, 1, 8, 16]}, 422, "expected [N, 1, 8, 8]"),
    ({"shape": [-2, 1, 8, 8]}, 422, "negative"),
    ({"parameters": {"binary_data_size": 7}}, 422, "binary_data_size is 7"),
    ({"parameters": {"binary_data_size": True}}, 422, "binary_data_size is True"),
    ({"data": [0.5]}, 422, "not both"),
])
def test_bad_binary_requests_are_422_problems(client, model_store, change, status, needle):
    raw = images(2).astype("<f4").tobytes()
    tensor = {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
              "parameters": {"binary_data_size": len(raw)}, **change}
    header = json.dumps({"inputs": [tensor]}).encode()
    response = client.post(INFER, content=header + raw, headers={
        **auth("inference"), "Inference-Header-Content-Length": str(len(header))})
    assert_v2_problem(response, status, needle)


def test_a_binary_tensor_of_no_dimensions_is_a_422_problem(client, model_store):
    tensor = {"name": "input", "shape": [], "datatype": "FP32", "parameters": {"binary_data_size": 4}}
    header = json.dumps({"inputs": [tensor]}).encode()
    response = client.post(INFER, content=header + np.float32(0.5).tobytes(), headers={
        **auth("inference"), "Inference-Header-Content-Length": str(len(header))})
    assert_v2_problem(response, 422, "one number")


@pytest.mark.parametrize(("request_body", "status", "needle"), [
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [2.0] * 64}]}, 422, "[0, 1]"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 63}]}, 422,
     "63 values"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [True] * 64}]}, 422,
     "true/false"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": [256] * 64}]}, 422, "0 to 255"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "UINT8", "data": []}]}, 422,
     "data has 0 values; shape [1, 1, 8, 8] needs 64"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [None] + [0.5] * 63}]}, 422,
     "null is not a number"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["0.5"] * 64}]}, 422,
     "strings are not numbers"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": ["a"] * 64}]}, 422, "numbers"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [10**400] + [0.5] * 63}]}, 422,
     "numbers"),  # an integer beyond any float
    ({"inputs": [{"name": "input", "shape": [], "datatype": "FP32", "data": [0.5]}]}, 422, "one number"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}, 422, "neither"),
    ({"inputs": [{"name": "input", "shape": [0, 1, 8, 8], "datatype": "FP32", "data": []}]}, 422, "N >= 1"),
    ({"inputs": []}, 422, "inputs"),
    ({"model_name": "other", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                         "data": [0.5] * 64}]}, 422, "names model 'other', the path 'tiny'"),
    ({"model": "tiny", "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]},
     422, "body.model: Extra inputs"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
      "outputs": [{"name": "logits"}]}, 422, "unknown output 'logits'"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
      "outputs": [{"name": "label", "parameters": {"classification": 3}}]}, 422, "classification"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
      "outputs": [{"name": "label", "parameters": {"binary_data": "true"}}]}, 422,
     "output 'label': binary_data must be true or false; got \"true\""),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
      "parameters": {"binary_data_output": 1}}, 422, "binary_data_output must be true or false; got 1"),
    ({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
      "outputs": [{"name": "label"}, {"name": "label"}]}, 422, "output 'label' is asked for twice"),
    ({"inputs": [{"name": "input", "shape": [100_000, 1], "datatype": "FP32", "data": [0.5] * 100_000}]}, 422,
     "shape [100000, 1]; expected [N, 1, 8, 8]"),  # the shape is the problem, not the batch limit
])
def test_bad_json_requests_are_problems(client, model_store, request_body, status, needle):
    response = client.post(INFER, json=request_body, headers=auth("inference"))
    assert_v2_problem(response, status, needle)


def test_the_model_name_that_kserves_client_sends_is_taken_when_it_is_the_paths(client, model_store):
    body = {"id": "k", "model_name": "tiny",
            "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    response = client.post(INFER, json=body, headers=auth("inference"))
    assert response.status_code == 200 and response.json()["model_name"] == "tiny", response.text


def test_a_body_over_the_size_limit_is_a_v2_error_under_v2_and_a_problem_elsewhere(settings, model_store):
    small = settings.model_copy(update={"max_body_bytes": 100})
    body, headers = binary_request(images(1))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        assert_v2_problem(client.post(INFER, content=body, headers=headers), 413, "UNLEARND_MAX_BODY_BYTES")
        response = client.post("/v1/models/tiny/predict", content=body, headers=headers)
    assert response.status_code == 413 and response.headers["content-type"] == "application/problem+json"
    assert "error" not in response.json()


def test_behind_a_root_path_errors_are_judged_by_the_apps_own_path(settings, model_store):
    body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    with TestClient(create_app(settings), root_path="/api", raise_server_exceptions=False) as client:
        problem = assert_v2_problem(client.post("/api/v2/models/nope/infer", json=body, headers=auth("inference")),
                                    404, "nope")
        assert problem["instance"] == "/api/v2/models/nope/infer"
        refused = client.put("/api/v1/models", headers=auth("admin"))
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD, POST"
    assert refused.headers["content-type"] == "application/problem+json" and "error" not in refused.json()


@pytest.mark.parametrize(("path", "root_path", "expected"), [
    ("/api/v2/models/m/infer", "/api", "/v2/models/m/infer"), ("/api", "/api", ""),
    ("/v2/models/m/infer", "/v", "/v2/models/m/infer"),  # a root path strips whole segments only, as routing does
    ("/v2/models/m/infer", "", "/v2/models/m/infer"), ("/other/v2", "/api", "/other/v2")])
def test_the_apps_own_path_is_the_one_its_router_matches(path, root_path, expected):
    assert app_path({"path": path, "root_path": root_path}) == expected
    assert get_route_path({"type": "http", "path": path, "root_path": root_path}) == expected


def test_more_images_than_the_batch_limit_is_413(settings, model_store):
    small = settings.model_copy(update={"max_predict_batch": 2})
    body, headers = binary_request(images(3))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        assert_v2_problem(client.post(INFER, content=body, headers=headers), 413, "at most 2")


def test_a_wrongly_shaped_binary_tensor_is_refused_for_its_shape_before_the_batch_limit(client, model_store):
    body, headers = binary_request(np.full((100_000, 1), 0.5, dtype=np.float32))
    assert_v2_problem(client.post(INFER, content=body, headers=headers), 422, "expected [N, 1, 8, 8]")


def test_a_body_of_tensor_bytes_only_is_refused_clearly(client, model_store):
    raw = images(1).astype("<f4").tobytes()
    response = client.post(INFER, content=raw, headers={**auth("inference"), "Inference-Header-Content-Length": "0",
                                                        "Content-Type": "application/octet-stream"})
    problem = assert_v2_problem(response, 422, "without a JSON inference header, is not supported")
    assert "send the JSON inference header" in problem["detail"] and "JSON:" not in problem["detail"]


def test_the_versions_the_metadata_lists_are_served_at_their_paths(client, model_store):
    headers = auth("inference")
    assert client.get(VERSION_1, headers=headers).json() == client.get("/v2/models/tiny", headers=headers).json()
    assert client.get(f"{VERSION_1}/ready", headers=headers).json() == {"name": "tiny", "ready": True}
    body, binary_headers = binary_request(images(2))
    response = client.post(f"{VERSION_1}/infer", content=body, headers=binary_headers)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "1"
    assert response.json()["outputs"] == client.post(INFER, content=body, headers=binary_headers).json()["outputs"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v2/models/tiny/versions/2"),
                                              ("GET", "/v2/models/tiny/versions/2/ready"),
                                              ("POST", "/v2/models/tiny/versions/01/infer")])
def test_any_other_version_is_a_404_naming_the_versions_there_are(client, model_store, method, path):
    body, headers = binary_request(images(1))
    problem = assert_v2_problem(client.request(method, path, content=body if method == "POST" else None,
                                               headers=headers), 404, "has no version")
    assert problem["detail"].endswith("its versions are ['1']")
    missing = client.request(method, path.replace("tiny", "nope"), content=body if method == "POST" else None,
                             headers=headers)
    assert_v2_problem(missing, 404, "nope")


def test_head_and_405_on_the_version_paths(client, model_store):
    headers = auth("inference")
    for path in (VERSION_1, f"{VERSION_1}/ready"):
        head = client.head(path, headers=headers)
        assert head.status_code == 200 and head.content == b"", path
        refused = client.post(path, headers=headers)
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD", path
    refused = client.get(f"{VERSION_1}/infer", headers=headers)
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert refused.headers["content-type"] == "application/json" and refused.json()["error"]


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", lambda data: zlib.compress(data, wbits=31)), ("deflate", zlib.compress),
    ("GZip", lambda data: zlib.compress(data, wbits=31)), ("identity", lambda data: data)])
def test_compressed_bodies_are_decompressed(client, model_store, encoding, compress):
    body, headers = binary_request(images(3), parameters={"binary_data_output": True})
    plain = client.post(INFER, content=body, headers=headers)
    response = client.post(INFER, content=compress(body), headers={**headers, "Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.content == plain.content


@pytest.mark.parametrize(("encoding", "body", "status", "needle"), [
    ("br", b"{}", 415, "Content-Encoding 'br' is not supported; send the body as is (identity) or compressed with "
                       "gzip or deflate"),
    ("gzip, gzip", b"{}", 415, "gzip or deflate"),
    ("gzip", b"{}", 422, "not valid gzip data"),
    ("deflate", zlib.compress(b'{"inputs": []}')[:-3], 422, "not one complete deflate stream"),
    ("gzip", zlib.compress(b"{}", wbits=31) + b"more", 422, "not one complete gzip stream"),
])
def test_bad_encodings_are_problems(client, model_store, encoding, body, status, needle):
    response = client.post(INFER, content=body, headers={**auth("inference"), "Content-Encoding": encoding})
    assert_v2_problem(response, status, needle)


def test_a_body_that_decompresses_beyond_the_size_limit_is_413_unread(settings, model_store, monkeypatch):
    small = settings.model_copy(update={"max_body_bytes": 4096})
    request = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    fits = json.dumps(request).encode()
    bomb = zlib.compress(fits + b" " * 3_000_000, wbits=31)  # valid JSON, 3 MB: refused for its size alone
    assert len(bomb) < 4096
    asked: list[int] = []

    class Inflater:  # zlib's, recording how much each call may decompress
        def __init__(self, wbits: int):
            self.inflater = decompressobj(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            asked.append(max_length)
            return self.inflater.decompress(data, max_length)

        def __getattr__(self, name: str):
            return getattr(self.inflater, name)

    decompressobj = zlib.decompressobj
    monkeypatch.setattr(zlib, "decompressobj", Inflater)
    headers = {**auth("inference"), "Content-Encoding": "gzip"}
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        assert client.post(INFER, content=zlib.compress(fits, wbits=31), headers=headers).status_code == 200
        assert_v2_problem(client.post(INFER, content=bomb, headers=headers), 413,
                          "the body decompresses to more than 4096 bytes (UNLEARND_MAX_BODY_BYTES)")
    assert asked == [4097, 4097]  # never more than the limit (and one byte to tell that it is over)


def test_malformed_bodies_and_headers_are_problems(client, model_store):
    headers = auth("inference")
    assert_v2_problem(client.post(INFER, content=b"{not json", headers=headers), 422, "JSON")
    too_long = {**headers, "Inference-Header-Content-Length": "500"}
    assert_v2_problem(client.post(INFER, content=b"{}", headers=too_long), 422, "the body has 2 bytes")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": [0.5] * 64}]}).encode()
    trailing = {**headers, "Inference-Header-Content-Length": str(len(body))}
    assert_v2_problem(client.post(INFER, content=body + b"xx", headers=trailing), 422, "2 bytes follow")
    response = client.post(INFER, content=body, headers={**headers, "Inference-Header-Content-Length": "-1"})
    assert response.status_code == 422 and response.json()["error"]


def test_infer_needs_the_inference_role(client, model_store):
    body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    assert_v2_problem(client.post(INFER, json=body), 401, "API key")
    assert_v2_problem(client.post(INFER, json=body, headers=auth("governance")), 403, "inference")
    assert client.post(INFER, json=body, headers=auth("admin")).status_code == 200
    assert_v2_problem(client.post("/v2/models/nope/infer", json=body, headers=auth("inference")), 404, "nope")
