"""The pure unlearning core: torch only, no web, queue or storage code.

Methods take a frozen model (raw [0, 1] pixel input, normalisation inside), the forget/retain split and a
frozen config dataclass, and return tensors plus a small record of what they did.
"""

from __future__ import annotations

import importlib
from typing import Any

# Re-exports, loaded on first use (PEP 562): most of these modules import torch, and `unlearning.errors` must
# import without it (the API process maps the core's errors by class).
_EXPORTS = {
    "InvalidForgetSetError": "unlearning.errors",
    "UnknownMethodError": "unlearning.errors",
    "UnlearningError": "unlearning.errors",
    "ForgetSplit": "unlearning.data",
    "ImageSet": "unlearning.data",
    "load_digits_split": "unlearning.data",
    "split_by_classes": "unlearning.data",
    "split_by_ids": "unlearning.data",
    "ForgetVectorConfig": "unlearning.forget_vector",
    "ForgetVectorResult": "unlearning.forget_vector",
    "learn_forget_vector": "unlearning.forget_vector",
    "accuracy": "unlearning.evaluation",
    "apply_delta": "unlearning.evaluation",
    "NormalizedClassifier": "unlearning.models",
    "build_model": "unlearning.models",
    "TrainConfig": "unlearning.training",
    "train_classifier": "unlearning.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
