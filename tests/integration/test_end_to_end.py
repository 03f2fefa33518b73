"""Deletion request -> RQ job -> forget vector -> predictions with it applied, over real HTTP."""

from __future__ import annotations

import time

import numpy as np

from unlearnd.demo import DEMO_MODEL
from unlearnd.runtime import load_image_sets


def _test_set(stack):
    _, test = load_image_sets(stack.store, stack.store.get_model(DEMO_MODEL)["train_dataset"])
    return test.x.numpy(), test.y.numpy()


def _predict_labels(stack, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Labels for all of x, in calls of at most 100 images; returns the last response body too."""
    labels = []
    with stack.client("inference") as c:
        for start in range(0, len(x), 100):
            response = c.post(f"/v1/models/{DEMO_MODEL}/predict",
                              json={"inputs": x[start:start + 100].tolist()})
            assert response.status_code == 200, response.text
            body = response.json()
            labels += [p["label"] for p in body["predictions"]]
    return np.array(labels), body


def test_class_deletion_end_to_end(stack):
    x, y = _test_set(stack)
    forgotten = 3
    before, body = _predict_labels(stack, x)
    assert body["applied"] == []
    others = y != forgotten
    acc_forgotten_before = (before[~others] == y[~others]).mean()
    acc_others_before = (before[others] == y[others]).mean()
    assert acc_forgotten_before > 0.9

    with stack.client("governance") as c:
        response = c.post(f"/v1/models/{DEMO_MODEL}/forget-requests",
                          json={"classes": [forgotten], "reason": "integration test"})
        assert response.status_code == 202, response.text
        request_id = response.json()["id"]
        assert response.headers["location"] == f"/v1/forget-requests/{request_id}"
        assert response.json()["status"] == "queued"
        fractions, deadline = [], time.monotonic() + 150
        while time.monotonic() < deadline:
            record = c.get(f"/v1/forget-requests/{request_id}").json()
            fractions.append(record["progress"]["fraction"])
            if record["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
    assert record["status"] == "succeeded", record
    assert any(0 < f < 1 for f in fractions), "progress never moved while the job ran"
    assert fractions == sorted(fractions)
    result = record["result"]
    assert result["metrics"]["after"]["UA"] >= 95 and result["duration_s"] > 0

    after, body = _predict_labels(stack, x)
    assert body["applied"] == [result["artifact_id"]]
    assert (after[~others] == y[~others]).mean() <= 0.05
    assert (after[others] == y[others]).mean() >= acc_others_before - 0.05

    with stack.client("governance") as c:
        model = c.get(f"/v1/models/{DEMO_MODEL}").json()
    assert request_id in model["unlearning"]["requests"]
    assert forgotten in model["unlearning"]["forgotten_classes"]
