"""The Open Inference Protocol with the real client (tritonclient[http]) against the real server (uvicorn started
by the `stack` fixture, the digits demo model): health, metadata, inference with binary and JSON tensors, errors,
the paths of a model version, compressed requests; and a served state announced by a bump in another process
reaches the API at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import KEYS
from unlearnd.demo import DEMO_MODEL
from unlearnd.queue import redis_connection
from unlearnd.state_versions import StateVersions


def key() -> dict[str, str]:
    """A new dict per call: the client adds Inference-Header-Content-Length to the one it is given."""
    return {"Authorization": f"Bearer {KEYS['inference']}"}


@pytest.fixture
def triton(stack):
    client = httpclient.InferenceServerClient(url=stack.base_url.removeprefix("http://"))
    yield client
    client.close()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def v1_probabilities(stack, x: np.ndarray, model: str = DEMO_MODEL) -> np.ndarray:
    with stack.client("inference") as client:
        response = client.post(f"/v1/models/{model}/predict", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return np.array([p["probabilities"] for p in response.json()["predictions"]])


def tensor(x: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_readiness_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(DEMO_MODEL, headers=key())
    assert not triton.is_model_ready("no-such-model", headers=key())
    metadata = triton.get_model_metadata(DEMO_MODEL, headers=key())
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    assert "binary_tensor_data" in triton.get_server_metadata(headers=key())["extensions"]


def test_binary_inference_agrees_with_v1(stack, triton):
    x = images(5)
    result = triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary=True)], headers=key())  # binary outputs
    probabilities, labels = result.as_numpy("probabilities"), result.as_numpy("label")
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, 10)
    assert np.allclose(probabilities, v1_probabilities(stack, x), atol=1e-6)
    assert labels.dtype == np.int64 and (labels == probabilities.argmax(1)).all()
    assert result.get_response()["model_name"] == DEMO_MODEL


def test_json_tensors_and_json_outputs(stack, triton):
    x = images(3, seed=1)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("probabilities", "label")]
    result = triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary=False)], outputs=outputs, request_id="r-1",
                          headers=key())
    answer = result.get_response()
    assert answer["id"] == "r-1" and all("data" in output for output in answer["outputs"])
    assert np.allclose(result.as_numpy("probabilities"), v1_probabilities(stack, x), atol=1e-6)


def test_uint8_tensors(stack, triton):
    pixels = np.random.default_rng(2).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    expected = v1_probabilities(stack, pixels.astype(np.float32) / 255)
    for binary in (True, False):
        result = triton.infer(DEMO_MODEL, [tensor(pixels, "UINT8", binary)], headers=key())
        assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-6)


def test_errors_reach_the_client_with_their_detail(triton):
    x = images(1)
    wrong = httpclient.InferInput("pixels", list(x.shape), "FP32")
    wrong.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="takes one input, 'input'") as refused:
        triton.infer(DEMO_MODEL, [wrong], headers=key())
    assert refused.value.status() == "422"
    with pytest.raises(InferenceServerException, match="API key") as unauthorized:
        triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary=True)])
    assert unauthorized.value.status() == "401"
    with pytest.raises(InferenceServerException, match="no model named"):
        triton.infer("no-such-model", [tensor(x, "FP32", binary=True)], headers=key())


def test_the_version_paths_the_client_builds_for_a_model_version(embedded_stack, triton):
    assert triton.get_model_metadata(DEMO_MODEL, "1", headers=key())["versions"] == ["1"]
    assert triton.is_model_ready(DEMO_MODEL, "1", headers=key())
    assert not triton.is_model_ready(DEMO_MODEL, "2", headers=key())
    x = images(2, seed=4)
    result = triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary=True)], model_version="1", headers=key())
    assert result.get_response()["model_version"] == "1"
    assert np.allclose(result.as_numpy("probabilities"), v1_probabilities(embedded_stack, x), atol=1e-6)
    with pytest.raises(InferenceServerException, match=r"has no version '2'; its versions are \['1'\]") as refused:
        triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary=True)], model_version="2", headers=key())
    assert refused.value.status() == "404"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(embedded_stack, triton, algorithm):
    x = images(3, seed=5)
    expected = v1_probabilities(embedded_stack, x)
    for binary in (True, False):
        result = triton.infer(DEMO_MODEL, [tensor(x, "FP32", binary)], request_compression_algorithm=algorithm,
                              headers=key())
        assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-6)


def test_a_state_announced_by_a_bump_is_served_at_once(stack, triton):
    name = stack.clone_demo_model("v2-announced")
    versions = StateVersions(redis_connection(stack.settings), stack.settings.queue_name)
    versions.bump(name)
    x = tensor(images(2, seed=3), "FP32", binary=True)
    before = triton.infer(name, [x], headers=key())
    assert before.get_response()["parameters"]["state_version"] == 1

    store = stack.store  # publish as a worker does: the state, then the bump
    state = store.read_state(name)
    manifest = store.put_artifact({"delta": torch.full((1, 8, 8), 0.4)}, {
        "kind": "forget_vector", "model": name, "weights_sha256": state.weights_sha256, "request_ids": []})
    store.publish_state(state.advanced(artifacts=[manifest["id"]]))
    versions.bump(name)
    after = triton.infer(name, [x], headers=key())
    assert after.get_response()["parameters"]["state_version"] == 2
    assert after.get_response()["parameters"]["applied"] == manifest["id"]
    assert not np.allclose(after.as_numpy("probabilities"), before.as_numpy("probabilities"))
