"""A real installation per test session: embedded redis-server, forking RQ worker, janitor, uvicorn on a free port."""

from __future__ import annotations

import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from models_store import Ledger, Store
from unlearnd.demo import ensure_demo_model
from unlearnd.processes import Child, api_child, janitor_child, redis_child, wait_for_redis, worker_child
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

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {KEYS[role]}"}, timeout=60)

    @property
    def store(self) -> Store:
        return Store(self.settings.store_dir)

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


@pytest.fixture(scope="session")
def stack():
    data_dir = Path(tempfile.mkdtemp(prefix="unlearnd-it-"))  # short: the Redis socket path must stay < 100 chars
    settings = Settings(data_dir=data_dir, port=free_port(),
                        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()))
    logs = data_dir / "logs"
    logs.mkdir()
    redis = redis_child(settings)
    redis.log_path = logs / "redis.log"
    redis.start()
    children = [redis]
    try:
        wait_for_redis(settings)
        ensure_demo_model(Store(settings.store_dir))
        worker, janitor, api = worker_child(settings, 0), janitor_child(settings), api_child(settings)
        for child in (worker, janitor, api):
            child.log_path = logs / f"{child.name}.log"
            child.start()
            children.append(child)
        running = Stack(settings, f"http://127.0.0.1:{settings.port}", redis, worker, janitor, api)
        running.wait_ready()
        yield running
    finally:
        for child in reversed(children):
            child.stop()
