"""The database: SQLite (embedded default, a file in the data directory) or PostgreSQL, through one code path.

SQLAlchemy Core (no ORM) over the standard sqlite3 module or psycopg 3; the schema is `models_store.schema`,
versioned by the Alembic migrations in `models_store/migrations`, which every process runs at open
(`open_database`). Write transactions are serialised where it matters: on SQLite they take the write lock at
BEGIN (BEGIN IMMEDIATE); on PostgreSQL (READ COMMITTED) the ledger's statements are conditional updates, inserts
that a key decides, or reads FOR UPDATE. Commits are durable before they return (SQLite: WAL with
synchronous=FULL; PostgreSQL: its default synchronous commit).

Per-model job locks live here too, so that they work across hosts: a PostgreSQL session advisory lock on a
connection of its own (the server drops it when that connection dies), or on SQLite a file lock next to the
database file (the kernel drops it when the process dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, Engine, Text, create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from models_store.errors import StoreError

MIGRATIONS = Path(__file__).parent / "migrations"
FIRST_REVISION = "0001"
"""The schema the ledger had before migrations existed: an unversioned database with its tables is stamped so."""
SQLITE_BUSY_TIMEOUT_MS = 30_000
_IMMEDIATE = "unlearnd_begin_immediate"
"""Execution option of write transactions: on SQLite they BEGIN IMMEDIATE (take the write lock at once)."""


def _advisory_key(*parts: str) -> int:
    """A PostgreSQL advisory lock key (signed 64-bit) for a name."""
    return int.from_bytes(hashlib.sha256(":".join(("unlearnd", *parts)).encode()).digest()[:8], "big", signed=True)


MIGRATION_LOCK_KEY = _advisory_key("migrate")


def _check_lock_name(name: str) -> str:
    """Model names become lock file names (the same rule as `Store`'s names)."""
    from models_store.store import check_name  # store imports torch helpers lazily; keep this module light

    return check_name(name, "model name")


class Database:
    """One database: an SQLAlchemy Engine (connection pool) plus the per-model locks.

    `connect()` for reads, `transaction()` for writes; `migrate()` brings the schema to the newest revision.
    Safe to share between threads; a forked child gets connections of its own.
    """

    def __init__(self, engine: Engine, *, lock_dir: Path | None = None, dead_peer_s: float = 30.0):
        self.engine = engine
        self._writer = engine.execution_options(**{_IMMEDIATE: True})
        self._pid = os.getpid()
        self._lock_dir = lock_dir
        self._lock_engine: Engine | None = None
        self._dead_peer_s = dead_peer_s
        if self.backend == "sqlite":
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_begin)

    @classmethod
    def from_url(cls, url: str, *, dead_peer_s: float = 30.0) -> Database:
        """A database at an SQLAlchemy URL: `sqlite:///<path>` or `postgresql://user:pass@host/db` (psycopg 3).

        `dead_peer_s`: how long the PostgreSQL server may take to notice that a lock holder's host vanished
        (TCP keepalives on the lock connections). Does not migrate: `open_database` and `migrate()` do."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
            return cls(create_engine(parsed, pool_pre_ping=True), dead_peer_s=dead_peer_s)
        if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
            raise StoreError(f"unsupported database URL {parsed!r}: use sqlite:///<file> or postgresql://...")
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(create_engine(parsed), lock_dir=path.parent / f"{path.name}.locks", dead_peer_s=dead_peer_s)

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    @property
    def url(self) -> str:
        """The URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def _this_process(self) -> None:
        """Pooled connections never cross a fork: the child drops the parent's (without closing them)."""
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (a transaction begins on first use and is rolled back at the end)."""
        self._this_process()
        with self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed (durably) when the block ends, rolled back if it raises.

        On SQLite it holds the database's write lock from its start, so read-then-write is race-free. On
        PostgreSQL it is READ COMMITTED: make a read-then-write race-free with a conditional UPDATE, an INSERT
        that a key decides (IntegrityError: someone else's row won) or a read `.with_for_update()`."""
        self._this_process()
        with self._writer.begin() as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection (the Database stays usable and reconnects on demand)."""
        self.engine.dispose()
        if self._lock_engine is not None:
            self._lock_engine.dispose()

    # ---- schema migrations ----------------------------------------------------------------------------
    def migrate(self, to: str = "head") -> None:
        """Bring the schema to the newest revision (Alembic `upgrade head`), or only up to revision `to`; a no-op
        when it is there already.

        Safe when several processes open the database at once: the upgrade runs in one transaction that holds
        the write lock (SQLite) or a transaction-scoped advisory lock (PostgreSQL), so the second process
        waits and then finds the schema current. A database the ledger created before migrations existed
        (its tables, no `alembic_version`) is stamped at revision 0001 first, then upgraded."""
        self._this_process()
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._writer.begin() as conn:
            if self.backend == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            config.attributes["connection"] = conn
            tables = set(inspect(conn).get_table_names())
            if "forget_requests" in tables and "alembic_version" not in tables:
                _adopt_unversioned(conn)
                command.stamp(config, FIRST_REVISION)
            if _quietly_current_revision(conn) == _head(config):
                return  # the usual case: nothing to do, and nothing to log at every process start and job
            command.upgrade(config, to)

    def current_revision(self) -> str | None:
        """The schema revision the database is at (None: not versioned)."""
        with self.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    # ---- per-model job locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def model_lock(self, name: str) -> Iterator[None]:
        """An exclusive lock per model across processes and hosts, waited for; released when the block ends or
        the holder dies (its process, or its host: within about `dead_peer_s` on PostgreSQL)."""
        with self._model_lock(name, wait=True):
            yield

    @contextlib.contextmanager
    def try_model_lock(self, name: str) -> Iterator[bool]:
        """`model_lock` without waiting: yields False (holding nothing) when another holder has it."""
        with self._model_lock(name, wait=False) as held:
            yield held

    def _model_lock(self, name: str, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
        _check_lock_name(name)
        if self.backend == "postgresql":
            return self._advisory_lock(name, wait=wait)
        return self._file_lock(name, wait=wait)

    @contextlib.contextmanager
    def _file_lock(self, name: str, *, wait: bool) -> Iterator[bool]:
        assert self._lock_dir is not None
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self._lock_dir / f"{name}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _advisory_lock(self, name: str, *, wait: bool) -> Iterator[bool]:
        key = _advisory_key("model", name)
        with self._locks_engine().connect() as conn:
            if wait:
                conn.execute(select(func.pg_advisory_lock(key)))
            elif not conn.scalar(select(func.pg_try_advisory_lock(key))):
                yield False
                return
            try:
                yield True
            finally:
                with contextlib.suppress(DBAPIError):  # a lost connection: the server released the lock already
                    conn.execute(select(func.pg_advisory_unlock(key)))

    def _locks_engine(self) -> Engine:
        """Connections that hold advisory locks: one each, never pooled, autocommit (a lock is held for a whole
        job, not in an open transaction), with TCP keepalives both ways so that the server drops the lock of
        a host that vanished and a holder notices a server that did."""
        if self._lock_engine is None:
            idle = max(1, int(self._dead_peer_s / 3))
            interval = max(1, int(self._dead_peer_s / 6))
            server_keepalives = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
                                 "-c tcp_keepalives_count=3")
            self._lock_engine = create_engine(
                self.engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval,
                              "keepalives_count": 3, "options": server_keepalives},
            )
        return self._lock_engine


def _quietly_current_revision(conn: Connection) -> str | None:
    """The revision, without Alembic's two INFO lines per look (every process and job opens the database)."""
    migration_log = logging.getLogger("alembic.runtime.migration")
    level = migration_log.level
    migration_log.setLevel(logging.WARNING)
    try:
        return MigrationContext.configure(conn).get_current_revision()
    finally:
        migration_log.setLevel(level)


def _head(config: Config) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config).get_current_head()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Every SQLite connection: wait for locks, WAL, fsync at every commit, and BEGIN emitted by SQLAlchemy."""
    dbapi_connection.isolation_level = None  # the sqlite3 module emits no BEGIN of its own (SQLAlchemy's recipe)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _set_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _set_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode=WAL`. The mode is kept in the file, so only a new database changes it, under an exclusive
    lock for which SQLite may answer "database is locked" at once, without waiting for busy_timeout, when other
    processes open the new database at the same moment (every process of `unlearnd run` on its first start): retried
    until the busy timeout."""
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    """BEGIN IMMEDIATE for write transactions (the write lock at once), a deferred BEGIN for reads."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_IMMEDIATE) else "BEGIN")


def _adopt_unversioned(conn: Connection) -> None:
    """Bring a ledger made by the code before migrations to exactly revision 0001 (the oldest of those ledgers
    lack `idempotency.request_id`)."""
    columns = {c["name"] for c in inspect(conn).get_columns("idempotency")}
    if "request_id" not in columns:
        Operations(MigrationContext.configure(conn)).add_column("idempotency", Column("request_id", Text))


class DatabaseSettings(Protocol):
    """What `open_database` reads of `unlearnd.settings.Settings`."""

    database_url: str | None
    worker_stale_s: float

    @property
    def ledger_path(self) -> Path: ...


def database_url(settings: DatabaseSettings) -> str:
    """`UNLEARND_DATABASE_URL`, else SQLite at <data_dir>/ledger.sqlite3 (the file the ledger always used)."""
    return settings.database_url or f"sqlite:///{settings.ledger_path}"


def open_database(settings: DatabaseSettings) -> Database:
    """The database every process uses, migrated to the newest schema."""
    database = Database.from_url(database_url(settings), dead_peer_s=settings.worker_stale_s)
    database.migrate()
    return database
