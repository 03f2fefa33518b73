"""The one method registry: the API accepts exactly its names, `auto` follows its rule, methods load
lazily."""

import subprocess
import sys
import typing

import pytest

from service.schemas import Method
from workers.errors import MethodNotAvailable
from workers.methods import AUTO, METHODS, REQUESTABLE, resolve_method


def test_api_accepts_exactly_the_registered_names():
    assert set(typing.get_args(Method)) == set(REQUESTABLE) == {AUTO, *METHODS}


@pytest.mark.parametrize(("kind", "value", "expected"), [("classes", [3], "forget_vector"),
                                                         ("samples", ["a"], "zero_shot")])
def test_auto_picks_the_method_registered_for_the_forget_kind(kind, value, expected):
    record = {"method": "auto", "classes": None, "samples": None, kind: value}
    assert resolve_method(record).name == expected
    assert METHODS[expected].auto_for == kind


def test_a_named_method_is_its_own_and_an_unknown_one_is_refused():
    assert resolve_method({"method": "zero_shot", "classes": [1], "samples": None}).name == "zero_shot"
    with pytest.raises(MethodNotAvailable):
        resolve_method({"method": "vector_arithmetic", "classes": [1], "samples": None})


def test_every_entry_loads_a_run_function():
    for entry in METHODS.values():
        assert callable(entry.load())


def test_the_registry_imports_no_torch():
    code = "import sys, workers.methods; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
