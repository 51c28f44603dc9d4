"""Tests for :mod:`gateway.listeners` on a MemoryReactor: listen after ready, ports.json, clean stop."""

import json

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from gateway.listeners import Door, ListenerService


def test_listens_on_every_door_only_after_ready_and_records_ports(tmp_path):
    """No door listens before the directory is loaded; then all do, and ports.json names them."""
    reactor = MemoryReactor()
    ready: Deferred = Deferred()
    factories = {name: Factory() for name in ("as2", "portal", "metrics")}
    doors = [Door(name, f"tcp:{port}:interface=127.0.0.1", f)
             for (name, f), port in zip(factories.items(), (4443, 8443, 9464), strict=True)]
    failures: list = []
    ports_file = tmp_path / "run" / "ports.json"
    service = ListenerService(reactor, doors, ports_file, lambda: ready, failures.append)
    service.startService()
    assert reactor.tcpServers == [] and not ports_file.exists()
    ready.callback(None)
    assert [(port, factory, iface) for port, factory, _, iface in reactor.tcpServers] == [
        (4443, factories["as2"], "127.0.0.1"), (8443, factories["portal"], "127.0.0.1"),
        (9464, factories["metrics"], "127.0.0.1")]
    assert set(json.loads(ports_file.read_text())) == {"as2", "portal", "metrics"}
    assert failures == []
    stopped = service.stopService()
    assert stopped.called
    assert not ports_file.exists()
    assert service.ports == {}


def test_a_bad_endpoint_is_fatal_and_names_the_door(tmp_path):
    """A typo in [listen] stops start-up with a message naming the door and the endpoint."""
    reactor = MemoryReactor()
    failures: list = []
    service = ListenerService(reactor, [Door("smtp", "tcpp:25", Factory())], tmp_path / "ports.json",
                              lambda: Deferred.fromCoroutine(_ready()), failures.append)
    service.startService()
    assert len(failures) == 1
    assert "cannot listen for smtp on 'tcpp:25'" in failures[0].getErrorMessage()
    assert not (tmp_path / "ports.json").exists()


async def _ready() -> None:
    return None
