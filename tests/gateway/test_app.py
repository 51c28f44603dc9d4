"""Tests for :mod:`gateway.app`, the composition root, on the real (asyncio) reactor and loopback."""

import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from certs.errors import CertificateError
from gateway.app import make_service
from gateway.config import load
from spool.database import DatabaseError


@pytest_twisted.ensureDeferred
async def test_service_listens_on_ephemeral_ports_and_stops_cleanly(demo_home):
    """The daemon's doors listen on tcp:0, ports.json names the real ports, and stop releases them."""
    failures: list = []
    service = make_service(load(demo_home), reactor, failures.append)
    service.startService()
    try:
        await service.directory.when_ready()
        while not demo_home.ports_file.exists() and not failures:
            await deferLater(reactor, 0.01, lambda: None)
        recorded = json.loads(demo_home.ports_file.read_text())
        assert failures == []
        assert set(recorded) == {"as2", "portal", "sftp", "smtp", "metrics"}
        assert recorded == {name: port.getHost().port for name, port in service.listeners.ports.items()}
        assert all(port > 0 for port in recorded.values())
        assert service.directory.current.get("acme") is not None
    finally:
        await service.stopService()
    assert service.listeners.ports == {}
    assert not demo_home.ports_file.exists()


def test_an_unmigrated_database_refuses_to_start(demo_home):
    """A database at the wrong schema is refused before any door opens, saying what to run."""
    (demo_home.path / "postroom.db").unlink()
    with pytest.raises(DatabaseError, match="postroom db upgrade"):
        make_service(load(demo_home), reactor, lambda f: None)


def test_a_missing_tls_key_refuses_to_start(demo_home):
    """Without the gateway's TLS key the daemon does not start, and says which file is missing."""
    (demo_home.pki / "tls.key").unlink()
    with pytest.raises(CertificateError, match=r"tls\.key: no such file"):
        make_service(load(demo_home), reactor, lambda f: None)
