"""Tests for :mod:`spool.database`: durable SQLite settings, engine creation and migrations."""

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select
from sqlalchemy.exc import IntegrityError

from partners import schema
from spool import database
from spool.database import DatabaseError, _alembic_config, check_current, create_engine, head_revision, upgrade


@pytest.fixture
def blank(tmp_path):
    """An SQLite engine on a database file that has never been migrated."""
    engine = create_engine(database.sqlite_url(tmp_path / "blank.db"))
    yield engine
    engine.dispose()


def tables(engine) -> set[str]:
    """The names of the tables that exist in the database."""
    return set(inspect(engine).get_table_names())


def test_migrated_database_matches_the_metadata(engine):
    """Autogenerate finds no difference between the migrated database and partners.schema.metadata."""
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), schema.metadata)
    assert diff == []


def assert_conventional_names(engine) -> None:
    """Check every key, unique constraint, check and index in the database is named as the metadata names it."""
    inspector = inspect(engine)
    for table in schema.metadata.sorted_tables:
        expected = {
            "pk": table.primary_key.name,
            "fk": sorted(fk.name for fk in table.foreign_key_constraints),
            "uq": sorted(c.name for c in table.constraints if isinstance(c, sqlalchemy.UniqueConstraint)),
            "ck": sorted(c.name for c in table.constraints if isinstance(c, sqlalchemy.CheckConstraint)),
            "ix": sorted(i.name for i in table.indexes),
        }
        actual = {
            "pk": inspector.get_pk_constraint(table.name)["name"],
            "fk": sorted(fk["name"] for fk in inspector.get_foreign_keys(table.name)),
            "uq": sorted(c["name"] for c in inspector.get_unique_constraints(table.name)),
            "ck": sorted(c["name"] for c in inspector.get_check_constraints(table.name)),
            "ix": sorted(i["name"] for i in inspector.get_indexes(table.name) if not i.get("duplicates_constraint")),
        }
        assert actual == expected, table.name
        assert expected["pk"] == f"pk_{table.name}"


def test_migrated_constraints_carry_the_conventional_names(engine):
    """On SQLite every constraint and index has the name partners.schema's naming convention gives it."""
    assert_conventional_names(engine)


def test_migrated_constraints_carry_the_conventional_names_on_postgresql(postgres_server):
    """On PostgreSQL too, no constraint is left to the server's own naming (partners_pkey, ..._fkey)."""
    engine = create_engine(postgres_server.new_database("spool_constraint_names"))
    try:
        upgrade(engine)
        assert_conventional_names(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
    finally:
        engine.dispose()


def test_sqlite_connections_are_durable(engine):
    """Every SQLite connection runs in WAL mode with synchronous=FULL, foreign keys on and a busy timeout."""
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15000


def test_foreign_keys_are_enforced(engine):
    """An identifier for a partner that does not exist is refused by the database itself."""
    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        with engine.begin() as conn:
            conn.execute(insert(schema.identifiers).values(partner_id="nobody", kind="as2", value="NOBODY"))


def test_deleting_a_partner_row_cascades(engine):
    """Deleting a partner row directly also deletes its dependents (ON DELETE CASCADE with foreign keys on)."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(insert(schema.partners).values(id="acme", name="Acme", status="active", deliver="mailbox",
                                                    policy={}, created_at=now, updated_at=now))
        conn.execute(insert(schema.identifiers).values(partner_id="acme", kind="as2", value="ACME"))
        conn.execute(insert(schema.allowlist).values(partner_id="acme", network="192.0.2.0/24"))
    with engine.begin() as conn:
        conn.execute(schema.partners.delete().where(schema.partners.c.id == "acme"))
    with engine.connect() as conn:
        assert conn.execute(select(schema.identifiers)).all() == []
        assert conn.execute(select(schema.allowlist)).all() == []


def test_check_constraints_are_enforced(engine):
    """A status outside the allowed set is refused by the database, whatever the code above it does."""
    now = datetime.now(UTC)
    with pytest.raises(IntegrityError, match="ck_partners_status"):
        with engine.begin() as conn:
            conn.execute(insert(schema.partners).values(id="acme", name="Acme", status="paused", deliver="mailbox",
                                                        policy={}, created_at=now, updated_at=now))


def test_transactions_roll_back(engine):
    """A failed transaction leaves nothing behind (SQLAlchemy owns BEGIN, not the sqlite3 module)."""
    now = datetime.now(UTC)
    with pytest.raises(RuntimeError, match="abort"):
        with engine.begin() as conn:
            conn.execute(insert(schema.partners).values(id="acme", name="Acme", status="active", deliver="mailbox",
                                                        policy={}, created_at=now, updated_at=now))
            raise RuntimeError("abort")
    with engine.connect() as conn:
        assert conn.execute(select(schema.partners)).all() == []


def test_check_current_on_an_empty_database_says_what_to_run(blank):
    """An unmigrated database is refused with the command that fixes it."""
    expected = rf"^database schema is at nothing, this Postroom needs {head_revision()}; run `postroom db upgrade`$"
    with pytest.raises(DatabaseError, match=expected):
        check_current(blank)


def test_check_current_passes_after_upgrade(blank):
    """After upgrade() the database is at head and check_current is satisfied."""
    upgrade(blank)
    check_current(blank)
    with blank.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()


def test_check_current_on_an_unopenable_database(tmp_path):
    """A database in a directory that does not exist is refused as unopenable, not as a traceback."""
    engine = create_engine(database.sqlite_url(tmp_path / "missing" / "postroom.db"))
    with pytest.raises(DatabaseError, match=r"^cannot open the database: "):
        check_current(engine)


def test_upgrade_is_idempotent(engine):
    """Upgrading a database already at head changes nothing and keeps its data."""
    with engine.connect() as conn:
        before = conn.execute(select(schema.directory_state)).all()
    upgrade(engine)
    upgrade(engine)
    check_current(engine)
    with engine.connect() as conn:
        assert conn.execute(select(schema.directory_state)).all() == before


def test_migration_creates_the_directory_state_row(engine):
    """The migration seeds the single directory_state row at version 0 with an aware timestamp."""
    with engine.connect() as conn:
        rows = conn.execute(select(schema.directory_state)).all()
    assert [(r.id, r.version) for r in rows] == [(1, 0)]
    assert rows[0].changed_at.tzinfo is not None


def test_downgrade_to_base_then_upgrade(engine):
    """Downgrading to base drops every table; upgrading again rebuilds a schema matching the metadata."""
    with engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "base")
    assert tables(engine) - {"alembic_version"} == set()
    with pytest.raises(DatabaseError, match="schema is at nothing"):
        check_current(engine)
    upgrade(engine)
    check_current(engine)
    assert tables(engine) == set(schema.metadata.tables) | {"alembic_version"}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []


@pytest.mark.parametrize("url", ["nonsense", "", "nosuchdialect://host/db", "sqlite+nosuchdriver:///x.db",
                                 "mysql+nosuchdriver://host/db"])
def test_create_engine_refuses_unusable_urls(url):
    """A URL SQLAlchemy cannot use is a DatabaseError naming the URL."""
    with pytest.raises(DatabaseError, match=r"^cannot use database_url "):
        create_engine(url)


def test_postgresql_engine_is_created_without_connecting():
    """A postgresql+psycopg URL gives an engine (nothing is listening there) without SQLite's pragmas."""
    engine = create_engine("postgresql+psycopg://postroom:secret@127.0.0.1:1/postroom")
    try:
        assert engine.dialect.name == "postgresql"
        assert engine.dialect.driver == "psycopg"
        assert not sqlalchemy.event.contains(engine, "connect", database._configure_sqlite)
        assert "do_commit" not in vars(engine.dialect)  # no in-process writer queue: PostgreSQL locks rows
    finally:
        engine.dispose()


def test_sqlite_url_is_absolute(tmp_path, monkeypatch):
    """sqlite_url resolves a relative path so the daemon and the CLI open the same file."""
    monkeypatch.chdir(tmp_path)
    assert database.sqlite_url("postroom.db") == f"sqlite:///{tmp_path.resolve() / 'postroom.db'}"


@pytest.fixture
def impatient(blank, monkeypatch):
    """The blank SQLite engine, with a writer giving up after 0.3 s instead of 15 when another one of this
    process holds the write lock: a lock that was never handed back fails the next writer at once."""
    monkeypatch.setattr(database, "WRITER_WAIT", 0.3)
    return blank


def _write(engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")


def test_writers_of_one_process_queue_for_the_write_lock(impatient):
    """A second writer waits for the first (here: too long, and says why), then gets its turn after the commit."""
    first = impatient.connect()
    first.begin()
    first.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="another writer in this process"):
        _write(impatient)
    first.commit()
    _write(impatient)
    first.close()


def test_a_waiting_writer_is_woken_by_the_commit(blank):
    """The waiting writer proceeds once the holder commits, and its write follows the holder's."""
    first = blank.connect()
    first.begin()
    first.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    done = threading.Event()
    writer = threading.Thread(target=lambda: (_write(blank), done.set()))
    writer.start()
    assert not done.wait(0.2)  # queued behind the open transaction
    first.commit()
    writer.join(10)
    assert done.is_set()
    with blank.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
    first.close()


@pytest.mark.parametrize("ending", ["rollback", "error", "close", "invalidate"])
def test_every_end_of_a_write_hands_the_lock_on(impatient, ending):
    """Rolled back, failed, closed or invalidated mid-transaction: the next writer is not kept waiting."""
    conn = impatient.connect()
    conn.begin()
    conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    if ending == "rollback":
        conn.rollback()
    elif ending == "error":
        with pytest.raises(sqlalchemy.exc.OperationalError):
            conn.exec_driver_sql("INSERT INTO nowhere VALUES (1)")
        conn.rollback()
    elif ending == "close":
        conn.close()
    else:
        conn.invalidate()
    _write(impatient)
    conn.close()


def test_readers_never_wait_for_the_writer(impatient):
    """``reading`` connections keep WAL's snapshots: they neither take nor wait for the write lock."""
    _write(impatient)
    writer = impatient.connect()
    writer.begin()
    writer.exec_driver_sql("INSERT INTO t VALUES (2)")
    with database.reading(impatient) as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
    writer.commit()
    writer.close()
