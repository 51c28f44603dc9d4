"""Fixtures shared by the gateway tests."""

import pytest

from gateway.database_service import DatabaseService


@pytest.fixture
def db(engine):
    """A running one-thread DatabaseService over the test's SQLite database, stopped after the test."""
    from twisted.internet import reactor

    service = DatabaseService(engine, reactor, threads=1)
    service.startService()
    yield service
    if service.running:
        service.stopService()
