# -*- test-case-name: tests.gateway.test_delivery -*-
"""Work done in rounds: now when woken, else every ``interval`` seconds, never two rounds at once.

The delivery queue and the receipt courier both poll the database for due work, and are woken early
when new work is committed. A wake during a round runs one more round right after it. Both retry a
failed attempt after :func:`retry_delay`, up to ``max_attempts``.
"""

import random
from collections.abc import Callable
from datetime import datetime, timedelta

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

MAX_DELAY = timedelta(hours=6)


def retry_delay(attempt: int, backoff: float, rng: random.Random) -> timedelta:
    """The wait after failed attempt number ``attempt`` (1-based): equal jitter on a capped exponential."""
    ceiling = min(backoff * 2 ** (attempt - 1), MAX_DELAY.total_seconds())
    return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


class RoundsService(Service):
    """Subclasses define ``async _round()``; ``ready`` (e.g. recovery) must fire before the first round."""

    _log = Logger()

    def __init__(self, clock, interval: float, ready: Callable[[], Deferred] = lambda: succeed(None), *,
                 now: Callable[[], datetime], max_attempts: int, backoff: float, rng: random.Random | None = None):
        self._now = now
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._clock = clock
        self._loop = LoopingCall(self.wake)
        self._loop.clock = clock
        self._soon = None
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
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
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

    def wake_soon(self, delay: float = 0.01) -> None:
        """Run a round ``delay`` seconds from now, and let the wakes in between join it: a stream of
        single messages is then handled in batches (one claim and one filing per batch), not one each."""
        if self.running and self._soon is None:
            self._soon = self._clock.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._soon = None
        self.wake()

    def _finished(self, _) -> None:
        self._running = None
        if self._again:
            self._again = False
            self.wake()

    def _retry_at(self, attempts: int) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; None once they are used up."""
        if attempts >= self._max_attempts:
            return None
        return self._now() + retry_delay(attempts, self._backoff, self._rng)

    async def _round(self) -> None:
        raise NotImplementedError
