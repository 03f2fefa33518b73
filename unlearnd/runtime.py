"""Glue between stored records and the torch core, shared by workers and the API's inference runtime."""

from __future__ import annotations

import torch

from models_store import Store
from unlearning import ImageSet, NormalizedClassifier, build_model


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; otherwise the named device."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def load_classifier(store: Store, record: dict, weights_sha256: str, device: torch.device) -> torch.nn.Module:
    """The model of `record` with the given stored weights, normalisation inside, frozen, in eval mode.

    Input: raw pixels (B, C, H, W) in [0, 1]; output: logits (B, num_classes).
    """
    channels = record["input_shape"][0]
    net = build_model(record["arch"], channels, record["num_classes"])
    model = NormalizedClassifier(net, record["mean"], record["std"])
    model.load_state_dict(store.load_weights(record["name"], weights_sha256))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_image_sets(store: Store, dataset_name: str) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) of a stored dataset as float images in [0, 1]; test is None when it has none."""
    record, tensors = store.load_dataset(dataset_name)

    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    train = ImageSet(as_float(tensors["x_train"]), tensors["y_train"].long(), tuple(record["ids_train"]))
    test = None
    if "x_test" in tensors:
        n = len(tensors["y_test"])
        test = ImageSet(as_float(tensors["x_test"]), tensors["y_test"].long(), tuple(f"test-{i}" for i in range(n)))
    return train, test
