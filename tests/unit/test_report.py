"""workers.report: what report.png shows is measured as served (weights, δ, gate), it decodes as a PNG, and a
report that cannot be rendered never fails the request."""

from __future__ import annotations

import io

import matplotlib.image
import pytest
import torch

from models_store import NotFoundError
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings
from unlearning import NormalizedClassifier, build_model
from workers.publishing import Outcome
from workers.report import SAMPLES_SHOWN, draw_report, measure_report, save_report

BATCH = [{"id": "fr_1", "model": "tiny", "classes": [1], "samples": None, "method": "forget_vector"}]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, api_keys="admin:a", device="cpu")


@pytest.fixture
def store(settings):
    """Model `tiny` (10 classes, 1×8×8) on 40 training and 20 test images of classes 0..9."""
    store = open_store(settings)
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 10
    store.put_dataset({"name": "tinyset", "ids_train": [f"s{i}" for i in range(40)], "num_classes": 10},
                      {"x_train": torch.rand(40, 1, 8, 8, generator=generator), "y_train": y,
                       "x_test": torch.rand(20, 1, 8, 8, generator=generator), "y_test": y[:20].clone()})
    torch.manual_seed(0)
    net = NormalizedClassifier(build_model("small_cnn", 1, 10), [0.5], [0.25])
    store.create_model({"name": "tiny", "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10,
                        "mean": [0.5], "std": [0.25], "train_dataset": "tinyset",
                        "class_names": [f"c{i}" for i in range(10)]}, net.state_dict())
    return store


def _vector_outcome(store, value: float) -> Outcome:
    """State 2 serves a universal δ (= value everywhere) that forgets class 1."""
    before = store.read_state("tiny")
    manifest = store.put_artifact({"delta": torch.full((1, 8, 8), value)}, {
        "kind": "forget_vector", "model": "tiny", "weights_sha256": before.weights_sha256, "request_ids": ["fr_1"]})
    after = store.publish_state(before.advanced(artifacts=[manifest["id"]], requests=["fr_1"], forgotten_classes=[1]))
    metrics = {"before": {"UA": 10.0, "RA": 90.0}, "after": {"UA": 100.0, "RA": 89.5}}
    return Outcome({"method": "forget_vector", "strategy": "class_vector", "artifact_id": manifest["id"],
                    "metrics": metrics}, before, after, [manifest])


def test_a_vector_report_shows_delta_samples_and_per_class_accuracy_as_served(store, settings):
    data = measure_report(store, settings, _vector_outcome(store, 0.2), BATCH)
    assert data.delta is not None and data.delta.shape == (1, 8, 8) and float(data.delta.max()) == pytest.approx(0.2)
    assert "on every input" in data.delta_note and data.forgotten == [1]
    assert "UA 10.0 → 100.0" in data.subtitle and "v1 → v2" in data.title and "fr_1" in data.title
    assert len(data.accuracy_before) == len(data.accuracy_after) == 10 and data.accuracy_on.startswith("held-out")
    assert data.class_names[1] == "c1"
    forget = [e for e in data.examples if e.kind == "forget"]
    retain = [e for e in data.examples if e.kind == "retain"]
    assert len(forget) == 4 and all(e.label == 1 for e in forget)  # class 1 has 4 training images
    assert len(retain) == SAMPLES_SHOWN and all(e.label != 1 for e in retain)
    for example in data.examples:  # a universal δ: every input is received as clip(x + δ)
        assert example.received_after == pytest.approx((example.x + 0.2).clip(0, 1))

    png = draw_report(data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[:2] == (860, 1200)


def test_a_weight_edit_gets_a_note_instead_of_delta(store, settings):
    before = store.read_state("tiny")
    record = store.get_model("tiny")
    weights = store.load_weights("tiny", record["weights_sha256"])
    new_sha = store.put_weights("tiny", {k: v * 0.5 if v.is_floating_point() else v for k, v in weights.items()})
    after = store.publish_state(before.advanced(weights_sha256=new_sha, requests=["fr_1"], smoothed_classes=[1]))
    outcome = Outcome({"method": "zero_shot", "metrics": {}}, before, after, [])
    data = measure_report(store, settings, outcome, [{**BATCH[0], "method": "zero_shot"}])
    assert data.delta is None and "zero_shot edited the weights" in data.delta_note
    assert before.weights_sha256[:12] in data.delta_note and new_sha[:12] in data.delta_note
    assert all(e.received_after == pytest.approx(e.x) for e in data.examples)  # inputs served unchanged
    assert draw_report(data).startswith(b"\x89PNG")


def test_save_report_stores_it_for_every_request_of_the_batch(store, settings):
    batch = [BATCH[0], {**BATCH[0], "id": "fr_2"}]
    save_report(store, settings, _vector_outcome(store, 0.1), batch)
    assert store.get_report("fr_1") == store.get_report("fr_2") and store.get_report("fr_1").startswith(b"\x89PNG")


def test_a_report_that_cannot_be_rendered_never_raises(store, settings):
    outcome = _vector_outcome(store, 0.1)
    broken = Outcome(outcome.result, outcome.state_before.advanced(weights_sha256="0" * 64), outcome.state_after, [])
    save_report(store, settings, broken, BATCH)  # the weights do not exist: logged, not raised
    with pytest.raises(NotFoundError):
        store.get_report("fr_1")
