# -*- test-case-name: tests.gateway.test_intake -*-
"""Named thread pools for blocking work that is not database work.

Two kinds, sized differently: ``io`` for staging payloads (each writer blocks in ``fsync``, so many
can wait on the disk at once) and ``cpu`` for parsing, signature checks and receipt signing (lxml
and OpenSSL release the GIL, so one thread per core keeps the cores busy without thrashing).
"""

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


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
        """Finish queued work and release the threads."""
        super().stopService()
        self._pool.stop()

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``fn(*args)`` in the pool."""
        return deferToThreadPool(self._reactor, self._pool, fn, *args)
