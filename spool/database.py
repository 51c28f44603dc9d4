# -*- test-case-name: tests.spool.test_database -*-
"""Open the database the way Postroom needs it, and migrate it.

SQLite is the embedded default: WAL mode so readers never block the writer, ``synchronous=FULL``
because a WAL commit under ``NORMAL`` may roll back after a power loss, foreign keys on, and a busy
timeout so the CLI and the daemon can share the file. PostgreSQL (``postgresql+psycopg://``) is the
scale-out backend and needs none of this.
"""

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


def _begin_sqlite(conn) -> None:
    # A deferred transaction that read a snapshot cannot upgrade to writing once another connection
    # has committed: SQLite answers "database is locked" at once, busy_timeout does not help. Every
    # transaction that may write therefore takes the write lock up front (waiting up to busy_timeout);
    # readers that say so (``reading``) keep WAL's concurrent, lock-free snapshots.
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


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
        event.listen(engine, "begin", _begin_sqlite)
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
