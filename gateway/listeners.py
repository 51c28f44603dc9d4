# -*- test-case-name: tests.gateway.test_app -*-
"""Listen on every configured door and tell the world which ports are real.

``tcp:0`` asks the kernel for a free port; once *every* door listens, ``HOME/run/ports.json`` is
written atomically with the bound ports (``{"as2": 40123, …}``), so tests and scripts can wait for
that one file. It is removed again on a clean stop: it describes a running daemon.
"""

import json
from pathlib import Path
from typing import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from certs.files import write_atomically


@attrs.frozen
class Door:
    """One listener: a name for ``ports.json``, a Twisted endpoint string and the factory to serve.

    A door that is not a Twisted protocol (the asyncssh SFTP door) gives ``listen(endpoint)`` instead:
    a Deferred firing with an object that has ``getHost().port`` and ``stopListening()``.
    """

    name: str
    endpoint: str
    factory: Factory | None
    listen: Callable[[str], Deferred] | None = None


class ListenerService(Service):
    """Listens on all doors once ``ready`` fires; stops listening first on shutdown."""

    name = "listeners"
    _log = Logger()

    def __init__(self, reactor, doors: list[Door], ports_file: Path,
                 ready: Callable[[], Deferred], on_fatal: Callable[[Failure], None]):
        self._reactor = reactor
        self._doors = doors
        self._ports_file = ports_file
        self._ready = ready
        self._on_fatal = on_fatal
        self.ports: dict[str, IListeningPort] = {}
        self._starting: Deferred | None = None

    def startService(self) -> None:
        """Wait for the directory, listen everywhere, then write ``ports.json``."""
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._on_fatal)

    async def _start(self) -> None:
        await self._ready()
        for door in self._doors:
            try:
                if door.listen is not None:
                    port = await door.listen(door.endpoint)
                else:
                    port = await serverFromString(self._reactor, door.endpoint).listen(door.factory)
            except Exception as e:
                raise RuntimeError(f"cannot listen for {door.name} on {door.endpoint!r}: {e}") from e
            self.ports[door.name] = port
        bound = {name: port.getHost().port for name, port in self.ports.items()}
        self._ports_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self._ports_file, (json.dumps(bound) + "\n").encode("ascii"))
        self._log.info("listening: {ports}", ports=" ".join(f"{k}={v}" for k, v in bound.items()))

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        self._ports_file.unlink(missing_ok=True)
        for name, port in list(self.ports.items()):
            await maybeDeferred(port.stopListening)  # may return a Deferred, or None
            del self.ports[name]

    def stopService(self) -> Deferred:
        """Stop accepting connections on every door."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
