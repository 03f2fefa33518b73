"""The Open Inference Protocol with KServe's own Python client (`kserve.InferenceRESTClient`, protocol v2) against
the real server (the `stack` fixture's uvicorn, the digits demo model): health, model readiness, inference with JSON
and binary tensors, and an error it raises. The client runs in a process of its own (tests/integration/
kserve_calls.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.integration.conftest import KEYS
from tests.integration.test_v2_tritonclient import images, v1_probabilities
from unlearnd.demo import DEMO_MODEL


@pytest.fixture(scope="module")
def kserve_answers(stack) -> tuple[dict, np.ndarray]:
    """What each of the client's calls answered, and the images it sent (once per module: importing `kserve` takes
    seconds). The API does not depend on the backend: run on the embedded stack only."""
    if stack.backend != "embedded":
        pytest.skip("does not depend on the backend: tested once, on the embedded stack")
    x = images(4, seed=3)
    given = {"base_url": stack.base_url, "key": KEYS["inference"], "model": DEMO_MODEL,
             "images": x.tolist()}
    done = subprocess.run([sys.executable, "-m", "tests.integration.kserve_calls"], input=json.dumps(given),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1]), x


def test_health_and_model_readiness(kserve_answers):
    answers, _ = kserve_answers
    assert answers["live"] is True and answers["ready"] is True
    assert answers["model_ready"] is True and answers["missing_model_ready"] is False


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_inference_agrees_with_v1(embedded_stack, kserve_answers, encoding):
    answers, x = kserve_answers
    answer = answers[encoding]
    assert answer["id"] == f"k-{encoding == 'binary'}" and answer["model_name"] == DEMO_MODEL
    assert answer["outputs"] == [["probabilities", "FP32", [4, 10]], ["label", "INT64", [4]]]
    probabilities = np.array(answer["probabilities"])
    assert np.allclose(probabilities, v1_probabilities(embedded_stack, x), atol=1e-6)
    assert answer["label"] == probabilities.argmax(1).tolist()


def test_a_bad_request_is_the_clients_http_error_with_the_servers_message(kserve_answers):
    bad = kserve_answers[0]["bad_shape"]
    assert bad["status"] == 422 and bad["content_type"] == "application/json"
    assert "shape" in bad["error"] and bad["message"].startswith(bad["error"])  # the client shows the server's word
