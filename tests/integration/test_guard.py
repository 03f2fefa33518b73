"""The utility guard end to end: a candidate that fails it is never published, and `auto` falls back.

The client's model is a bias-free linear classifier on digits with a backdoor: 60 training images of other digits
carry a marker pixel (pixel (0, 0), blank in every digit) and the label 0, so the model calls any marked image 0.
Deleting those samples should make marked images be read by their digit again. Zero-shot smoothing of a linear
model only shrinks its weights, which never removes the marker's pull, so its candidate fails the guard; a
sample-wise forget vector can darken the marker pixel (clean images are unchanged by it: the pixel is already 0).
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from unlearnd.runtime import load_image_sets

MODEL = "backdoored-linear"
MARKED = 60


def _backdoored_data(stack) -> dict[str, np.ndarray]:
    train, test = load_image_sets(stack.store, "digits")
    x, y = train.x.numpy(), train.y.numpy()
    pick = np.random.default_rng(0).choice(np.where(y != 0)[0], MARKED, replace=False)
    marked = x[pick].copy()
    marked[:, 0, 0, 0] = 1.0
    tx, ty = test.x.numpy(), test.y.numpy()
    marked_test = tx[ty != 0].copy()
    marked_test[:, 0, 0, 0] = 1.0  # held-out marked images keep their true digit as label
    return {
        "x_train": np.concatenate([x, marked]), "y_train": np.concatenate([y, np.zeros(MARKED, dtype=y.dtype)]),
        "ids_train": np.array([f"clean-{i}" for i in range(len(x))] + [f"marked-{i}" for i in range(MARKED)]),
        "x_test": np.concatenate([tx, marked_test]), "y_test": np.concatenate([ty, ty[ty != 0]]),
    }


def _fit_linear(data: dict[str, np.ndarray]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = torch.tensor(data["x_train"]), torch.tensor(data["y_train"])
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def backdoored(stack):
    data = _backdoored_data(stack)
    model = _fit_linear(data)
    archive, arrays = io.BytesIO(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(model), archive)
    np.savez(arrays, **data)
    metadata = {"name": MODEL, "input_shape": [1, 8, 8], "num_classes": 10, "train_dataset": "backdoored",
                "test_dataset": "backdoored"}
    with stack.client("admin") as c:
        created = c.post("/v1/datasets", data={"name": "backdoored"},
                         files={"file": ("b.npz", arrays.getvalue(), "application/octet-stream")})
        assert created.status_code == 201, created.text
        registered = c.post("/v1/models", data={"metadata": json.dumps(metadata)},
                            files={"file": ("m.pt", archive.getvalue(), "application/octet-stream")})
        assert registered.status_code == 201, registered.text
    marked_test = data["x_test"][data["x_test"][:, 0, 0, 0] == 1.0][:200]  # one /predict call
    return [str(i) for i in data["ids_train"][-MARKED:]], marked_test


def _predict(stack, x: np.ndarray) -> np.ndarray:
    with stack.client("inference") as c:
        response = c.post(f"/v1/models/{MODEL}/predict", json={"inputs": x.tolist()})
    assert response.status_code == 200, response.text
    return np.array([p["label"] for p in response.json()["predictions"]])


def _submit(stack, body: dict) -> dict:
    with stack.client("governance") as c:
        response = c.post(f"/v1/models/{MODEL}/forget-requests", json=body)
    assert response.status_code == 202, response.text
    return stack.wait_terminal(response.json()["id"])


def test_a_candidate_that_fails_the_guard_is_not_published_and_the_old_state_serves(stack, backdoored):
    marked_ids, marked_test = backdoored
    state_before = stack.state(MODEL)
    served_before = _predict(stack, marked_test)
    assert (served_before == 0).mean() > 0.9  # the backdoor works

    record = _submit(stack, {"samples": marked_ids, "method": "zero_shot"})

    assert record["status"] == "failed", record
    assert "utility guard" in record["error"] and "nothing was published" in record["error"]
    (refusal,) = record["result"]["guard_refusals"]
    assert refusal["method"] == "zero_shot" and refusal["guard"]["passed"] is False
    assert len(refusal["guard"]["attempts"]) == 2 and not any(a["passed"] for a in refusal["guard"]["attempts"])
    verdict = refusal["guard"]["verdict"]
    assert verdict["bound"] == 3.0 and verdict["forget_accuracy"] > verdict["forget_target"] + 5.0
    assert stack.state(MODEL)["state_version"] == state_before["state_version"]
    assert stack.state(MODEL)["weights_sha256"] == state_before["weights_sha256"]
    assert np.array_equal(_predict(stack, marked_test), served_before)


def test_auto_on_samples_falls_back_to_a_forget_vector_when_zero_shot_cannot_pass(stack, backdoored):
    marked_ids, marked_test = backdoored
    record = _submit(stack, {"samples": marked_ids})

    assert record["status"] == "succeeded", record
    result = record["result"]
    assert result["method"] == "forget_vector"
    assert result["auto"]["chosen"] == "forget_vector" and "zero_shot failed the utility guard" in result["auto"]["why"]
    assert [r["method"] for r in result["auto"]["refused"]] == ["zero_shot"]
    assert result["guard"]["passed"] is True
    assert result["guard"]["verdict"]["candidate"] >= result["guard"]["verdict"]["baseline"] - 3.0
    with stack.client("governance") as c:
        receipt = c.get(f"/v1/forget-requests/{record['id']}/receipt").json()
    assert receipt["receipt"]["guard"] == result["guard"]
    assert (_predict(stack, marked_test) == 0).mean() < 0.7  # marked images are read by their digit again
