import pathlib

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration are marked `integration` (real Redis, forking workers, HTTP)."""
    for item in items:
        if "integration" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
