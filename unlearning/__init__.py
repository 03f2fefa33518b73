"""The pure unlearning core: torch only, no web, queue or storage code.

Methods take a frozen model (raw [0, 1] pixel input, normalisation inside), the forget/retain split and a
frozen config dataclass, and return tensors plus a small record of what they did.
"""

from unlearning.data import ForgetSplit, ImageSet, load_digits_split, split_by_classes, split_by_ids
from unlearning.exceptions import InvalidForgetSetError, UnknownMethodError, UnlearningError
from unlearning.forget_vector import (
    ForgetVectorConfig,
    ForgetVectorResult,
    learn_forget_vector,
)
from unlearning.evaluation import accuracy, apply_delta
from unlearning.models import NormalizedClassifier, build_model
from unlearning.training import TrainConfig, train_classifier

__all__ = [
    "ForgetSplit", "ForgetVectorConfig", "ForgetVectorResult", "ImageSet", "InvalidForgetSetError",
    "NormalizedClassifier", "TrainConfig", "UnknownMethodError", "UnlearningError", "accuracy", "apply_delta",
    "build_model", "learn_forget_vector", "load_digits_split", "split_by_classes", "split_by_ids",
    "train_classifier",
]
