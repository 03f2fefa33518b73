"""Static checks of Dockerfile and docker-compose.yml (no Docker engine runs here)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from unlearnd.cli.commands import main as unlearnd_main

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


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
        try:
            unlearnd_main([*argv[1:], "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0, f"unknown unlearnd command {argv}"
    else:
        raise AssertionError(f"unexpected command {argv}")


def test_compose_services_point_at_real_entry_points_and_share_the_store():
    compose = _compose()
    services = compose["services"]
    assert {"redis", "init", "api", "worker", "janitor"} <= set(services)
    for name in ("init", "api", "worker", "janitor"):
        service = services[name]
        _check_command(service["command"])
        assert service["build"] == "." and "store:/data" in service["volumes"]
        assert service["environment"]["UNLEARND_DATA_DIR"] == "/data"
        assert service["environment"]["UNLEARND_REDIS_URL"].startswith("redis://redis:")
    assert set(compose["volumes"]) == {"store", "redis-data"}
    for name in ("api", "worker", "janitor", "redis"):
        assert services[name]["restart"] == "unless-stopped"


def test_compose_redis_is_durable_and_healthchecked():
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_dockerfile_copies_existing_paths_and_runs_an_entry_point():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    copied = set(re.findall(r"^COPY\s+(\w+)\s", dockerfile, flags=re.M))
    assert packages <= copied, f"packages missing from the image: {packages - copied}"
    cmd = re.search(r'^CMD\s+(\[.*\])$', dockerfile, flags=re.M).group(1)
    _check_command(yaml.safe_load(cmd))
