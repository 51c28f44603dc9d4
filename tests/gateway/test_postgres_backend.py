"""The same directory code on PostgreSQL: migrations, changes, snapshots and the reload poll.

Runs against a throwaway Debian PostgreSQL on a private loopback port (``postgres_url`` fixture).
"""

from datetime import UTC, datetime

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.directory_service import thd_poll
from partners.directory import load_directory
from partners.errors import DuplicateError
from partners.networks import parse_network
from partners.schema import metadata
from partners.store import NewPartner, add_partner, directory_version, set_status
from spool.database import check_current, create_engine, upgrade


@pytest.fixture(scope="module")
def pg(postgres_url):
    """A PostgreSQL engine at the newest schema, emptied between tests."""
    engine = create_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clean(pg):
    yield pg
    with pg.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM partners"))


def test_migrated_postgres_schema_matches_the_metadata(pg):
    """Alembic's migration and the SQLAlchemy tables agree on PostgreSQL too."""
    check_current(pg)
    with pg.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_partner_round_trip_and_reload_poll_on_postgres(clean, dev_ca):
    """A partner registered on PostgreSQL appears in the snapshot; a later disable is seen by the poll."""
    now = datetime.now(UTC)
    cert = dev_ca.build("acme", "tls-client")[1]
    with clean.begin() as conn:
        add_partner(conn, NewPartner("acme", "ACME", as2_ids=("ACME",), participant_ids=("0088:123",),
                                     networks=(parse_network("2001:db8::/32"),), certificates=(("tls", cert),)),
                    now)
        version = directory_version(conn)
    snapshot = thd_poll(clean, -1)
    acme = snapshot.by_as2_id("ACME")
    assert acme is not None and acme.allows("2001:db8::1")
    assert snapshot.by_certificate("tls", cert, now) is acme
    assert thd_poll(clean, version) is None
    with clean.begin() as conn:
        set_status(conn, "acme", "disabled", now)
    assert thd_poll(clean, version).by_as2_id("ACME") is None
    with clean.begin() as conn:
        created = load_directory(conn).get("acme")
    assert created is not None and not created.active


def test_duplicate_identifier_is_refused_on_postgres(clean):
    """The uniqueness rules hold on PostgreSQL, with the same typed error as on SQLite."""
    now = datetime.now(UTC)
    with clean.begin() as conn:
        add_partner(conn, NewPartner("acme", "ACME", as2_ids=("ACME",)), now)
    with pytest.raises(DuplicateError, match="already registered to partner 'acme'"), clean.begin() as conn:
        add_partner(conn, NewPartner("globex", "Globex", as2_ids=("ACME",)), now)
    with clean.begin() as conn:
        assert load_directory(conn).get("globex") is None
