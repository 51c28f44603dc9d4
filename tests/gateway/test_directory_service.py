"""Tests for :mod:`gateway.directory_service`: polling, swapping snapshots, surviving failures.

Time is a :class:`~twisted.internet.task.Clock` and "thread" work runs inline, so nothing here
spins a reactor or sleeps.
"""

from datetime import UTC, datetime

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from gateway.directory_service import DirectoryService
from gateway.metrics import Metrics
from partners.networks import parse_network
from partners.store import NewPartner, add_partner, set_status


class InlineDatabase:
    """DatabaseService stand-in that runs ``thd_*`` functions at once (Buildbot's NonThreadPool idea)."""

    def __init__(self, engine):
        self.engine = engine
        self.broken = False

    def run(self, fn, *args):
        if self.broken:
            return fail(RuntimeError("database is unavailable"))
        return succeed(fn(self.engine, *args))


@pytest.fixture
def service(engine):
    clock = Clock()
    db = InlineDatabase(engine)
    metrics = Metrics()
    svc = DirectoryService(db, clock, 2.0, metrics)
    yield svc, clock, db, metrics, engine
    if svc.running:
        svc.stopService()


def add(engine, partner_id: str) -> None:
    with engine.begin() as conn:
        add_partner(conn, NewPartner(partner_id, partner_id.title(), networks=(parse_network("192.0.2.0/24"),)),
                    datetime.now(UTC))


def test_first_load_makes_the_service_ready(service):
    """when_ready fires after the first snapshot, and later callers are answered at once."""
    svc, clock, db, metrics, engine = service
    add(engine, "acme")
    waiting = svc.when_ready()
    assert not waiting.called
    svc.startService()
    assert waiting.called
    assert svc.current.get("acme") is not None
    assert svc.when_ready().called


def test_a_cli_change_is_picked_up_on_the_next_poll(service):
    """A disable committed by another process is in effect after one interval."""
    svc, clock, db, metrics, engine = service
    add(engine, "acme")
    svc.startService()
    assert svc.current.allows_anyone("192.0.2.1")
    with engine.begin() as conn:
        set_status(conn, "acme", "disabled", datetime.now(UTC))
    clock.advance(1.9)
    assert svc.current.allows_anyone("192.0.2.1")
    clock.advance(0.2)
    assert not svc.current.allows_anyone("192.0.2.1")
    assert metrics.directory_version._value.get() == svc.current.version


def test_unchanged_directory_is_not_reloaded(service):
    """Polling reads one integer; the snapshot object is kept while nothing changed."""
    svc, clock, db, metrics, engine = service
    svc.startService()
    first = svc.current
    clock.advance(10)
    assert svc.current is first
    assert metrics.directory_reloads._value.get() == 1


def test_failed_poll_keeps_the_last_snapshot_and_the_loop(service):
    """A database outage neither empties the directory nor stops polling; health turns bad, then good."""
    svc, clock, db, metrics, engine = service
    add(engine, "acme")
    svc.startService()
    db.broken = True
    clock.advance(2)
    assert svc.current.get("acme") is not None
    assert metrics.directory_errors._value.get() == 1
    clock.advance(12)
    healthy, details = svc.health()
    assert not healthy and "has not answered" in details["reason"]
    db.broken = False
    add(engine, "globex")
    clock.advance(2)
    assert svc.current.get("globex") is not None
    assert svc.health()[0]


def test_not_ready_before_first_load(service):
    """Before the first snapshot the service reports itself unhealthy."""
    svc, *_ = service
    assert svc.health() == (False, {"directory": "not loaded yet"})
