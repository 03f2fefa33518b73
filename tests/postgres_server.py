"""A real PostgreSQL for the tests (pgserver: PostgreSQL 16 from a wheel, no root needed) and database fixtures.

Loaded as a plugin by tests/conftest.py. `postgres_server` starts one server per test session (on a Unix socket
only, in a short /tmp directory; stopped and deleted at the end), `postgres_url` gives a test a new, empty database
on it, `database_url` an empty database on each backend (the test runs once on SQLite, once on PostgreSQL) and
`database` the same migrated to the newest schema.
"""

from __future__ import annotations

import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models_store import Database

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (a `pgserver.PostgresServer`; `get_uri(database)` names a database)."""
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (pgserver's lock file)
        warnings.simplefilter("ignore")
        import pgserver

    # Short: the server's socket lives in this directory, and a socket path may have at most 107 bytes.
    pgdata = Path(tempfile.mkdtemp(prefix="unlearnd-pg-", dir="/tmp"))
    server = pgserver.get_server(pgdata, cleanup_mode="delete")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: Any) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.get_uri(name)
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # FORCE: ends what a test left connected


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database, once on SQLite (a file in tmp_path) and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A `Database` at the newest schema, on each backend."""
    db = Database.from_url(database_url)
    db.migrate()
    yield db
    db.dispose()
