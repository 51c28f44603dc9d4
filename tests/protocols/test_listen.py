"""Tests for :mod:`protocols.listen`: strangers get no protocol, hence not a single byte; nor does a
source past its connection limit."""

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from partners.networks import NetworkSet, parse_network
from protocols.listen import AllowlistFactory, PerSourceLimit


class Greeter(Protocol):
    """Speaks first, like a TLS server after ClientHello or an SSH/SMTP banner would."""

    def connectionMade(self):
        self.transport.write(b"220 hello\r\n")


class RecordingFactory(Factory):
    """Counts start/stop so delegation can be checked."""

    protocol = Greeter
    started = stopped = 0

    def doStart(self):
        self.started += 1

    def doStop(self):
        self.stopped += 1


def guarded(networks: str, events: list):
    allowed = NetworkSet([parse_network(networks)])
    return AllowlistFactory(
        RecordingFactory(), allowed.__contains__, "smtp",
        on_refused=lambda door, host: events.append(("refused", door, host)),
        on_accepted=lambda door, host: events.append(("accepted", door, host)),
    )


def test_refused_address_gets_no_protocol_and_is_counted():
    """An address outside the allowlist gets None from buildProtocol: Twisted closes it unanswered."""
    events: list = []
    factory = guarded("192.0.2.0/24", events)
    assert factory.buildProtocol(IPv4Address("TCP", "198.51.100.7", 40000)) is None
    assert events == [("refused", "smtp", "198.51.100.7")]


def test_allowed_address_gets_the_wrapped_protocol():
    """An allowed address gets the real protocol, which then speaks as usual."""
    events: list = []
    factory = guarded("192.0.2.0/24", events)
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"220 hello\r\n"
    assert events == [("accepted", "smtp", "192.0.2.9")]


def test_ipv4_mapped_ipv6_peer_is_judged_as_ipv4():
    """A dual-stack listener reports ::ffff:192.0.2.9; it must match the IPv4 allowlist entry."""
    factory = guarded("192.0.2.0/24", [])
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:192.0.2.9", 40000)) is not None
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:198.51.100.7", 40000)) is None


def test_start_and_stop_reach_the_wrapped_factory():
    """Factory start/stop hooks (which open resources) are delegated to the wrapped factory."""
    factory = guarded("192.0.2.0/24", [])
    factory.doStart()
    factory.doStop()
    assert (factory.wrapped.started, factory.wrapped.stopped) == (1, 1)


def test_a_source_may_hold_only_its_limit_of_connections_at_once():
    """The third connection from 192.0.2.7 gets no protocol (closed unanswered); another host is not
    affected; once one closes, the next is let in."""
    limited = PerSourceLimit(Factory.forProtocol(Protocol), 2, "smtp")
    limited.doStart()
    first, second = (limited.buildProtocol(IPv4Address("TCP", "192.0.2.7", p)) for p in (1, 2))
    assert limited.buildProtocol(IPv4Address("TCP", "192.0.2.7", 3)) is None
    assert limited.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)) is not None
    first.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1)))
    first.connectionLost(None)
    assert limited.buildProtocol(IPv4Address("TCP", "192.0.2.7", 4)) is not None
    assert second is not None
