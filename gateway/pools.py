# -*- test-case-name: tests.gateway.test_intake -*-
"""Named thread pools for blocking work that is not database work.

Two kinds, sized differently: ``io`` for staging payloads (each writer blocks in ``fsync``, so many
can wait on the disk at once) and ``cpu`` for parsing, signature checks and receipt signing (lxml
and OpenSSL release the GIL, so one thread per core keeps the cores busy without thrashing).
"""

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class PoolStopped(Exception):
    """Work was handed to a pool after the daemon stopped it."""


class ThreadPoolService(Service):
    """A thread pool started and stopped with the daemon."""

    def __init__(self, reactor, name: str, threads: int):
        self.name = name
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"postroom-{name}")

    def startService(self) -> None:
        """Start the pool."""
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        """Finish queued work and release the threads (once; a second stop is a no-op)."""
        super().stopService()
        if not self._pool.joined:
            self._pool.stop()

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``fn(*args)`` in the pool; fails at once when the pool has been stopped (it would never fire)."""
        if self._pool.joined:
            return fail(PoolStopped(f"the {self.name} thread pool has stopped"))
        return deferToThreadPool(self._reactor, self._pool, fn, *args)
