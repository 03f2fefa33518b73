"""A real installation per test session: embedded redis-server, forking RQ worker, janitor, uvicorn on a free
port."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from models_store import Ledger, Store
from unlearnd.cli.processes import Child, api_child, janitor_child, redis_child, wait_for_redis, worker_child
from unlearnd.demo import DEMO_MODEL, ensure_demo_model
from unlearnd.security.signing import open_store
from unlearnd.settings import Settings

KEYS = {"admin": "it-admin", "governance": "it-gov", "inference": "it-inf"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
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

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.ledger_path)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the stack did not become ready")

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
def stack():
    # short: the Redis socket path must stay < 100 chars
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-it-"))
    settings = Settings(data_dir=data_dir, port=free_port(), worker_stale_s=10,
                        callback_allow="127.0.0.0/8", callback_timeout_s=2,  # test receivers live on loopback
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    logs = data_dir / "logs"
    logs.mkdir()
    redis = redis_child(settings)
    redis.log_path = logs / "redis.log"
    redis.start()
    children = [redis]
    try:
        wait_for_redis(settings)
        ensure_demo_model(open_store(settings))
        worker, janitor, api = worker_child(settings, 0), janitor_child(settings), api_child(settings)
        for child in (worker, janitor, api):
            child.log_path = logs / f"{child.name}.log"
            child.start()
            children.append(child)
        running = Stack(settings, f"http://127.0.0.1:{settings.port}", redis, worker, janitor, api)
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
