"""The core must stay importable without the web, queue or storage stack; the API must not import torch."""

import subprocess
import sys

import pytest


def _modules_after_import(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {name.split(".")[0] for name in out.split()}


@pytest.mark.parametrize("package", ["unlearning", "unlearning.metrics", "unlearning.forget_vector"])
def test_core_imports_no_web_queue_or_store(package):
    loaded = _modules_after_import(f"import {package}")
    service_side = {"fastapi", "starlette", "redis", "rq", "models_store", "service", "workers", "uvicorn"}
    assert not loaded & service_side


def test_api_process_imports_torch_only_when_serving_predictions():
    loaded = _modules_after_import("import service.main, service.routes.forget_requests, unlearnd.queue")
    assert "torch" not in loaded


def test_core_errors_import_without_torch():
    """service/errors.py maps the core's errors by class, so importing them must not import torch."""
    assert "torch" not in _modules_after_import("import unlearning.errors")
