"""Fixtures shared by the whole suite: hypothesis profiles, a dev CA, databases and demo homes.

RSA key generation dominates set-up time, so keys are made once per session at 2048 bits and homes
are copied from one template rather than initialised per test.
"""

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from admin.initialise import initialise
from certs.devca import DevCA
from gateway.config import ListenSection
from gateway.home import Home
from spool.database import create_engine, upgrade

settings.register_profile("dev", max_examples=100)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

EPHEMERAL = ListenSection(**{k: "tcp:0:interface=127.0.0.1" for k in ("as2", "portal", "sftp", "smtp", "metrics")})


@pytest.fixture(scope="session")
def dev_ca(tmp_path_factory) -> DevCA:
    """A development CA shared by the session (2048-bit keys for speed)."""
    return DevCA.create(tmp_path_factory.mktemp("dev-ca"), "Test CA", key_bits=2048)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> DevCA:
    """A second, unrelated CA: its certificates must be refused where only dev_ca is trusted."""
    return DevCA.create(tmp_path_factory.mktemp("other-ca"), "Other CA", key_bits=2048)


@pytest.fixture
def now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


@pytest.fixture
def engine(tmp_path):
    """A migrated SQLite database in the test's temporary directory."""
    engine = create_engine(f"sqlite:///{tmp_path / 'postroom.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def demo_home_template(tmp_path_factory) -> Path:
    """One ``postroom init --demo`` home on ephemeral ports, made once per session."""
    home = Home(tmp_path_factory.mktemp("template") / "home")
    initialise(home, demo=True, listen=EPHEMERAL, key_bits=2048)
    return home.path


@pytest.fixture
def demo_home(demo_home_template, tmp_path) -> Home:
    """A private copy of the demo home for one test (free to change or break)."""
    target = tmp_path / "home"
    shutil.copytree(demo_home_template, target, symlinks=True)
    return Home(target)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster, started once per session and stopped after it."""
    from tests.postgres import ThrowawayPostgres

    server = ThrowawayPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """The URL of an empty PostgreSQL database shared by the session's PostgreSQL tests."""
    return postgres_server.new_database("postroom")


@pytest.fixture(autouse=True)
def clean_reactor():
    """Fail any test that leaves timers, listening ports or connections on the global reactor.

    This is trial's dirty-reactor check, which pytest-twisted does not have: a leftover DelayedCall or
    socket makes the next test flaky in ways that are hard to trace back.
    """
    from twisted.internet import reactor

    calls = set(reactor.getDelayedCalls())
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    yield
    leftover_calls = [c for c in reactor.getDelayedCalls() if c not in calls and c.active()]
    leftover = {
        s for s in (set(reactor.getReaders()) | set(reactor.getWriters())) - selectables
        if not type(s).__module__.startswith("twisted.internet._signals")  # the reactor's own wakers
    }
    for call in leftover_calls:
        call.cancel()
    assert not leftover_calls, f"test left DelayedCalls behind: {leftover_calls}"
    assert not leftover, f"test left ports or connections open: {leftover}"
