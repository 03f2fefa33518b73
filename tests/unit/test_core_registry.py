import pytest

from unlearning import UnknownMethodError
from unlearning.arithmetic import CoefficientConfig, learn_coefficients
from unlearning.forget_vector import ForgetVectorConfig, learn_forget_vector
from unlearning.registry import METHODS, get_method, served_methods
from unlearning.smoothing import SmoothingConfig, lipschitz_smoothing
from unlearning.training import TrainConfig


def test_methods_resolve_to_their_functions_and_configs():
    assert get_method("forget_vector").load() is learn_forget_vector
    assert get_method("forget_vector").config_class() is ForgetVectorConfig
    assert get_method("vector_arithmetic").load() is learn_coefficients
    assert get_method("arithmetic").config_class() is CoefficientConfig
    assert get_method("jit").load() is lipschitz_smoothing
    assert get_method("zero_shot").config_class() is SmoothingConfig
    assert get_method("retrain").config_class() is TrainConfig
    assert not get_method("zero_shot").needs_retain and not get_method("zero_shot").needs_labels


def test_baselines_are_registered_but_not_served():
    assert set(served_methods()) == {"forget_vector", "vector_arithmetic", "zero_shot"}
    assert {"retrain", "fine_tune", "gradient_ascent"} <= set(METHODS)
    for name in METHODS:
        assert callable(get_method(name).load())


def test_unknown_method_is_a_domain_error():
    with pytest.raises(UnknownMethodError, match="known: forget_vector"):
        get_method("scrub")
