"""Glue between stored records and the torch core, shared by workers and the API's inference runtime."""

from __future__ import annotations

import io
import warnings

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

    Input: raw pixels (B, C, H, W) in [0, 1]; output: logits (B, num_classes). Records with format
    "torchscript" take the network from their stored archive (admin uploads only); the others build
    `arch`. Either way the stored weights are the state_dict of the NormalizedClassifier around it.
    """
    if record.get("format", "safetensors") == "torchscript":
        net = load_torchscript_net(store.load_torchscript(record["name"], record["torchscript_sha256"]))
    else:
        net = build_model(record["arch"], record["input_shape"][0], record["num_classes"])
    model = NormalizedClassifier(net, record["mean"], record["std"])
    model.load_state_dict(store.load_weights(record["name"], weights_sha256))
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_torchscript_net(data: bytes) -> torch.nn.Module:
    """A TorchScript archive's module on the CPU. torch.jit.load runs the archive's code: only for
    archives an admin registered (POST /v1/models), never for anything a client sends."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": still the format
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def load_image_sets(store: Store, dataset_name: str) -> tuple[ImageSet, ImageSet | None]:
    """(train, test) of a stored dataset as float images in [0, 1]; test is None when it has none."""
    record, tensors = store.load_dataset(dataset_name)

    def as_float(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    train = ImageSet(as_float(tensors["x_train"]), tensors["y_train"].long(), tuple(record["ids_train"]))
    test = None
    if "x_test" in tensors:
        n = len(tensors["y_test"])
        test = ImageSet(as_float(tensors["x_test"]), tensors["y_test"].long(),
                        tuple(f"test-{i}" for i in range(n)))
    return train, test


def load_model_data(store: Store, record: dict) -> tuple[ImageSet, ImageSet | None]:
    """(train, held-out) images of a registered model: its `train_dataset`'s training split, and for TA, the
    membership attack and the sample-wise target its `test_dataset` (that dataset's test split, or all of it
    when it has none), else the train dataset's own test split."""
    train, test = load_image_sets(store, record["train_dataset"])
    other = record.get("test_dataset")
    if other and other != record["train_dataset"]:
        other_train, other_test = load_image_sets(store, other)
        test = other_test if other_test is not None else other_train
    return train, test
