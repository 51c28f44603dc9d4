# -*- test-case-name: tests.gateway.test_recovery -*-
"""A one-time event services wait on ("directory loaded", "recovery done"), asked for before or after."""

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure


class Milestone:
    """Reached once, with a value, or failed once; :meth:`wait` works before and after either."""

    def __init__(self) -> None:
        self._waiting: list[Deferred] = []
        self._outcome: tuple[bool, Any] | None = None

    @property
    def reached(self) -> bool:
        """True once :meth:`reach` was called."""
        return self._outcome is not None and self._outcome[0]

    def wait(self) -> Deferred:
        """Fires with the value (or fails with the failure) once the milestone is settled."""
        if self._outcome is None:
            d: Deferred = Deferred()
            self._waiting.append(d)
            return d
        ok, value = self._outcome
        return succeed(value) if ok else fail(value)

    def reach(self, value: Any = None) -> None:
        """Settle with ``value`` (later calls are ignored) and release every waiter."""
        self._settle(True, value)

    def fail(self, failure: Failure) -> None:
        """Settle with ``failure`` and fail every waiter."""
        self._settle(False, failure)

    def _settle(self, ok: bool, value: Any) -> None:
        if self._outcome is not None:
            return
        self._outcome = (ok, value)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(value) if ok else d.errback(value)
