"""State version counters (unlearnd.state_versions) and how the inference runtime uses them: no read of the served
state while a model's counter stands still, the new state as soon as the counter moves, and today's behaviour (a
read per batch) while the model has no counter or Redis does not answer."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import redis

from service.inference import InferenceRuntime
from tests.service.conftest import serve_forget_vector
from tests.unit.test_batching import tiny_store
from unlearnd.cli.processes import redis_child, wait_for_redis
from unlearnd.queue import redis_connection
from unlearnd.settings import Settings
from unlearnd.state_versions import StateVersions


@pytest.fixture
def store(tmp_path):
    return tiny_store(tmp_path)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def versions(server) -> StateVersions:
    return StateVersions(fakeredis.FakeRedis(server=server))


class ReadCounter:
    """Wraps `store.read_state` and counts the reads."""

    def __init__(self, store):
        self.reads, self._read = 0, store.read_state

    def __call__(self, *args, **kwargs):
        self.reads += 1
        return self._read(*args, **kwargs)


@pytest.fixture
def reads(store, monkeypatch) -> ReadCounter:
    counter = ReadCounter(store)
    monkeypatch.setattr(store, "read_state", counter)
    return counter


def test_bump_counts_per_model_and_namespace(server):
    one, other = StateVersions(fakeredis.FakeRedis(server=server)), StateVersions(
        fakeredis.FakeRedis(server=server), namespace="elsewhere")
    assert one.current("m") is None
    assert [one.bump("m"), one.bump("m"), one.bump("n")] == [1, 2, 1]
    assert one.current("m") == 2 and other.current("m") is None and one.key("m") == "unlearnd:state-version:m"


def test_ask_sends_the_read_at_once_and_holds_one_connection_until_answered(server):
    versions = StateVersions(fakeredis.FakeRedis(server=server, max_connections=1))
    versions.bump("m")
    answer = versions.ask("m")
    StateVersions(fakeredis.FakeRedis(server=server)).bump("m")  # after the read was sent
    with pytest.raises(redis.ConnectionError, match="Too many connections"):
        versions.current("m")  # the pool's one connection awaits its answer
    assert answer() == 1 and versions.current("m") == 2


def test_ask_after_redis_closed_the_pooled_connection_or_restarted_still_answers():
    """A real redis-server: `ask` takes its connection from the pool, which reconnects one the server closed, as
    for any command; a restart is not an outage of the counters."""
    data_dir = Path(tempfile.mkdtemp(prefix="ul-sv-"))  # short: the socket path must stay < 100 chars
    settings = Settings(data_dir=data_dir)
    server = redis_child(settings)
    server.start()
    try:
        wait_for_redis(settings)
        with redis_connection(settings) as client, redis.Redis.from_url(settings.effective_redis_url) as killer:
            versions = StateVersions(client)
            versions.bump("m")
            assert versions.ask("m")() == 1  # the pool now holds an idle connection
            killer.client_kill_filter(_type="normal", skipme=True)
            assert versions.ask("m")() == 1
            server.stop()
            server.start()
            wait_for_redis(settings)
            versions.bump("m")
            assert versions.ask("m")() == 2
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_state_is_read_only_when_the_counter_moves(store, versions, reads):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    versions.bump("tiny")
    assert runtime.served("tiny").state_version == 1 and reads.reads == 1
    for _ in range(5):
        runtime.served("tiny")
    assert reads.reads == 1  # counter unchanged: no file or database read

    manifest = serve_forget_vector(store, 0.5, ["r"])  # published (reading the state), not yet announced
    published = reads.reads
    assert runtime.served("tiny").state_version == 1 and reads.reads == published
    versions.bump("tiny")
    served = runtime.served("tiny")
    assert served.state_version == 2 and served.artifacts == (manifest["id"],) and reads.reads == published + 1
    runtime.served("tiny")
    assert reads.reads == published + 1


def test_a_prediction_that_starts_after_the_bump_sees_the_new_state(store, versions):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    versions.bump("tiny")
    x = np.full((2, 1, 8, 8), 0.3, dtype=np.float32)

    async def scenario():
        first, _ = await runtime.predict("tiny", x)
        serve_forget_vector(store, 0.5, ["r"])
        versions.bump("tiny")  # what every publisher does before the request is marked succeeded
        second, _ = await runtime.predict("tiny", x)
        return first, second

    first, second = asyncio.run(scenario())
    runtime.close()
    assert (first.state_version, second.state_version) == (1, 2)


def test_a_batch_reads_the_counter_after_its_forward_pass_and_runs_again_when_it_moved(store, versions,
                                                                                     monkeypatch):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    versions.bump("tiny")
    x = np.full((2, 1, 8, 8), 0.3, dtype=np.float32)
    runtime._run_batch("tiny", [x])  # no snapshot yet: the counter is read, then the state loaded
    events: list = []
    forward, ask = runtime._forward, versions.ask
    monkeypatch.setattr(runtime, "_forward", lambda served, batch: events.append(("forward", served.state_version))
                        or forward(served, batch))

    def asking(model):
        answer = ask(model)
        events.append("asked")
        return lambda: events.append("answered") or answer()

    monkeypatch.setattr(versions, "ask", asking)
    (served, _), = runtime._run_batch("tiny", [x])
    assert events == ["asked", ("forward", 1), "answered"] and served.state_version == 1  # the round trip overlaps

    events.clear()
    serve_forget_vector(store, 0.5, ["r"])
    versions.bump("tiny")
    (served, probabilities), = runtime._run_batch("tiny", [x])
    assert events == ["asked", ("forward", 1), "answered", ("forward", 2)] and served.state_version == 2
    assert np.allclose(probabilities, forward(served, x), atol=1e-6)


def test_a_failed_forward_pass_still_takes_the_counter_s_answer(store, server, monkeypatch):
    versions = StateVersions(fakeredis.FakeRedis(server=server, max_connections=1))
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    versions.bump("tiny")
    x = np.full((1, 1, 8, 8), 0.3, dtype=np.float32)
    runtime._run_batch("tiny", [x])

    def out_of_memory(served, batch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runtime, "_forward", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        runtime._run_batch("tiny", [x])
    assert versions.current("tiny") == 1  # the pool's one connection is free again


def test_without_a_counter_the_state_is_read_for_every_batch(store, versions, reads):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    runtime.served("tiny")
    runtime.served("tiny")
    assert reads.reads == 2
    serve_forget_vector(store, 0.5, ["r"])
    assert runtime.served("tiny").state_version == 2  # seen at once, as before counters existed


def test_the_periodic_verification_also_rereads_the_state(store, versions):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=0.2)
    versions.bump("tiny")
    assert runtime.served("tiny").state_version == 1
    serve_forget_vector(store, 0.5, ["r"])  # a publisher that does not bump
    time.sleep(0.25)
    assert runtime.served("tiny").state_version == 2


def test_redis_down_means_reading_the_state_said_once(store, server, versions, reads, caplog, monkeypatch):
    runtime = InferenceRuntime(store, "cpu", versions=versions, verify_interval_s=3600)
    versions.bump("tiny")
    runtime.served("tiny")
    server.connected = False
    with caplog.at_level(logging.INFO, logger="service.inference"):
        for _ in range(3):
            assert runtime.served("tiny").state_version == 1
        assert reads.reads == 4
        serve_forget_vector(store, 0.5, ["r"])
        assert runtime.served("tiny").state_version == 2  # no counter to wait for: read at once
        server.connected = True
        monkeypatch.setattr(runtime, "_versions_retry_at", 0.0)  # VERSIONS_RETRY_S have passed
        runtime.served("tiny")
    messages = [record.getMessage() for record in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("available again" in m for m in messages) == 1, messages
