"""`Database` on both backends: URLs, SQLite's settings and write lock, per-model locks that die with their holder."""

import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from models_store import Database, StoreError, open_database
from tests.unit.test_migrations import HEAD
from unlearnd.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HOLD_LOCK = """
import sys, time
from models_store import Database

with Database.from_url(sys.argv[1]).model_lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_urls_pick_the_backend_and_driver(tmp_path):
    assert Database.from_url(f"sqlite:///{tmp_path / 'x.db'}").backend == "sqlite"
    postgres = Database.from_url("postgresql://u:secret@127.0.0.1/db")  # nothing connects yet
    assert postgres.backend == "postgresql" and postgres.engine.dialect.driver == "psycopg"
    assert "secret" not in postgres.url
    for url in ("sqlite://", "mysql://u@127.0.0.1/db"):
        with pytest.raises(StoreError, match="unsupported database URL"):
            Database.from_url(url)


def test_open_database_defaults_to_the_ledger_file_and_follows_the_database_url(tmp_path, postgres_url):
    default = open_database(Settings(data_dir=tmp_path))
    assert default.backend == "sqlite" and (tmp_path / "ledger.sqlite3").exists()
    assert default.current_revision() == HEAD
    configured = open_database(Settings(data_dir=tmp_path, database_url=postgres_url))
    assert configured.backend == "postgresql" and configured.current_revision() == HEAD


def test_sqlite_is_durable_waits_for_locks_and_writes_take_the_lock_at_begin(tmp_path):
    db = Database.from_url(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    db.migrate()
    with db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    inside, leave = threading.Event(), threading.Event()

    def hold_a_write_transaction():
        with db.transaction() as conn:
            conn.execute(select(1))  # reads only, yet holds the write lock from BEGIN
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold_a_write_transaction)
    holder.start()
    try:
        assert inside.wait(10)
        other = sqlite3.connect(tmp_path / "ledger.sqlite3", timeout=0.1, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        with db.connect() as conn:  # readers go on (WAL)
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM forget_requests").scalar() == 0
    finally:
        leave.set()
        holder.join()
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")


def test_model_locks_exclude_other_holders_of_the_same_model_only(database, database_url):
    other = Database.from_url(database_url)  # another process's connections, as far as the lock can tell
    with database.model_lock("m"):
        with other.try_model_lock("m") as held:
            assert not held
        with other.try_model_lock("n") as held:
            assert held
    with other.try_model_lock("m") as held:
        assert held
        with database.try_model_lock("m") as second:
            assert not second
    with pytest.raises(StoreError, match="invalid model name"), database.model_lock("../m"):
        pass
    other.dispose()


def test_a_model_lock_whose_holder_is_killed_goes_to_the_next_waiter(database, database_url):
    """SIGKILL the holder (no unlock, no clean disconnect): PostgreSQL drops its session's advisory lock when the
    connection dies, the kernel drops SQLite's file lock; the waiter gets the lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, database_url, "m"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with database.try_model_lock("m") as held:
            assert not held
        acquired = threading.Event()

        def wait_for_the_lock():
            with database.model_lock("m"):
                acquired.set()

        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        assert not acquired.wait(0.5)
        holder.send_signal(signal.SIGKILL)
        assert acquired.wait(30), "the lock of a killed holder was never released"
        waiter.join()
    finally:
        holder.kill()
        holder.wait()
