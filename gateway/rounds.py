# -*- test-case-name: tests.gateway.test_delivery -*-
"""Work done in rounds: now when woken, else every ``interval`` seconds, never two rounds at once.

The delivery queue and the receipt courier both poll the database for due work, and are woken early
when new work is committed. A wake during a round runs one more round right after it.
"""

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class RoundsService(Service):
    """Subclasses define ``async _round()``; ``ready`` (e.g. recovery) must fire before the first round."""

    _log = Logger()

    def __init__(self, clock, interval: float, ready: Callable[[], Deferred] = lambda: succeed(None)):
        self._loop = LoopingCall(self.wake)
        self._loop.clock = clock
        self._interval = interval
        self._ready = ready
        self._running: Deferred | None = None
        self._again = False

    def startService(self) -> None:
        """Once ``ready`` fires, poll every interval, starting with a round now."""
        super().startService()
        self._ready().addCallback(self._begin).addErrback(lambda f: self._log.failure("{name} cannot start", f,
                                                                                       name=self.name))

    def _begin(self, _) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred:
        """Stop polling and wait for the round in flight."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._again = False
        return self._running if self._running is not None else succeed(None)

    def wake(self) -> None:
        """Run a round now, or right after the one in flight (rounds never overlap)."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._round())
        self._running.addErrback(lambda f: self._log.failure("{name} round failed", f, name=self.name))
        self._running.addBoth(self._finished)

    def _finished(self, _) -> None:
        self._running = None
        if self._again:
            self._again = False
            self.wake()

    async def _round(self) -> None:
        raise NotImplementedError
