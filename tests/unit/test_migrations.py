"""Schema migrations on both backends: from the first revision and from a ledger written before migrations existed
to the newest, keeping every row; idempotent; safe when several processes open the database at once."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

from models_store import Database, Ledger, open_database
from models_store.ledger import IdempotencyClaim, NewRequest
from models_store.schema import metadata, served_states
from unlearnd.settings import Settings

HEAD = "0005"
REPO = Path(__file__).resolve().parents[2]

LEDGER_BEFORE_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS forget_requests (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    model        TEXT NOT NULL,
    classes      TEXT,
    samples      TEXT,
    method       TEXT NOT NULL,
    reason       TEXT,
    status       TEXT NOT NULL,
    progress     TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    error        TEXT,
    result       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    key_id       TEXT,
    job_id       TEXT,
    not_before   REAL,
    callback_url TEXT,
    callback     TEXT,
    receipt      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS forget_requests_model_status ON forget_requests (model, status);

CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    status_code  INTEGER,
    response     TEXT,
    headers      TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (key_id, key)
);

CREATE TABLE IF NOT EXISTS audit (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    action       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    request_id   TEXT,
    model        TEXT,
    detail       TEXT
);
CREATE INDEX IF NOT EXISTS audit_request ON audit (request_id);
"""
"""The schema the sqlite3 ledger created before migrations existed (its oldest form: no idempotency.request_id)."""

MIGRATE_TOGETHER = """
import sys, time
from pathlib import Path
from models_store import Database

database = Database.from_url(sys.argv[1])
barrier, me, n = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(barrier / me).touch()
while len(list(barrier.iterdir())) < n:  # start together
    time.sleep(0.01)
database.migrate()
print(database.current_revision())
"""


def _ledger_rows(ledger: Ledger):
    return [(r["id"], r["status"], r["classes"], r["attempts"]) for r in ledger.list()]


def test_the_migrations_build_exactly_the_declared_schema(database):
    with database.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_upgrading_from_the_first_revision_keeps_every_row(database_url):
    database = Database.from_url(database_url)
    database.migrate(to="0001")
    assert database.current_revision() == "0001"
    with database.transaction() as conn:  # rows as the ledger of revision 0001 wrote them: its columns only
        conn.execute(text(
            "INSERT INTO forget_requests (id, model, classes, samples, method, status, progress, created_at, attempts)"
            " VALUES (:id, 'm', :classes, :samples, 'auto', :status, :progress, 'then', :attempts)"), [
            {"id": "r1", "classes": "[1]", "samples": None, "status": "running", "progress": "{}", "attempts": 1},
            {"id": "r2", "classes": None, "samples": '["a", "b"]', "status": "queued", "progress": "{}", "attempts": 0},
            {"id": "r3", "classes": "[2]", "samples": None, "status": "queued", "progress": "{}", "attempts": 0}])
        conn.execute(text("INSERT INTO audit (at, action, actor, request_id, model) "
                          "VALUES ('then', 'request.accepted', 'kid', :id, 'm')"), [{"id": f"r{i}"} for i in (1, 2, 3)])
        conn.execute(text("INSERT INTO idempotency (key, key_id, body_sha256, status_code, response, headers, "
                          "created_at, request_id) VALUES ('k', 'kid', 'body', 202, 'r3', '{}', 'then', 'r3')"))
        conn.execute(text("INSERT INTO idempotency (key, key_id, body_sha256, created_at) VALUES (:key, :kid, 'b', "
                          "'then')"), [{"key": key, "kid": kid} for key, kid in (
                              ('"q1"', "kid"), ('"a\\"b";p=1', "kid"), ('"k"', "kid"), ('"k"', "other"),
                              ('"bad', "kid"))])

    database.migrate()
    assert database.current_revision() == HEAD
    ledger = Ledger(database)  # today's code reads every old row, the new column empty
    assert [(r["id"], r["status"], r["classes"], r["samples"], r["attempts"], r["accepted_by"])
            for r in ledger.list()] == [("r1", "running", [1], None, 1, None),
                                        ("r2", "queued", None, ["a", "b"], 0, None),
                                        ("r3", "queued", [2], None, 0, None)]
    assert [(e["action"], e["request_id"]) for e in ledger.audit_entries()] == [
        ("request.accepted", "r1"), ("request.accepted", "r2"), ("request.accepted", "r3")]
    kept = ledger.idempotency_row(IdempotencyClaim("kid", "k", "body"))
    assert (kept["status_code"], kept["response"], kept["request_id"]) == (202, "r3", "r3")
    with database.connect() as conn:  # quoted keys are stored as their content, unless that is stored already
        assert sorted(conn.execute(text("SELECT key_id, key FROM idempotency")).all()) == [
            ("kid", '"bad'), ("kid", '"k"'), ("kid", 'a"b'), ("kid", "k"), ("kid", "q1"), ("other", "k")]
    row = {"model": "m", "state_version": 2, "document": '{"b":1,"a":2}', "created_at": "now"}
    with database.transaction() as conn:  # the new tables are there
        conn.execute(insert(served_states).values(row))
    with pytest.raises(IntegrityError), database.transaction() as conn:  # a second publisher of version 2 loses
        conn.execute(insert(served_states).values({**row, "document": "{}"}))
    with database.connect() as conn:
        assert conn.scalar(select(served_states.c.document)) == '{"b":1,"a":2}'  # stored as written
    database.dispose()


@pytest.mark.parametrize("with_request_id", [False, True], ids=["oldest", "with-request-id"])
def test_a_sqlite_ledger_written_before_migrations_is_stamped_and_upgraded(tmp_path, with_request_id):
    settings = Settings(data_dir=tmp_path)
    settings.ledger_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(settings.ledger_path) as db:
        db.executescript(LEDGER_BEFORE_MIGRATIONS)
        if with_request_id:
            db.execute("ALTER TABLE idempotency ADD COLUMN request_id TEXT")
        db.execute("INSERT INTO forget_requests (id, model, classes, method, status, progress, created_at) "
                   "VALUES ('old', 'm', '[7]', 'auto', 'succeeded', '{\"fraction\": 1.0}', '2024-01-01T00:00:00')")
        db.execute("INSERT INTO audit (at, action, actor, request_id, model, detail) "
                   "VALUES ('2024-01-01T00:00:00', 'request.accepted', 'kid', 'old', 'm', '{}')")
        db.execute("INSERT INTO idempotency (key, key_id, body_sha256, created_at) "
                   "VALUES ('k', 'kid', 'body', '2024-01-01T00:00:00')")

    database = open_database(settings)
    assert database.current_revision() == HEAD
    ledger = Ledger(database)
    assert _ledger_rows(ledger) == [("old", "succeeded", [7], 0)]
    assert [e["action"] for e in ledger.audit_entries(request_id="old")] == ["request.accepted"]
    claim = IdempotencyClaim("kid", "k", "body")  # its old claim, bound to no request since 2024: taken over
    [accepted] = ledger.accept([NewRequest({"id": "new", "model": "m", "classes": [1], "method": "auto"}, claim=claim)])
    assert accepted["id"] == "new" and ledger.list()[-1]["seq"] > ledger.get("old")["seq"]
    assert ledger.idempotency_row(claim)["request_id"] == "new"
    with database.connect() as conn:
        assert {"models", "served_states", "reports"} <= set(inspect(conn).get_table_names())


def test_an_unversioned_postgresql_ledger_is_stamped_and_upgraded(postgres_url):
    database = Database.from_url(postgres_url)
    database.migrate(to="0001")
    with database.transaction() as conn:  # a row as the ledger of revision 0001 wrote it, then no version
        conn.execute(text("INSERT INTO forget_requests (id, model, classes, method, status, progress, created_at) "
                          "VALUES ('r1', 'm', '[1]', 'auto', 'queued', '{}', 'then')"))
        conn.execute(text("DROP TABLE alembic_version"))
    assert database.current_revision() is None
    database.migrate()
    assert database.current_revision() == HEAD and [r["id"] for r in Ledger(database).list()] == ["r1"]
    database.dispose()


def test_migrating_again_changes_nothing(database):
    Ledger(database).create({"id": "r1", "model": "m", "classes": [1], "method": "auto"})
    database.migrate()
    database.migrate()
    assert database.current_revision() == HEAD and Ledger(database).count() == 1
    with database.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(text("alembic_version"))) == 1


def test_processes_migrating_at_once_all_end_at_the_newest_schema(database_url, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    n = 3
    processes = [subprocess.Popen([sys.executable, "-c", MIGRATE_TOGETHER, database_url, str(barrier), str(i), str(n)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(n)]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0] * n, [err for _, err in results]
    assert [out.strip() for out, _ in results] == [HEAD] * n
    database = Database.from_url(database_url)
    assert database.current_revision() == HEAD
    with database.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(text("alembic_version"))) == 1
    database.dispose()


def test_switching_a_new_sqlite_database_to_wal_waits_out_a_lock_it_is_refused_at_once():
    """Processes opening a new database at once: SQLite can refuse the switch to WAL with "database is locked"
    without waiting for busy_timeout: 2 of 25 trials of three processes migrating a new database had one fail so
    here (test_processes_migrating_at_once_all_end_at_the_newest_schema, now and then); none of 75 since."""
    import sqlite3

    from models_store.database import _set_wal

    class Cursor:
        def __init__(self, errors):
            self.errors, self.executed = list(errors), 0

        def execute(self, sql):
            self.executed += 1
            if self.errors:
                raise self.errors.pop(0)

    locked = Cursor([sqlite3.OperationalError("database is locked")] * 2)
    _set_wal(locked)
    assert locked.executed == 3
    broken = Cursor([sqlite3.OperationalError("disk I/O error")])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _set_wal(broken)
    assert broken.executed == 1
