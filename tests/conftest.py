import pathlib
import socket

import pytest

pytest_plugins = [
    "tests.s3_server",  # s3_server, s3_location, fake_aws_env: a real S3 server on loopback
    "tests.postgres_server",  # postgres_server, postgres_url, database_url, database: SQLite and PostgreSQL
]


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration are marked `integration` (real Redis, forking workers, HTTP)."""
    for item in items:
        if "integration" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _no_dns(monkeypatch):
    """Tests send traffic only to loopback: in the test process no host name but `localhost` is ever looked up
    (a callback URL with a name is then 'unresolvable', which intake accepts and delivery refuses). Numeric
    addresses are parsed without a lookup (AI_NUMERICHOST)."""
    real = socket.getaddrinfo

    def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
        if host in (None, "localhost"):
            return real(host, port, family, type, proto, flags)
        return real(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
