"""The demo model: a small CNN trained on scikit-learn's 8×8 digits, registered with its dataset."""

from __future__ import annotations

import torch

from models_store import Store
from unlearning import NormalizedClassifier, TrainConfig, build_model, load_digits_split, train_classifier
from unlearning.data import channel_stats

DEMO_MODEL = "digits-cnn"
DEMO_DATASET = "digits"


def ensure_demo_model(store: Store, epochs: int = 30) -> dict:
    """Train and register the demo model once (seconds on CPU); later calls return the stored record."""
    with store.model_lock(DEMO_MODEL):
        if store.has_model(DEMO_MODEL):
            return store.get_model(DEMO_MODEL)
        torch.manual_seed(0)
        train, test = load_digits_split(test_fraction=0.2, seed=0)
        if not store.has_dataset(DEMO_DATASET):
            store.put_dataset(
                {"name": DEMO_DATASET, "source": "builtin:digits", "num_classes": 10,
                 "class_names": [str(i) for i in range(10)], "input_shape": [1, 8, 8],
                 "n_train": len(train), "n_test": len(test), "ids_train": list(train.ids)},
                {"x_train": train.x, "y_train": train.y, "x_test": test.x, "y_test": test.y},
            )
        mean, std = channel_stats(train.x)
        model = NormalizedClassifier(build_model("small_cnn", 1, 10), mean, std)
        train_classifier(model, train, TrainConfig(epochs=epochs, seed=0))
        record = {
            "name": DEMO_MODEL, "arch": "small_cnn", "input_shape": [1, 8, 8], "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "mean": mean, "std": std,
            "train_dataset": DEMO_DATASET, "test_dataset": DEMO_DATASET,
        }
        return store.create_model(record, model.state_dict())
