"""Two hosts publishing on the same model at once (one database, on SQLite and on PostgreSQL): one wins, the
other is told its state is stale and writes nothing; no update is lost. A job told so goes back in line."""

from __future__ import annotations

import threading

import pytest
import torch

from models_store import Store
from models_store.errors import StaleStateError


def _hosts(tmp_path, database, n: int) -> list[Store]:
    """`n` stores on one database, each with its own blob directory (as hosts with nothing on disk in common
    would have their own caches; the weights are copied to each, as an object store would serve them)."""
    return [Store(tmp_path / f"host-{i}", db=database) for i in range(n)]


def test_two_hosts_publishing_on_the_same_state_one_wins(tmp_path, database):
    a, b = _hosts(tmp_path, database, 2)
    a.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.zeros(2)})
    base_a, base_b = a.read_state("m"), b.read_state("m")
    assert base_a == base_b and base_a.state_version == 1

    won = a.publish_state(base_a.advanced(requests=["fr_a"], forgotten_classes=[1]))
    with pytest.raises(StaleStateError, match="no longer the newest"):
        b.publish_state(base_b.advanced(requests=["fr_b"], forgotten_classes=[2]))
    assert b.read_state("m") == won and [s.state_version for s in b.state_history("m")] == [1, 2]

    # the loser recomputes on the new state: both deletions are in force, none lost
    again = b.publish_state(b.read_state("m").advanced(requests=[*won.requests, "fr_b"], forgotten_classes=[1, 2]))
    assert a.read_state("m") == again and again.requests == ("fr_a", "fr_b")


def test_many_concurrent_publications_on_one_state_exactly_one_is_written(tmp_path, database):
    stores = _hosts(tmp_path, database, 6)
    stores[0].create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.zeros(2)})
    bases = [s.read_state("m") for s in stores]
    barrier = threading.Barrier(len(stores))
    outcomes: dict[int, object] = {}

    def publish(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = stores[i].publish_state(bases[i].advanced(requests=[f"fr_{i}"]))
        except StaleStateError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcomes.items() if not isinstance(o, StaleStateError)]
    assert len(winners) == 1 and len(outcomes) == len(stores)
    history = stores[0].state_history("m")
    assert [s.state_version for s in history] == [1, 2] and history[-1].requests == (f"fr_{winners[0]}",)


def test_a_state_skipping_a_version_is_refused(tmp_path, database):
    (store,) = _hosts(tmp_path, database, 1)
    store.create_model({"name": "m", "arch": "small_cnn"}, {"w": torch.zeros(2)})
    ahead = store.read_state("m").advanced().advanced()  # computed on a version that was never published
    with pytest.raises(StaleStateError):
        store.publish_state(ahead)
    assert store.read_state("m").state_version == 1
