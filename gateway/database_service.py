# -*- test-case-name: tests.gateway.test_directory_service -*-
"""Run blocking database work on a named thread pool, never on the reactor thread.

Functions handed to :meth:`DatabaseService.run` are named ``thd_*`` by convention (Buildbot's
``db/pool.py``): a reminder that they block and must never be called from reactor code directly.
"""

from typing import Any, Callable

from sqlalchemy.engine import Engine
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class DatabaseService(Service):
    """Owns the engine and its thread pool; stopping waits for work in flight to finish."""

    name = "database"

    def __init__(self, engine: Engine, reactor, threads: int = 4):
        self.engine = engine
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="postroom-db")

    def startService(self) -> None:
        """Start the pool."""
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        """Finish queued work, then release the threads and the connections."""
        super().stopService()
        self._pool.stop()
        self.engine.dispose()

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``fn(engine, *args)`` in the pool."""
        return deferToThreadPool(self._reactor, self._pool, fn, self.engine, *args)
