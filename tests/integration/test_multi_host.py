"""Many hosts: one API, two workers and a janitor, each with its own empty data directory and no path in common,
sharing only one PostgreSQL, one S3 server and one Redis (over TCP on loopback). Deletions succeed and show in
predictions; a worker killed with -9 mid-job leaves the model to the other, which finishes the request; every job
publishes exactly one state; each worker host serves its own metrics."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import KEYS, free_port, install_demo_model, wait_ready
from tests.s3_server import FAKE_AWS_ENV
from unlearnd.cli.processes import Child, api_child, janitor_child, redis_server_binary, worker_child
from unlearnd.demo import DEMO_MODEL
from unlearnd.security.signing import open_store, signing_key_file
from unlearnd.settings import Settings


class Hosts:
    """The processes of the deployment, each in its own data directory ("host")."""

    def __init__(self, root: Path, shared: dict[str, str]):
        self.root = root
        self.port = free_port()
        self.redis_port = free_port()
        self.shared = {**shared, "redis_url": f"redis://127.0.0.1:{self.redis_port}/0", "worker_stale_s": 8,
                       "api_keys": ",".join(f"{role}:{key}" for role, key in KEYS.items()), "port": self.port}
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.children: dict[str, Child] = {}
        self.metrics_ports = {"worker-a": free_port(), "worker-b": free_port()}

    def settings(self, host: str) -> Settings:
        """The settings of one host: its own data directory, its own copy of the signing key; a worker serves
        its metrics on a port of its own."""
        data_dir = self.root / host
        key = data_dir / "keys" / "signing_key.pem"
        if not key.exists():
            key.parent.mkdir(parents=True)
            key.write_bytes((self.root / "operator" / "signing_key.pem").read_bytes())
            key.chmod(0o600)
        return Settings(data_dir=data_dir, signing_key_file=key, worker_metrics_port=self.metrics_ports.get(host),
                        **self.shared)

    def start(self, name: str, child: Child) -> Child:
        child.log_path = self.root / f"{name}.log"
        child.start()
        self.children[name] = child
        return child

    def stop_all(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()


@pytest.fixture
def hosts(postgres_url, s3_location, demo_model_template, monkeypatch):
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    root = Path(tempfile.mkdtemp(prefix="unlearnd-mh-"))
    deployment = Hosts(root, {"database_url": postgres_url, "store_url": s3_location.store_url,
                              "s3_endpoint_url": s3_location.endpoint_url})
    # The operator generates the signing key once and hands each host a copy (docs/deploy.md).
    operator = Settings(data_dir=root / "operator", **deployment.shared)
    open_store(operator)  # creates the key, migrates the database
    (root / "operator" / "signing_key.pem").write_bytes(signing_key_file(operator).read_bytes())
    redis_dir = root / "redis-host"
    redis_dir.mkdir()
    config = redis_dir / "redis.conf"
    config.write_text(f"port {deployment.redis_port}\nbind 127.0.0.1\ndir {redis_dir}\nappendonly yes\n"
                      "appendfsync always\nsave \"\"\nmaxmemory-policy noeviction\ndaemonize no\n")
    try:
        deployment.start("redis", Child("redis", [str(redis_server_binary()), str(config)], {}))
        install_demo_model(open_store(deployment.settings("registrar")), demo_model_template)  # from another host
        deployment.start("api", api_child(deployment.settings("api")))
        deployment.start("worker-a", worker_child(deployment.settings("worker-a"), 0))
        deployment.start("worker-b", worker_child(deployment.settings("worker-b"), 0))
        deployment.start("janitor", janitor_child(deployment.settings("janitor")))
        wait_ready(deployment.base_url, timeout_s=90)
        yield deployment
    finally:
        deployment.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _client(hosts: Hosts, role: str) -> httpx.Client:
    return httpx.Client(base_url=hosts.base_url, headers={"Authorization": f"Bearer {KEYS[role]}"}, timeout=60)


def _wait(hosts: Hosts, request_id: str, statuses: tuple[str, ...], timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    with _client(hosts, "governance") as c:
        while time.monotonic() < deadline:
            record = c.get(f"/v1/forget-requests/{request_id}").json()
            if record["status"] in statuses:
                return record
            time.sleep(0.2)
    raise TimeoutError(f"{request_id} did not reach {statuses}: {record}")


def _submit(hosts: Hosts, body: dict, model: str = DEMO_MODEL) -> str:
    with _client(hosts, "governance") as c:
        response = c.post(f"/v1/models/{model}/forget-requests", json=body,
                          headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _published_once(store, model: str, request_ids: list[str], since: int) -> list[int]:
    """The states after `since`, checking that each request became covered in exactly one of them and that
    versions have no gaps (every job published one state, no job published twice)."""
    history = [s for s in store.state_history(model) if s.state_version >= since]
    versions = [s.state_version for s in history]
    assert versions == list(range(since, versions[-1] + 1))
    for rid in request_ids:
        newly = [after.state_version for before, after in itertools.pairwise(history)
                 if after.covers(rid) and not before.covers(rid)]
        assert len(newly) == 1 and not history[0].covers(rid), (rid, newly)
    return versions[1:]


def _worker_running(hosts: Hosts) -> str:
    """The name of the worker whose work-horse is computing now."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name in ("worker-a", "worker-b"):
            if psutil.Process(hosts.children[name].process.pid).children():
                return name
        time.sleep(0.05)
    raise TimeoutError("no worker started a work-horse")


def _jobs_succeeded(hosts: Hosts, worker: str) -> float:
    """Forget jobs that ended `succeeded` on this worker host, from its own metrics endpoint."""
    text = httpx.get(f"http://127.0.0.1:{hosts.metrics_ports[worker]}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("unlearnd_job_duration_seconds_count{") and 'outcome="succeeded"' in line)


def test_two_worker_hosts_share_only_the_database_the_object_store_and_redis(hosts):
    for host in ("api", "worker-a", "worker-b", "janitor"):  # nothing of the store on any host's disk
        assert not (hosts.root / host / "store").exists() and not (hosts.root / host / "ledger.sqlite3").exists()
    store = open_store(hosts.settings("observer"))
    record = store.get_model(DEMO_MODEL)
    keep = {k: v for k, v in record.items() if k not in ("version", "weights_sha256", "created_at")}
    store.create_model({**keep, "name": "digits-samples"}, store.load_weights(DEMO_MODEL, record["weights_sha256"]))
    first, first_samples = (store.read_state(m).state_version for m in (DEMO_MODEL, "digits-samples"))

    # a class deletion and a sample deletion, computed by whichever worker takes them
    train_ids = store.get_dataset(record["train_dataset"])["ids_train"]
    by_class = _submit(hosts, {"classes": [3], "method": "forget_vector"})
    by_samples = _submit(hosts, {"samples": train_ids[:20], "method": "forget_vector"}, model="digits-samples")
    for request_id in (by_class, by_samples):
        assert _wait(hosts, request_id, ("succeeded", "failed"))["status"] == "succeeded"
    state = store.read_state(DEMO_MODEL)
    assert 3 in state.forgotten_classes and state.artifacts
    with _client(hosts, "inference") as c:
        for model in (DEMO_MODEL, "digits-samples"):
            served = store.read_state(model)
            predicted = c.post(f"/v1/models/{model}/predict", json={"inputs": [[[[0.0] * 8] * 8]]}).json()
            assert predicted["state_version"] == served.state_version and predicted["applied"] == list(served.artifacts)
    # each worker host serves its own metrics: together they counted both jobs, once each
    succeeded = {worker: _jobs_succeeded(hosts, worker) for worker in ("worker-a", "worker-b")}
    assert sum(succeeded.values()) == 2, succeeded

    # kill -9 the worker computing the next request (its host "dies"): the other worker finishes it
    request_id = _submit(hosts, {"classes": [5], "method": "forget_vector"})
    _wait(hosts, request_id, ("running",))
    victim = _worker_running(hosts)
    process = hosts.children.pop(victim).process
    for proc in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        proc.send_signal(signal.SIGKILL)
    finished = _wait(hosts, request_id, ("succeeded", "failed"))
    assert finished["status"] == "succeeded", finished
    assert finished["attempts"] >= 2  # the killed attempt counted
    survivor = next(worker for worker in succeeded if worker != victim)
    assert _jobs_succeeded(hosts, survivor) == succeeded[survivor] + 1

    # exactly one state per job, and the API serves the newest
    assert len(_published_once(store, DEMO_MODEL, [by_class, request_id], since=first)) == 2
    assert len(_published_once(store, "digits-samples", [by_samples], since=first_samples)) == 1
    with _client(hosts, "inference") as c:
        predicted = c.post(f"/v1/models/{DEMO_MODEL}/predict", json={"inputs": [[[[0.0] * 8] * 8]]}).json()
    assert predicted["state_version"] == store.read_state(DEMO_MODEL).state_version
