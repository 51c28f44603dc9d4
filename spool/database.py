# -*- test-case-name: tests.spool.test_database -*-
"""Open the database the way Postroom needs it, and migrate it.

SQLite is the embedded default: WAL mode so readers never block the writer, ``synchronous=FULL``
because a WAL commit under ``NORMAL`` may roll back after a power loss, foreign keys on, and a busy
timeout so the CLI and the daemon can share the file. PostgreSQL (``postgresql+psycopg://``) is the
scale-out backend and needs none of this.
"""

import sqlite3
import threading
from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine

from spool.schema import metadata

#: Every table of every package (importing spool.schema registers the spool's own on it).
METADATA = metadata

MIGRATIONS = Path(__file__).with_name("migrations")


class DatabaseError(RuntimeError):
    """The database cannot be opened or is not at the schema this code expects."""


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def _configure_sqlite(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below own transactions
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.close()


#: Execution option for connections that only read (``reading(engine)``): a plain deferred ``BEGIN``.
READ_ONLY = "postroom_read_only"


#: Seconds a writer waits for another writer of the same process, as ``busy_timeout`` does across processes.
WRITER_WAIT = 15.0


def _raw(connection):
    """The DBAPI connection behind a pool proxy (SQLAlchemy hands either to the dialect)."""
    return getattr(connection, "dbapi_connection", connection)


class _OneWriter:
    """One writing transaction at a time per engine; a waiting writer is woken as soon as it may go.

    SQLite has one write lock per file, and a writer that finds it taken sleeps and polls (1, 2, 5, 10 …
    up to 100 ms at a time) instead of being woken when it is free. Under load that sleeping, not the
    work, was most of a commit's time (the intake's commit writer against the delivery worker). Inside
    one process the writers therefore queue on this lock, which wakes the next one as soon as the
    previous one commits or rolls back; ``busy_timeout`` still covers other processes (the CLI).
    """

    def __init__(self, engine: Engine):
        self._lock = threading.Lock()
        self._holder = None
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(connection) -> None:
            try:
                commit(connection)
            finally:
                self.release(connection)

        def do_rollback(connection) -> None:  # also how the pool resets a connection given back mid-transaction
            try:
                rollback(connection)
            finally:
                self.release(connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback
        event.listen(engine, "begin", self.begin)
        # a connection dropped as broken may be closed without a rollback
        event.listen(engine, "invalidate", lambda connection, _record, _error: self.release(connection))

    def begin(self, conn) -> None:
        # A deferred transaction that read a snapshot cannot upgrade to writing once another connection
        # has committed: SQLite answers "database is locked" at once, busy_timeout does not help. Every
        # transaction that may write therefore takes the write lock up front (waiting up to busy_timeout);
        # readers that say so (``reading``) keep WAL's concurrent, lock-free snapshots.
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        if not self._lock.acquire(timeout=WRITER_WAIT):
            raise sqlalchemy.exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
                f"database is locked: another writer in this process held it for {WRITER_WAIT:.0f} s"))
        self._holder = _raw(conn.connection)
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.release(conn.connection)
            raise

    def release(self, connection) -> None:
        """Let the next writer in, if ``connection`` is the one writing."""
        if self._holder is not None and self._holder is _raw(connection):
            self._holder = None
            self._lock.release()


def reading(engine: Engine):
    """A connection for read-only work: on SQLite it never waits for, or blocks, a writer."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with Postroom's durability settings applied to every connection."""
    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, ImportError) as e:
        raise DatabaseError(f"cannot use database_url {url!r}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
        _OneWriter(engine)
    return engine


def _alembic_config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it already is)."""
    with engine.begin() as connection:
        command.upgrade(_alembic_config(connection), "head")


def head_revision() -> str:
    """The newest migration this code ships."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def check_current(engine: Engine) -> None:
    """:raises DatabaseError: unless the schema is at :func:`head_revision` (run ``postroom init`` or migrate)."""
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except sqlalchemy.exc.OperationalError as e:
        raise DatabaseError(f"cannot open the database: {e.orig}") from None
    if current != head_revision():
        raise DatabaseError(
            f"database schema is at {current or 'nothing'}, this Postroom needs {head_revision()}; "
            "run `postroom db upgrade`"
        )
