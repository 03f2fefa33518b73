"""The `kserve` Python client's Open Inference Protocol (V2) REST calls against a running unlearnd API; run by
tests/integration/test_v2_kserve_client.py in a process of its own (`kserve` parses the command line and may set up
logging when imported).

Usage: python -m tests.integration.kserve_calls < {"base_url": ..., "key": ..., "model": ..., "images": [...]}
(on standard input, not the command line, which `kserve` parses); prints one JSON object: what each call answered.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def calls(base_url: str, key: str, model: str, x: np.ndarray) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    answers: dict = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        answers["live"] = await client.is_server_live(base_url)
        answers["ready"] = await client.is_server_ready(base_url)
        answers["model_ready"] = await client.is_model_ready(base_url, model, headers=headers)
        answers["missing_model_ready"] = await client.is_model_ready(base_url, "no-such-model", headers=headers)
        for binary in (False, True):
            tensor = InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            response = await client.infer(base_url, InferRequest(model, [tensor], request_id=f"k-{binary}"),
                                          model_name=model, headers=dict(headers))
            answers["binary" if binary else "json"] = {
                "id": response.id, "model_name": response.model_name,
                "probabilities": response.outputs[0].as_numpy().tolist(), "outputs": [
                    (o.name, o.datatype, o.shape) for o in response.outputs],
                "label": response.outputs[1].as_numpy().tolist()}
        try:
            await client.infer(base_url, InferRequest(model, [InferInput("input", [1, 2], "FP32", [[0.5, 0.5]])]),
                               model_name=model, headers=dict(headers))
        except httpx.HTTPStatusError as exc:
            answers["bad_shape"] = {"status": exc.response.status_code, "message": str(exc),
                                    "content_type": exc.response.headers["content-type"],
                                    "error": exc.response.json().get("error")}
    finally:
        await client.close()
    return answers


if __name__ == "__main__":
    given = json.load(sys.stdin)
    images = np.asarray(given["images"], dtype=np.float32)
    print(json.dumps(asyncio.run(calls(given["base_url"], given["key"], given["model"], images))))
