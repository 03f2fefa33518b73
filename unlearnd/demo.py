"""The demo model: a small CNN trained on scikit-learn's 8×8 digits, registered with its dataset."""

from __future__ import annotations

import torch

from models_store import Store
from unlearnd.ingest.datasets import load_builtin_digits
from unlearnd.runtime import load_image_sets
from unlearning import NormalizedClassifier, TrainConfig, build_model, train_classifier
from unlearning.data import channel_stats

DEMO_MODEL = "digits-cnn"
DEMO_DATASET = "digits"


def ensure_demo_model(store: Store, epochs: int = 30) -> dict:
    """Train and register the demo model once (seconds on CPU); later calls return the stored record.

    Its dataset is the builtin digits, registered as POST /v1/datasets {"source": "builtin:digits"} would.
    """
    with store.model_lock(DEMO_MODEL):
        if store.has_model(DEMO_MODEL):
            return store.get_model(DEMO_MODEL)
        if not store.has_dataset(DEMO_DATASET):
            digits = load_builtin_digits()
            store.put_dataset(digits.record(DEMO_DATASET), digits.tensors)
        train, _ = load_image_sets(store, DEMO_DATASET)
        torch.manual_seed(0)
        mean, std = channel_stats(train.x)
        model = NormalizedClassifier(build_model("small_cnn", 1, 10), mean, std)
        train_classifier(model, train, TrainConfig(epochs=epochs, seed=0))
        record = {
            "name": DEMO_MODEL, "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "mean": mean, "std": std,
            "train_dataset": DEMO_DATASET, "test_dataset": DEMO_DATASET,
        }
        return store.create_model(record, model.state_dict())
