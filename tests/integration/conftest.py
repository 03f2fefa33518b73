"""A real installation per test session and backend: embedded redis-server, forking RQ worker, janitor, uvicorn on
a free port; once with the embedded default (SQLite, the local store directory) and once with PostgreSQL and an S3
server (pgserver, moto's S3 server, both on loopback), so that every integration test runs on both."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from models_store import Ledger, Store, open_ledger
from unlearnd.cli.processes import Child, api_child, janitor_child, redis_child, wait_for_redis, worker_child
from unlearnd.demo import DEMO_DATASET, DEMO_MODEL, ensure_demo_model
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings

KEYS = {"admin": "it-admin", "governance": "it-gov", "inference": "it-inf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BACKENDS = ["embedded", "postgresql+s3"]


def wait_ready(base_url: str, timeout_s: float = 60) -> None:
    """Until the API at `base_url` answers /readyz with 200 (TimeoutError after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the API at {base_url} did not become ready")


@dataclass
class Stack:
    backend: str
    """'embedded' (SQLite + local store directory) or 'postgresql+s3'."""
    settings: Settings
    base_url: str
    redis: Child
    worker: Child
    janitor: Child
    api: Child
    paused: set[str] = field(default_factory=set)
    """Names of children the supervisor must leave stopped."""

    @property
    def children(self) -> list[Child]:
        return [self.redis, self.worker, self.janitor, self.api]

    def supervise(self, stop: threading.Event) -> None:
        """What `unlearnd run` does: restart any child that died (unless a test paused it)."""
        while not stop.wait(0.3):
            for child in self.children:
                if child.name not in self.paused and not child.alive():
                    child.start()

    def clone_demo_model(self, name: str) -> str:
        """Register the demo model's weights again under `name`, so a test has a served state of its own."""
        store = self.store
        record = store.get_model(DEMO_MODEL)
        weights = store.load_weights(DEMO_MODEL, record["weights_sha256"])
        keep = {k: v for k, v in record.items() if k not in ("version", "weights_sha256", "created_at")}
        store.create_model({**keep, "name": name}, weights)
        return name

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {KEYS[role]}"},
                            timeout=60)

    @property
    def store(self) -> Store:
        return open_store(self.settings)  # signed with the stack's key, as the stack's own processes

    def state(self, model: str) -> dict:
        """The model's served state as its stored document (what GET /v1/models/{model}/state shows)."""
        return self.store.read_state(model).as_stored()

    @property
    def ledger(self) -> Ledger:
        return open_ledger(self.settings)

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_ready(self.base_url, timeout_s)

    def wait_terminal(self, request_id: str, timeout_s: float = 150) -> dict:
        deadline = time.monotonic() + timeout_s
        with self.client("governance") as c:
            while time.monotonic() < deadline:
                record = c.get(f"/v1/forget-requests/{request_id}").json()
                if record["status"] in ("succeeded", "failed", "cancelled"):
                    return record
                time.sleep(0.2)
        raise TimeoutError(f"request {request_id} did not finish: {record}")

    def wait_for(self, request_id: str, predicate, timeout_s: float = 60) -> dict:
        """Poll the ledger until predicate(record) holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = self.ledger.get(request_id)
            if predicate(record):
                return record
            time.sleep(0.05)
        raise TimeoutError(f"request {request_id} never reached the expected state: {record}")


@pytest.fixture(scope="session")
def demo_model_template():
    """A store holding the demo model and its dataset, trained once per test session (`ensure_demo_model`, as
    `unlearnd run` does): `install_demo_model` copies them into each installation instead of training again."""
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-demo-"))
    store = open_store(Settings(data_dir=data_dir))
    ensure_demo_model(store)
    yield store
    shutil.rmtree(data_dir, ignore_errors=True)


def install_demo_model(store: Store, template: Store) -> None:
    """Register the template's demo dataset and model (its trained weights) in `store`, through the same Store
    calls as `ensure_demo_model`, signed with `store`'s key."""
    dataset, tensors = template.load_dataset(DEMO_DATASET)
    store.put_dataset(dataset, tensors)
    record = template.get_model(DEMO_MODEL)
    weights = template.load_weights(DEMO_MODEL, record["weights_sha256"])
    store.create_model({k: v for k, v in record.items() if k not in ("version", "weights_sha256", "created_at")},
                       weights)


def shared_services(request: pytest.FixtureRequest, backend: str) -> dict[str, str]:
    """The settings that put the records in a new PostgreSQL database and the blobs under a new prefix of the S3
    test server (empty for the embedded default)."""
    if backend == "embedded":
        return {}
    import psycopg

    postgres, s3 = request.getfixturevalue("postgres_server"), request.getfixturevalue("s3_server")
    name = f"it_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return {"database_url": postgres.get_uri(name), "store_url": f"s3://{s3.bucket}/it-{name}",
            "s3_endpoint_url": s3.endpoint_url}


@pytest.fixture(scope="session", params=BACKENDS)
def stack(request):
    from tests.s3_server import FAKE_AWS_ENV

    backend = request.param
    with pytest.MonkeyPatch.context() as monkeypatch:
        if backend != "embedded":
            for name, value in FAKE_AWS_ENV.items():  # the children inherit them (and nothing real)
                monkeypatch.setenv(name, value)
        yield from _stack(backend, shared_services(request, backend), request.getfixturevalue("demo_model_template"))


@pytest.fixture
def embedded_stack(stack):
    """The stack, for a test of what does not depend on the backend (the HTTP API, its clients, logs, callback
    delivery): it runs once, on the embedded stack, and is skipped on the other."""
    if stack.backend != "embedded":
        pytest.skip("does not depend on the backend: tested once, on the embedded stack")
    return stack


def _stack(backend: str, shared: dict[str, str], demo_model: Store):
    # short: the Redis socket path must stay < 100 chars
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-it-"))
    settings = Settings(data_dir=data_dir, port=free_port(), worker_stale_s=10,
                        callback_allow="127.0.0.0/8", callback_timeout_s=2,  # test receivers live on loopback
                        callback_attempts=3, callback_retry_delays_s="0.2",  # short retries: tests stay fast
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()), **shared)
    logs = data_dir / "logs"
    logs.mkdir()
    redis = redis_child(settings)
    redis.log_path = logs / "redis.log"
    redis.start()
    children = [redis]
    try:
        wait_for_redis(settings)
        install_demo_model(open_store(settings), demo_model)
        worker, janitor, api = worker_child(settings, 0), janitor_child(settings), api_child(settings)
        for child in (worker, janitor, api):
            child.log_path = logs / f"{child.name}.log"
            child.start()
            children.append(child)
        running = Stack(backend, settings, f"http://127.0.0.1:{settings.port}", redis, worker, janitor, api)
        running.wait_ready()
        stop = threading.Event()
        supervisor = threading.Thread(target=running.supervise, args=(stop,), daemon=True)
        supervisor.start()
        try:
            yield running
        finally:
            stop.set()
            supervisor.join()
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
