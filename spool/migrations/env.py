"""Alembic environment: always run on the connection :mod:`spool.database` hands in."""

from alembic import context

from spool.database import METADATA

target_metadata = METADATA

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
context.run_migrations()
