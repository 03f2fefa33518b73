"""The one method registry: the API accepts exactly its names, `auto` follows its rule, methods load
lazily."""

import subprocess
import sys
import typing

import pytest

from service.schemas import Method
from workers.errors import MethodNotAvailable
from workers.methods import AUTO, METHODS, REQUESTABLE, method_plan


def test_api_accepts_exactly_the_registered_names():
    assert set(typing.get_args(Method)) == set(REQUESTABLE) == {AUTO, *METHODS}


@pytest.mark.parametrize(("kind", "value", "expected"), [("classes", [3], ["forget_vector", "zero_shot"]),
                                                         ("samples", ["a"], ["zero_shot", "forget_vector"])])
def test_auto_tries_the_method_registered_for_the_forget_kind_first_then_the_others(kind, value, expected):
    record = {"method": "auto", "classes": None, "samples": None, kind: value}
    assert [entry.name for entry in method_plan(record)] == expected
    assert METHODS[expected[0]].auto_for == kind


def test_a_named_method_is_its_own_and_an_unknown_one_is_refused():
    assert [e.name for e in method_plan({"method": "zero_shot", "classes": [1], "samples": None})] == ["zero_shot"]
    with pytest.raises(MethodNotAvailable):
        method_plan({"method": "vector_arithmetic", "classes": [1], "samples": None})


def test_every_entry_loads_a_run_function():
    for entry in METHODS.values():
        assert callable(entry.load())


def test_the_registry_imports_no_torch():
    code = "import sys, workers.methods; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
