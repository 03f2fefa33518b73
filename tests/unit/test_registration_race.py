"""Registering one name twice at the same moment: exactly one registration wins, the other gets
AlreadyExistsError (409 through the API), and what is stored always matches its record."""

from __future__ import annotations

import threading

import pytest
import torch

from models_store import Store
from models_store.errors import AlreadyExistsError

THREADS = 6


def _race(work, n=THREADS):
    """Run work(i) in n threads released together; returns (results, errors) by thread index."""
    barrier = threading.Barrier(n)
    results, errors = {}, {}

    def run(i):
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def _tensors(i: int, n: int = 2000) -> dict[str, torch.Tensor]:
    return {"x_train": torch.full((n, 1, 8, 8), float(i) / THREADS), "y_train": torch.full((n,), i)}


@pytest.mark.parametrize("attempt", range(5))
def test_concurrent_dataset_registrations_of_one_name(tmp_path, attempt):
    store = Store(tmp_path / "store")
    results, errors = _race(lambda i: store.put_dataset({"name": "same", "writer": i}, _tensors(i)))
    assert len(results) == 1, (results, errors)
    assert all(isinstance(e, AlreadyExistsError) for e in errors.values()) and len(errors) == THREADS - 1
    (winner, record), = results.items()
    stored, tensors = store.load_dataset("same")  # raises IntegrityError if data and record disagree
    assert stored == record and stored["writer"] == winner
    assert int(tensors["y_train"][0]) == winner


def _weights(i: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), float(i))}


@pytest.mark.parametrize("attempt", range(5))
def test_concurrent_model_registrations_of_one_name(tmp_path, attempt):
    store = Store(tmp_path / "store")
    results, errors = _race(lambda i: store.create_model({"name": "same", "writer": i}, _weights(i)))
    assert len(results) == 1 and len(errors) == THREADS - 1, (results, errors)
    assert all(isinstance(e, AlreadyExistsError) for e in errors.values())
    (winner, record), = results.items()
    assert store.get_model("same") == record
    state = store.read_state("same")
    assert state.weights_sha256 == record["weights_sha256"] and state.state_version == 1
    assert float(store.load_weights("same", record["weights_sha256"])["w"][0, 0]) == winner


def test_concurrent_new_versions_each_get_their_own_number(tmp_path):
    store = Store(tmp_path / "store")
    store.create_model({"name": "m", "writer": -1}, _weights(99))
    results, errors = _race(lambda i: store.create_model_version({"name": "m", "writer": i}, _weights(i)))
    assert errors == {}
    versions = sorted(r["version"] for r in results.values())
    assert versions == list(range(2, THREADS + 2))  # no two writers took the same version
    current = store.get_model("m")
    assert current["version"] == THREADS + 1
    assert store.read_state("m").weights_sha256 == current["weights_sha256"]
    assert [r["version"] for r in store.list_model_versions("m")] == list(range(1, THREADS + 2))
