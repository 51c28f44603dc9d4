# -*- test-case-name: tests.protocols.test_listen -*-
"""The outermost layer of every door: refuse strangers before a single byte, then add TLS.

Twisted's ``buildProtocol`` may return None to refuse a connection; the listening port then closes
the socket at once, so an address no active partner allows never sees a TLS ServerHello, an SSH
banner or an SMTP greeting.
"""

from typing import Callable

from twisted.internet.interfaces import IAddress, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

Allowed = Callable[[str], bool]
Observer = Callable[[str, str], None]


def _ignore(door: str, host: str) -> None:
    return None


class AllowlistFactory(Factory):
    """Wrap a server factory so that only allowed source addresses get a protocol at all."""

    _log = Logger()

    def __init__(self, wrapped: Factory, allowed: Allowed, door: str,
                 on_refused: Observer = _ignore, on_accepted: Observer = _ignore):
        """
        :param allowed: ``allowed(host)`` answers from the live partner directory.
        :param door: the door's name, for logs and metrics.
        :param on_refused: called with ``(door, host)`` for every refused connection.
        """
        self.wrapped = wrapped
        self._allowed = allowed
        self.door = door
        self._on_refused = on_refused
        self._on_accepted = on_accepted

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """Return None — closing the connection unanswered — unless ``addr`` is allowed."""
        host = getattr(addr, "host", "")
        if not self._allowed(host):
            self._on_refused(self.door, host)
            self._log.info("{door}: refused connection from {host}: no active partner allows it",
                           door=self.door, host=host)
            return None
        self._on_accepted(self.door, host)
        return self.wrapped.buildProtocol(addr)

    def doStart(self) -> None:
        """Start the wrapped factory with us."""
        self.wrapped.doStart()

    def doStop(self) -> None:
        """Stop the wrapped factory with us."""
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        """Log lines of the listening port name the door."""
        return self.door


def with_tls(creator: IOpenSSLServerConnectionCreator, factory: Factory) -> TLSMemoryBIOFactory:
    """Serve ``factory`` over TLS made by ``creator`` (see :mod:`certs.tls`)."""
    return TLSMemoryBIOFactory(creator, False, factory)


class PerSourceLimit(WrappingFactory):
    """At most ``limit`` connections from one source address at once; more are closed unanswered.

    For a door whose protocol holds a connection open on its own terms (SMTP: a line every few minutes
    keeps it alive), so one allowlisted host cannot take every connection the process can hold.
    """

    _log = Logger()
    noisy = False  # the listener's own "starting on" line says enough

    def __init__(self, wrapped: Factory, limit: int, door: str):
        super().__init__(wrapped)
        self.limit = limit
        self.door = door
        self._open: dict[str, int] = {}

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        """None (the connection closes at once) when ``addr``'s host has ``limit`` open already."""
        host = getattr(addr, "host", "")
        if self._open.get(host, 0) >= self.limit:
            self._log.info("{door}: refused connection from {host}: {limit} open already", door=self.door,
                           host=host, limit=self.limit)
            return None
        self._open[host] = self._open.get(host, 0) + 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, p: Protocol) -> None:
        """A connection closed: count it out."""
        super().unregisterProtocol(p)
        host = getattr(p.getPeer(), "host", "")
        left = self._open.get(host, 1) - 1
        if left:
            self._open[host] = left
        else:
            self._open.pop(host, None)
