"""Static checks of Dockerfile and docker-compose.yml (no Docker engine runs here)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from unlearnd.security.signing import keyring_path
from unlearnd.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNLEARND_SERVICES = ("init", "api", "worker", "worker-gpu", "janitor")
"""The services running this repository's code; they must share no volume."""
LONG_RUNNING = ("api", "worker", "worker-gpu", "janitor", "dashboard", "proxy", "postgres", "minio", "redis")


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _stages() -> dict[str, str]:
    """The Dockerfile's build stages by name (the unnamed last one is 'default')."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = {}
    for match in re.finditer(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$(.*?)(?=^FROM\s|\Z)", dockerfile, flags=re.M | re.S):
        stages[match.group(1) or "default"] = match.group(2)
    return stages


def _url(value: str):
    """A URL from the compose file, its ${VARIABLE...} interpolations replaced by a placeholder."""
    return urlsplit(re.sub(r"\$\{[^}]*\}", "x", value))


def _check_command(argv: list[str]) -> None:
    """The command names an entry point this repository really has."""
    if argv[0] == "uvicorn":
        module, attr = argv[1].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        assert "--factory" in argv
    elif argv[:2] == ["python", "-m"]:
        module = importlib.import_module(f"{argv[2]}.__main__" if argv[2] == "workers" else argv[2])
        assert callable(module.main)
    elif argv[0] == "unlearnd":
        # The `unlearnd` console script is unlearnd.cli.commands:main, which `python -m unlearnd` runs too.
        result = subprocess.run([sys.executable, "-m", "unlearnd", *argv[1:], "--help"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"unknown unlearnd command {argv}: {result.stderr}"
    else:
        raise AssertionError(f"unexpected command {argv}")


def test_unlearnd_services_point_at_real_entry_points():
    services = _compose()["services"]
    for name in UNLEARND_SERVICES:
        _check_command(services[name]["command"])
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["init"]["restart"] == services["minio-init"]["restart"] == "no"


def test_no_volume_is_shared_between_unlearnd_services():
    compose = _compose()
    services = compose["services"]
    for name in UNLEARND_SERVICES:
        for volume in services[name].get("volumes", []):
            # Only anonymous volumes ("/data"): one per container, even per replica; never named or bind mounts.
            assert isinstance(volume, str) and ":" not in volume, f"{name} mounts {volume}"
        assert services[name]["environment"]["UNLEARND_DATA_DIR"] == "/data"
    users: dict[str, list[str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source in compose.get("volumes", {}):
                users.setdefault(source, []).append(name)
    assert users == {"postgres-data": ["postgres"], "minio-data": ["minio"], "redis-data": ["redis"]}


def test_unlearnd_services_reach_postgres_minio_and_redis_by_url():
    compose = _compose()
    services = compose["services"]
    bucket_made = re.search(r"mc mb --ignore-existing store/(\S+)", services["minio-init"]["command"][0]).group(1)
    for name in UNLEARND_SERVICES:
        env = services[name]["environment"]
        database = _url(env["UNLEARND_DATABASE_URL"])
        assert (database.scheme, database.hostname, database.port, database.path) == (
            "postgresql", "postgres", 5432, f"/{services['postgres']['environment']['POSTGRES_DB']}")
        store = _url(env["UNLEARND_STORE_URL"])
        assert store.scheme == "s3" and store.netloc == bucket_made and store.path.strip("/"), name
        assert _url(env["UNLEARND_S3_ENDPOINT_URL"])[:2] == ("http", "minio:9000")
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        redis = _url(env["UNLEARND_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
        assert redis.password, "the compose Redis requires a password"
        assert env["UNLEARND_WEBHOOK_SECRET"], "every worker must sign callbacks with the same secret"
        # The signing key and its keyring reach every process as secrets, where the service looks for them.
        key_file = PurePosixPath(env["UNLEARND_SIGNING_KEY_FILE"])
        targets = {f"/run/secrets/{s['target']}" for s in services[name]["secrets"]}
        assert {str(key_file), str(keyring_path(Path(key_file)))} <= targets, name
    for name in ("api", "init"):
        assert services[name]["environment"]["UNLEARND_API_KEYS"].startswith("${UNLEARND_API_KEYS:?")
    assert {s["source"] for s in services["api"]["secrets"]} <= set(compose["secrets"])


def test_worker_gpu_builds_cuda_torch_and_reserves_one_nvidia_gpu_behind_the_gpu_profile():
    services = _compose()["services"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["UNLEARND_DEVICE"].startswith("cuda")
    assert gpu["command"] == services["worker"]["command"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", gpu["build"]["args"]["TORCH_INDEX_URL"])
    assert gpu["image"] != services["worker"]["image"], "the CUDA build must not overwrite the CPU image's tag"
    assert [name for name, service in services.items() if "profiles" in service] == ["worker-gpu"]


def test_api_runs_two_replicas_behind_one_published_port():
    compose = _compose()
    services = compose["services"]
    api = services["api"]
    assert api["deploy"]["replicas"] == 2 and "ports" not in api
    port = api["command"][api["command"].index("--port") + 1]
    assert api["expose"] == [port]
    assert services["proxy"]["ports"] == [f"{port}:{port}"]
    caddyfile = compose["configs"][services["proxy"]["configs"][0]["source"]]["content"]
    assert re.search(rf"^\s*dynamic a api {port}\b", caddyfile, flags=re.M)
    assert re.search(r"^\s*respond /metrics\S* 404$", caddyfile, flags=re.M), "/metrics stays internal"
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert "healthz" in api["healthcheck"]["test"][-1]


def test_postgres_minio_and_redis_are_durable_and_healthchecked():
    services = _compose()["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command and "--requirepass" in command
    assert redis["healthcheck"]["test"][-1] == "ping" and redis["environment"]["REDISCLI_AUTH"]
    init_needs = services["init"]["depends_on"]
    assert init_needs["postgres"]["condition"] == init_needs["redis"]["condition"] == "service_healthy"
    assert init_needs["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "worker-gpu", "janitor"):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_dashboard_reads_the_json_jobs_of_the_compose_redis():
    from rq_dashboard.cli import run

    dashboard = _compose()["services"]["dashboard"]
    assert dashboard["build"]["target"] in _stages()
    command = dashboard["command"]
    assert command[0] == "rq-dashboard" and "--json" in command  # the jobs are JSON-serialised
    known = {opt for param in run.params for opt in param.opts}
    assert {arg for arg in command[1:] if arg.startswith("-")} <= known
    redis = _url(dashboard["environment"]["RQ_DASHBOARD_REDIS_URL"])
    assert (redis.hostname, redis.port) == ("redis", 6379)
    assert dashboard["environment"]["RQ_DASHBOARD_PASSWORD"]
    assert all(port.startswith("127.0.0.1:") for port in dashboard["ports"])


def test_dockerfile_copies_existing_paths_installs_the_package_and_runs_an_entry_point():
    stages = _stages()
    image = stages["default"]
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", image, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    copied = set(re.findall(r"^COPY\s+(\w+)\s", image, flags=re.M))
    assert packages <= copied, f"packages missing from the image: {packages - copied}"
    assert re.search(r"^RUN pip install \. ", image, flags=re.M)
    cmd = re.findall(r"^CMD\s+(\[.*\])$", image, flags=re.M)[-1]
    _check_command(yaml.safe_load(cmd))
    # torch from the index of the build argument: CPU wheels unless the GPU worker's build asks for CUDA.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu\n" in dockerfile.split("\nFROM")[0]
    assert re.search(r"^ARG TORCH_INDEX_URL$", image, flags=re.M)
    assert re.search(r'^RUN pip install --index-url "\$\{TORCH_INDEX_URL\}" "torch', image, flags=re.M)


def test_workers_serve_their_metrics_inside_the_compose_network_only():
    services = _compose()["services"]
    for name in ("worker", "worker-gpu"):
        environment = services[name]["environment"]
        assert environment["PROMETHEUS_MULTIPROC_DIR"].startswith("/data/")  # the container's own volume
        settings = Settings(worker_metrics_port=environment["UNLEARND_WORKER_METRICS_PORT"],
                            worker_metrics_host=environment["UNLEARND_WORKER_METRICS_HOST"])
        assert settings.worker_metrics_port == 9100 and settings.worker_metrics_host == "0.0.0.0"
        assert "ports" not in services[name]
