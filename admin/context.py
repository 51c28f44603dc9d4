# -*- test-case-name: tests.admin.test_cli -*-
"""What every ``postroom`` subcommand shares: the home's context, typed-error mapping, output options."""

import getpass
import os
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Iterator

import click
import sqlalchemy.exc
from sqlalchemy.engine import Connection

from admin.initialise import HomeError
from certs import x509 as certs_x509
from certs.errors import CertificateError
from certs.ssh import parse_public_key
from gateway.config import Config, ConfigError, load
from gateway.home import Home
from partners.errors import PartnerError
from spool import audit
from spool.blobs import BlobStore, SpoolError
from spool.database import DatabaseError, check_current, create_engine, reading
from spool.records import RecordError

#: Who the audit trail names for changes made here.
ACTOR = f"cli:{getpass.getuser()}"

USER_ERRORS = (CertificateError, PartnerError, ConfigError, DatabaseError, HomeError, RecordError, SpoolError)


class Context:
    """What every subcommand needs: the home, and (lazily) its config and database."""

    def __init__(self, home: Home):
        self.home = home
        self._config: Config | None = None
        self._engine = None

    @property
    def config(self) -> Config:
        """The home's configuration."""
        if self._config is None:
            self._config = load(self.home)
        return self._config

    @property
    def engine(self):
        """The database, checked to be at the schema this code expects."""
        if self._engine is None:
            self._engine = create_engine(self.config.database_url)
            check_current(self._engine)
        return self._engine

    def transaction(self):
        """One transaction: the whole change or nothing."""
        return self.engine.begin()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only transaction: on SQLite it neither waits for nor blocks the daemon's writes."""
        with reading(self.engine) as conn, conn.begin():
            yield conn

    @property
    def blobs(self) -> BlobStore:
        """The spool's blob store (``[storage] spool_dir``, relative to the home)."""
        return BlobStore(self.config.home.resolve(self.config.storage.spool_dir))

    @contextmanager
    def change(self, event: str, partner_id: str | None, *, message_id: str | None = None,
               **details: Any) -> Iterator[tuple[Connection, dict]]:
        """One transaction that records ``event`` in the audit trail as it commits.

        Yields the connection and the event's details, which the body may add facts to. When only the
        change itself finds out whose it is (removing a rule by ID, retrying a message), pass ``None``
        and set ``facts["partner"]`` in the body: looking it up first in another transaction could
        name a different row than the one changed. ``message_id`` files the event under a message.
        """
        facts = {"partner": partner_id, **details}
        with self.transaction() as conn:
            yield conn, facts
            audit.append(conn, ACTOR, event, now(), message_id=message_id, details=facts)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def now() -> datetime:
    """The time changes are stamped with."""
    return datetime.now(UTC)


def read_certificate(path: str) -> certs_x509.Certificate:
    """The certificate in a PEM or DER file (the leaf of a bundle)."""
    return certs_x509.load_certificate(certs_x509.read_file(path), path)


def read_ssh_key(value: str):
    """An SSH public key given as a ``.pub`` file or as the key line itself (``TYPE BASE64 [COMMENT]``)."""
    if value.startswith(("ssh-", "ecdsa-")) and len(value.split()) >= 2 and not os.path.isfile(value):
        return parse_public_key(value, "the key given")
    return parse_public_key(certs_x509.read_file(value).decode("utf-8", "replace"), value)


class UserError(click.ClickException):
    """A refusal the admin can fix: one line on stderr, exit status 1."""

    def format_message(self) -> str:
        return self.message

    def show(self, file=None) -> None:
        click.echo(f"postroom: error: {self.format_message()}", err=True)


class PostroomGroup(click.Group):
    """Turns every typed refusal from the libraries into a :class:`UserError`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            raise UserError(str(e)) from e
        except sqlalchemy.exc.IntegrityError as e:
            raise UserError(f"the change conflicts with another one made at the same time: {e.orig}") from e
        except sqlalchemy.exc.OperationalError as e:
            raise UserError(f"database: {e.orig}") from e
